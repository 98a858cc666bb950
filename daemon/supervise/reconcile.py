"""The reconciler: the daemon keeps knowing the truth about every session, and acts on it.

Three triggers bring the store in line with the engine and the disk (DESIGN.md, "Health
and reconciliation"):

* **Engine events**: each backend with an events stream (Docker) is watched for this
  daemon's containers (filtered by label on the engine's side). A ``die``, ``oom``,
  ``destroy`` or ``start`` of a session's current container triggers one inspection of it,
  so the store and ``/ws/events`` learn within a second. When the engine goes away the
  watcher reconnects with back-off (0.5 s doubling to 10 s by default) and runs a full
  pass once back, since events may have been missed meanwhile. A terminal that ends (any
  backend) triggers the same check.
* **Full passes**: at start, after each reconnection, and every ``interval_seconds`` with
  jitter. A pass costs one engine call per backend however many sessions there are: one
  listing by label, never an inspection per session, plus a stat of every worktree. It
  brings each session's status and health in line, publishes what changed, plans
  recoveries, and sweeps orphans (``daemon/supervise/orphans.py``).
* The startup pass proper (settling interrupted journaled operations and reattaching
  consoles) is the manager's ``load``; the first full pass here follows it.

It hears the daemon's own lifecycle on the hub: ``AgentExited`` (a terminal ended: look at
the session) and, for automatic recovery, ``UserActed``. Every task it starts (the passes,
the events watchers, the per-session checks, recovery's timers, the watchdog) is in the
task supervisor's ``supervise`` group, cancelled first at shutdown.

Automatic recovery is ``daemon/supervise/recovery.py``; the stall watchdog
``daemon/supervise/watchdog.py``.
A session with an operation under way is never observed: the operation settles it, and a
check asked for meanwhile waits for it to end.

Over 400 lines on purpose: the three triggers share one per-session check, its locking and
the engine watch's back-off; apart, each would need its own copy of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

import structlog

from backends.base import Backend, BackendError, BackendUnavailable, ContainerEvent, Engine
from daemon.core.console import Consoles
from daemon.core.health import Observation
from daemon.core.hub import AgentExited, EventHub, UserActed
from daemon.core.models import (
    EngineHealth,
    Health,
    HealthCounts,
    HealthSummary,
    Reconciliation,
    SessionHealthSummary,
    SessionStatus,
)
from daemon.core.session import SessionRecord, utcnow
from daemon.core.store import Store
from daemon.core.tasks import SUPERVISE, TaskSupervisor
from daemon.settings import Settings
from daemon.supervise import orphans, recovery, watchdog
from daemon.supervise.orphans import OrphanSweeper
from daemon.supervise.recovery import BROKEN, Recoverer
from daemon.supervise.watchdog import StallWatchdog

log = structlog.get_logger(__name__)

# Events about a session's current container that change what it is.
ACTED_ON = frozenset({"die", "oom", "destroy", "start"})
BUSY_POLL_SECONDS = 0.1
OBSERVED_STATUSES = (SessionStatus.RUNNING, SessionStatus.STOPPED, SessionStatus.FAILED)


@dataclass
class _Engine:
    available: bool | None = None
    since: datetime | None = None
    last_error: str | None = None
    reconnects: int = 0

    def public(self) -> EngineHealth:
        return EngineHealth(
            available=self.available,
            since=self.since,
            last_error=self.last_error,
            reconnects=self.reconnects,
        )


class Sessions(recovery.Sessions, orphans.Sessions, watchdog.Sessions, Protocol):
    """What the reconciler (with recovery, orphans and the watchdog) needs of the manager."""

    @property
    def backends(self) -> dict[str, Backend]: ...
    async def observe(self, record: SessionRecord) -> Observation: ...
    def current_health(self, record: SessionRecord) -> Health: ...


class Reconciler:
    def __init__(
        self,
        manager: Sessions,
        settings: Settings,
        *,
        store: Store,
        hub: EventHub,
        consoles: Consoles,
        tasks: TaskSupervisor,
    ) -> None:
        self.manager = manager
        self.settings = settings.reconcile
        self.hub = hub
        self.tasks = tasks
        # The label value the backends give this daemon's containers.
        self.instance = str(settings.data_dir)
        self.recovery = Recoverer(manager, self.settings, check=self.poke, store=store, tasks=tasks)
        self.orphans = OrphanSweeper(manager, remove=self.settings.remove_orphans)
        self.watchdog = StallWatchdog(
            manager, self.settings.stall_seconds, hub=hub, consoles=consoles, tasks=tasks
        )
        self.engines: dict[str, _Engine] = {name: _Engine() for name in manager.backends}
        self.passes = 0
        self.last_pass: datetime | None = None
        self.last_pass_ms: float | None = None
        self.last_pass_engine_calls: int | None = None
        self._pass_wanted = asyncio.Event()
        self._pass_done = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._closed = False
        self._unsubscribe: list[Callable[[], None]] = []

    # lifetime

    async def start(self) -> None:
        # Before any await: consoles reattached by the manager's load report through this.
        self._unsubscribe = [
            self.hub.on(AgentExited, self._agent_exited),
            self.hub.on(UserActed, self.recovery.user_acted),
        ]
        await self.recovery.load()
        self._tasks.append(
            self.tasks.spawn(self._periodic(), name="reconcile-passes", group=SUPERVISE)
        )
        for backend in self.manager.backends.values():
            if backend.has_events:
                self._start_watch(backend)
        self.watchdog.start()
        self.request_pass()

    async def close(self) -> None:
        # Consoles detached at shutdown end their terminals: nothing is to be looked at then.
        self._closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        tasks = [*self._tasks, *self._watchers.values(), *self._checks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.recovery.close()
        await self.watchdog.close()

    # triggers

    async def _agent_exited(self, signal: AgentExited) -> None:
        self.poke(signal.session_id)  # the core has recorded it; see what is left

    def request_pass(self) -> None:
        """Run a full pass as soon as the one under way (if any) is done."""
        self._pass_wanted.set()

    async def wait_pass(self, after: int | None = None) -> None:
        """Wait until a pass numbered above ``after`` (default: the current one) is done."""
        target = self.passes if after is None else after
        async with self._pass_done:
            await self._pass_done.wait_for(lambda: self.passes > target)

    async def _periodic(self) -> None:
        while True:
            spread = self.settings.jitter * self.settings.interval_seconds
            interval = self.settings.interval_seconds + random.uniform(-spread, spread)  # noqa: S311
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, interval)):
                    await self._pass_wanted.wait()
            self._pass_wanted.clear()
            try:
                await self.full_pass()
            except Exception:
                log.exception("reconcile_pass_failed")

    def _start_watch(self, backend: Engine) -> None:
        old = self._watchers.pop(backend.name, None)
        if old is not None:
            old.cancel()
        self._watchers[backend.name] = self.tasks.spawn(
            self._watch(backend), name=f"engine-events:{backend.name}", group=SUPERVISE
        )

    async def _watch(self, backend: Engine) -> None:
        """Follow the engine's events; reconnect with back-off when it goes away."""
        delay = self.settings.reconnect_min_seconds
        while True:
            try:
                async with backend.events(self.instance) as stream:
                    self._engine_up(backend)
                    delay = self.settings.reconnect_min_seconds
                    self.request_pass()  # events may have been missed while away
                    async for event in stream:
                        self._on_event(event)
                error = "the engine closed its events stream"
            except BackendError as exc:
                error = exc.message
            except Exception as exc:  # whatever broke the stream, the watch goes on
                log.exception("engine_events_failed", backend=backend.name)
                error = f"{type(exc).__name__}: {exc}"
            self._engine_down(backend, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_seconds)

    def _engine_up(self, backend: Engine) -> None:
        engine = self.engines.setdefault(backend.name, _Engine())
        if engine.available is not True:
            if engine.available is False:
                engine.reconnects += 1
                log.info("engine_back", backend=backend.name, reconnects=engine.reconnects)
            engine.available, engine.since = True, utcnow()

    def _engine_down(self, backend: Engine, error: str) -> None:
        engine = self.engines.setdefault(backend.name, _Engine())
        engine.last_error = error
        if engine.available is not False:
            engine.available, engine.since = False, utcnow()
            log.warning("engine_away", backend=backend.name, error=error)

    def _on_event(self, event: ContainerEvent) -> None:
        record = self.manager.records.get(event.session_id or "")
        if record is None:
            if event.action == "start":
                self.request_pass()  # a labelled container we do not know: an orphan
            return
        if event.action in ACTED_ON and event.container_id == record.container_id:
            log.debug("engine_event", session_id=record.id, action=event.action)
            self.poke(record.id)

    # one session

    def poke(self, session_id: str) -> None:
        """Look at the session again soon; looks asked for meanwhile are folded into one."""
        if self._closed:
            return
        task = self._checks.get(session_id)
        if task is not None and not task.done():
            self._again.add(session_id)
            return
        self._checks[session_id] = self.tasks.spawn(
            self._check_loop(session_id), name=f"reconcile-check:{session_id}", group=SUPERVISE
        )

    def checks_pending(self) -> int:
        """Session checks asked for and not yet done."""
        return sum(1 for task in self._checks.values() if not task.done())

    async def _check_loop(self, session_id: str) -> None:
        try:
            while True:
                self._again.discard(session_id)
                await self.check(session_id)
                if session_id not in self._again:
                    break
        except Exception:
            log.exception("reconcile_check_failed", session_id=session_id)
        finally:
            if self._checks.get(session_id) is asyncio.current_task():
                del self._checks[session_id]

    async def check(self, session_id: str) -> None:
        """Inspect one session's container once; settle and plan from what is seen."""
        # The operation under way settles the session; look once it is done. (The manager's
        # busy set has no event to wait on, and a poll a tenth of a second apart is cheap.)
        while self.manager.is_busy(session_id):  # noqa: ASYNC110
            await asyncio.sleep(BUSY_POLL_SECONDS)
        record = self.manager.records.get(session_id)
        if record is None or record.archived or record.status not in OBSERVED_STATUSES:
            return
        key = (record.container_id, record.status)
        try:
            seen = await self.manager.observe(record)
        except BackendUnavailable:
            return  # the events watcher and the passes report the engine
        if self.manager.is_busy(session_id) or key != (record.container_id, record.status):
            self._again.add(session_id)  # it moved while we looked: look again
            return
        report = await self.manager.settle(record, seen)
        await self.recovery.consider(record, seen, report)

    # full passes

    @staticmethod
    def _missing_worktrees(records: list[SessionRecord]) -> dict[str, list[str]]:
        # os.path on strings: a thousand pathlib objects per pass cost more than the stats.
        return {
            record.id: missing
            for record in records
            if (
                missing := [
                    r.mount_name
                    for r in record.repositories
                    if not os.path.isdir(r.worktree_path)  # noqa: PTH112
                ]
            )
        }

    async def full_pass(self) -> None:
        """Bring every session in line with one listing per backend; sweep orphans."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls = self._engine_calls()
        self.recovery.forget_missing()
        records = [
            r
            for r in self.manager.records.values()
            if not r.archived and r.status in OBSERVED_STATUSES
        ]
        # Taken first: a session that changes while we look is left for the next look.
        snapshot = {r.id: (r.container_id, r.status, r.archived) for r in records}
        missing = await asyncio.to_thread(self._missing_worktrees, records)
        for name, backend in self.manager.backends.items():
            try:
                listed = await backend.list_managed(self.instance)
            except BackendError as exc:
                if isinstance(exc, BackendUnavailable):
                    if backend.has_events and self.engines[name].available:
                        # The engine is away yet its events stream has not ended: never
                        # trust a stream that may wait forever; start it over.
                        log.warning("engine_events_restarted", backend=name)
                        self._start_watch(backend)
                    self._engine_down(backend, exc.message)
                else:
                    log.warning("reconcile_list_failed", backend=name, error=exc.message)
                continue
            if not backend.has_events:
                self._engine_up(backend)
            by_id = {c.id: c for c in listed}
            for record in records:
                if record.backend != name or self.manager.is_busy(record.id):
                    continue
                if snapshot[record.id] != (record.container_id, record.status, record.archived):
                    continue
                if self.manager.records.get(record.id) is not record:
                    continue  # deleted meanwhile
                container = by_id.get(record.container_id) if record.container_id else None
                seen = Observation(container, missing.get(record.id, []))
                report = await self.manager.settle(record, seen)
                await self.recovery.consider(record, seen, report)
            await self.orphans.sweep_containers(backend, listed)
        await self.orphans.sweep_worktrees()
        self.last_pass_ms = round((loop.time() - started) * 1000, 3)
        self.last_pass_engine_calls = self._engine_calls() - calls
        self.last_pass = utcnow()
        async with self._pass_done:
            self.passes += 1
            self._pass_done.notify_all()
        log.debug("reconcile_pass_done", sessions=len(records), ms=self.last_pass_ms)

    def _engine_calls(self) -> int:
        return sum(backend.engine_calls for backend in self.manager.backends.values())

    # the aggregate

    def summary(self) -> HealthSummary:
        """Every session's last known health, counted, without asking the engine."""
        by_health: Counter[str] = Counter()
        counts = Counter({"healthy": 0, "idle": 0, "needs_attention": 0, "blocked": 0})
        attention = []
        for record in self.manager.records.values():
            health = self.manager.current_health(record)
            by_health[health.value] += 1
            state = self.manager.recovery.get(record.id)
            stalled = state is not None and state.stalled_since is not None
            planned = self.recovery.pending(record.id) or (
                state is not None and state.next_attempt is not None
            )
            if health in (Health.HEALTHY, Health.STARTING) and not stalled:
                counts["healthy"] += 1
                continue
            if health in (Health.STOPPED, Health.ARCHIVED):
                counts["idle"] += 1
                continue
            category: Literal["needs_attention", "blocked"] = (
                "needs_attention" if stalled or (health in BROKEN and planned) else "blocked"
            )
            counts[category] += 1
            reason = state.last_error if state is not None and state.last_error else None
            attention.append(
                SessionHealthSummary(
                    session_id=record.id,
                    name=record.name,
                    health=health,
                    category=category,
                    reason=reason or record.error_message,
                    stalled_since=state.stalled_since if state is not None else None,
                    reconciliation=state.public() if state is not None else Reconciliation(),
                )
            )
        orphans = self.orphans.report()
        engines = {name: engine.public() for name, engine in self.engines.items()}
        degraded = (
            counts["blocked"]
            or orphans.containers
            or orphans.worktrees
            or any(e.available is False for e in engines.values())
        )
        return HealthSummary(
            status="degraded" if degraded else "healthy",
            counts=HealthCounts(total=len(self.manager.records), **counts),
            by_health=dict(by_health),
            sessions=attention,
            engines=engines,
            orphans=orphans,
            passes=self.passes,
            last_pass=self.last_pass,
            last_pass_ms=self.last_pass_ms,
            last_pass_engine_calls=self.last_pass_engine_calls,
        )
