"""Automatic recovery: a session that should run but does not is recreated, with back-off.

Which sessions: not archived, no operation under way, and down through no choice of the
user's. corral has no stop action, so the container's own end says which it was: exit code
0 is the agent ending normally (the user quit it: ``/exit``, Ctrl-D) and the session stays
``stopped`` with ``start`` offered; a non-zero exit, a kill (``docker kill``, the OOM killer,
an engine shutdown) or a container that is gone is a crash (health ``error`` or ``missing``)
and is recreated. A worktree deleted by hand is never "recovered": a person did that, and a
recreate would bring back only what was committed; it is reported for the user to decide.

Each attempt waits its turn of ``backoff_seconds`` (30 s, 120 s, 300 s by default), then
recreates the session (new container, same worktree and conversation) through the
manager, as a user's ``recreate`` would. After ``max_attempts`` the session is left to the
user with the reason: ``crash_loop`` when every recreate worked and every new container
died again, else the last failure. Attempts count from zero again once the session has
been healthy for ``healthy_reset_seconds``, or as soon as the user acts on it. The state is
stored per session (the ``reconciliation`` table), so a restarted daemon keeps its count
and its schedule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

import structlog

from backends.base import BackendUnavailable
from daemon.core.errors import ApiError, BackendUnavailableError, Conflict
from daemon.core.health import Observation, Outcome, Recovery
from daemon.core.hub import UserActed
from daemon.core.models import Health, HealthReport, SessionStatus
from daemon.core.session import SessionRecord, utcnow
from daemon.core.store import Store, StoreError
from daemon.core.tasks import SUPERVISE, TaskSupervisor
from daemon.settings import ReconcileSettings

log = structlog.get_logger(__name__)

# Health states automatic recovery acts on (see the module's docstring).
BROKEN = (Health.ERROR, Health.MISSING)


def describe(report: HealthReport) -> str:
    """What is wrong, in words, from a health report's details."""
    details = report.details
    if details.get("container_status") == "missing":
        return "the container is gone"
    parts = []
    if "exit_code" in details:
        parts.append(f"the container exited with code {details['exit_code']}")
    elif "container_status" in details:
        parts.append(f"the container is {details['container_status']}")
    if details.get("oom_killed"):
        parts.append("it ran out of memory")
    if details.get("error_message"):
        parts.append(str(details["error_message"]))
    return "; ".join(parts) or f"the session is {report.health.value}"


class Sessions(Protocol):
    """What automatic recovery needs of the session manager."""

    @property
    def records(self) -> dict[str, SessionRecord]: ...
    @property
    def recovery(self) -> dict[str, Recovery]: ...
    def is_busy(self, session_id: str) -> bool: ...
    async def health(self, record: SessionRecord) -> HealthReport: ...
    async def settle(self, record: SessionRecord, seen: Observation | None) -> HealthReport: ...
    async def recreate(self, session_id: str) -> SessionRecord: ...


class Recoverer:
    """Plans, runs and remembers automatic recreates; ``check`` asks for a fresh look.

    Its timers are tasks of the ``supervise`` group; the user's actions reach it as the
    hub's ``UserActed`` signal (the reconciler subscribes it).
    """

    def __init__(
        self,
        manager: Sessions,
        settings: ReconcileSettings,
        check: Callable[[str], None],
        *,
        store: Store,
        tasks: TaskSupervisor,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self._check = check
        self.store = store
        self.tasks = tasks
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._active: set[str] = set()  # an attempt is under way (looking, then acting)
        self._own: set[str] = set()  # this module's own recreate call is under way
        # Loop time each session was first seen healthy since it was last seen otherwise.
        self._healthy_since: dict[str, float] = {}

    async def load(self) -> None:
        """Take the stored states and resume their schedules."""
        stored = await self.store.load_reconciliation()
        now = utcnow()
        for session_id, row in stored.items():
            if session_id not in self.manager.records:
                continue
            state = Recovery(
                attempts=row["attempts"],
                last_attempt=row["last_attempt"],
                last_error=row["last_error"],
                next_attempt=row["next_attempt"],
                outcome=Outcome(row["outcome"]) if row["outcome"] else None,
                recreated=row["recreated"],
            )
            self.manager.recovery[session_id] = state
            if state.next_attempt is not None and state.outcome is None:
                self._schedule(session_id, max(0.0, (state.next_attempt - now).total_seconds()))

    async def close(self) -> None:
        timers = list(self._timers.values())
        for task in timers:
            task.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        self._timers.clear()

    def pending(self, session_id: str) -> bool:
        """Whether an attempt is planned or running for the session."""
        return session_id in self._timers or session_id in self._active

    # deciding

    def _wants(self, record: SessionRecord, report: HealthReport, state: Recovery | None) -> bool:
        if not self.settings.auto_recover or record.archived or self.manager.is_busy(record.id):
            return False
        if record.status in (SessionStatus.RUNNING, SessionStatus.STOPPED):
            return report.health in BROKEN
        # A failed recreate of our own leaves the session failed; a failed create or a
        # failed action of the user's is theirs to look at.
        return (
            record.status is SessionStatus.FAILED
            and state is not None
            and state.attempts > 0
            and report.health is Health.ERROR
        )

    async def consider(
        self, record: SessionRecord, seen: Observation | None, report: HealthReport
    ) -> None:
        """After an observation: plan an attempt, give up, or forget old attempts."""
        state = self.manager.recovery.get(record.id)
        if report.health is Health.HEALTHY:
            since = self._healthy_since.setdefault(record.id, asyncio.get_running_loop().time())
            await self._maybe_reset(record, state, since)
            return
        self._healthy_since.pop(record.id, None)
        if not self._wants(record, report, state):
            return
        if state is None:
            state = self.manager.recovery.setdefault(record.id, Recovery())
        if state.outcome is not None or state.next_attempt is not None:
            return
        if self.pending(record.id):
            return
        reason = describe(report)
        bound = log.bind(session_id=record.id)
        if state.attempts >= self.settings.max_attempts:
            if state.recreated:
                state.outcome = Outcome.CRASH_LOOP
                state.last_error = (
                    f"crash loop: the container died again after each of {state.attempts} "
                    f"automatic recreates (last: {reason})"
                )
            else:
                state.outcome = Outcome.GAVE_UP
                state.last_error = (
                    f"automatic recovery stopped after {state.attempts} attempts: "
                    f"{state.last_error or reason}"
                )
            await self._save(record.id)
            bound.warning("recovery_gave_up", outcome=state.outcome.value, reason=state.last_error)
            # The outcome may change the health (crash_loop): report and publish it.
            await self.manager.settle(record, seen)
            return
        backoff = self.settings.backoff_seconds
        delay = backoff[min(state.attempts, len(backoff) - 1)]
        state.next_attempt = utcnow() + timedelta(seconds=delay)
        if state.attempts == 0 or state.recreated:
            state.last_error = reason
        await self._save(record.id)
        self._schedule(record.id, delay)
        bound.info("recovery_planned", attempt=state.attempts + 1, delay=delay, reason=reason)

    async def _maybe_reset(
        self, record: SessionRecord, state: Recovery | None, healthy_since: float
    ) -> None:
        if state is None or not (state.attempts or state.outcome) or self.pending(record.id):
            return
        healthy_for = asyncio.get_running_loop().time() - healthy_since
        if healthy_for >= self.settings.healthy_reset_seconds:
            log.info("recovery_reset", session_id=record.id, reason="healthy again")
            await self._reset(record.id)

    async def user_acted(self, signal: UserActed) -> None:
        """The user took the session in hand: forget attempts, plans and outcomes."""
        record, action = signal.record, signal.action
        if record.id in self._own:
            return  # our own recreate passes through the same door
        timer = self._timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        state = self.manager.recovery.get(record.id)
        if state is not None and (state.attempts or state.outcome or state.next_attempt):
            log.info("recovery_reset", session_id=record.id, reason=f"user {action.value}")
            await self._reset(record.id)

    async def _reset(self, session_id: str) -> None:
        state = self.manager.recovery.get(session_id)
        if state is None:
            return
        state.attempts, state.last_attempt, state.last_error = 0, None, None
        state.next_attempt, state.outcome, state.recreated = None, None, False
        await self._save(session_id)

    # acting

    def _schedule(self, session_id: str, delay: float) -> None:
        old = self._timers.pop(session_id, None)
        if old is not None:
            old.cancel()
        self._timers[session_id] = self.tasks.spawn(
            self._attempt(session_id, delay), name=f"recover:{session_id}", group=SUPERVISE
        )

    async def _attempt(self, session_id: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            if self._timers.get(session_id) is asyncio.current_task():
                del self._timers[session_id]
        self._active.add(session_id)
        try:
            await self._run_attempt(session_id)
        finally:
            self._active.discard(session_id)
        # A container that died at once, or a failed recreate, is planned from a fresh look.
        self._check(session_id)

    async def _run_attempt(self, session_id: str) -> None:
        record = self.manager.records.get(session_id)
        state = self.manager.recovery.get(session_id)
        if record is None or state is None:
            return
        state.next_attempt = None
        bound = log.bind(session_id=session_id)
        try:
            # Look again right before acting: it may be back, or in the user's hands.
            report = await self.manager.health(record)
        except BackendUnavailable:
            await self._save(session_id)  # the pass after the engine returns plans again
            return
        if not self._wants(record, report, state) or state.outcome is not None:
            await self._save(session_id)
            return
        state.attempts += 1
        state.last_attempt = utcnow()
        self._healthy_since.pop(session_id, None)
        state.recreated = False
        await self._save(session_id)
        bound.info("recovery_attempt", attempt=state.attempts, reason=state.last_error)
        self._own.add(session_id)
        try:
            await self.manager.recreate(session_id)
        except (Conflict, BackendUnavailableError) as exc:
            # Not an attempt: someone else acts on it, or the engine is away.
            state.attempts -= 1
            bound.info("recovery_deferred", reason=exc.message)
        except ApiError as exc:
            state.last_error = exc.message
            bound.warning("recovery_failed", attempt=state.attempts, error=exc.message)
        else:
            state.recreated = True
            bound.info("recovery_recreated", attempt=state.attempts)
        finally:
            self._own.discard(session_id)
        await self._save(session_id)

    async def _save(self, session_id: str) -> None:
        state = self.manager.recovery.get(session_id)
        try:
            if state is None or not (
                state.attempts or state.outcome or state.next_attempt or state.last_error
            ):
                await self.store.delete_reconciliation(session_id)
                if state is not None and state.idle:
                    self.manager.recovery.pop(session_id, None)
            elif session_id in self.manager.records:
                await self.store.save_reconciliation(session_id, state.stored())
        except StoreError as exc:
            log.warning("recovery_not_stored", session_id=session_id, error=str(exc))

    def forget_missing(self) -> None:
        """Drop the state of sessions that no longer exist (their rows went with them)."""
        for session_id in list(self.manager.recovery):
            if session_id not in self.manager.records:
                self.manager.recovery.pop(session_id, None)
                self._healthy_since.pop(session_id, None)
                timer = self._timers.pop(session_id, None)
                if timer is not None:
                    timer.cancel()
