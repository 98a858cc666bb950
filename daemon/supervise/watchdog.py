"""The stall watchdog: a working agent that has gone silent is reported, never acted on.

A running session whose ``agent_state`` is ``working`` and whose agent has printed nothing
on its terminal (the console's running output offset stands still) and written no
transcript line (no chat event published) for ``stall_seconds`` gets
``details.stalled_since`` in its health report (the time of its last sign of life) and a
``session_status`` event; another when it speaks again or stops working. An agent thinking
hard for a long time looks the same as a hung one, so the user decides.

Silence is counted from the later of the last output and the moment the session was first
seen working, so an agent idle for an hour that starts working is not stalled at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from daemon.core.console import Consoles
from daemon.core.health import Recovery
from daemon.core.hub import Event, EventHub
from daemon.core.manager import CHAT_EVENT_TYPES
from daemon.core.models import AgentState, SessionStatus
from daemon.core.session import SessionRecord, utcnow
from daemon.core.tasks import SUPERVISE, TaskSupervisor, cancel_and_wait

log = structlog.get_logger(__name__)

MAX_TICK_SECONDS = 5.0
MIN_TICK_SECONDS = 0.05


@dataclass
class _Seen:
    output_end: int  # the console's running output offset when last looked at
    since: float  # loop time of the last sign of life
    wall: datetime  # the same moment, for the report


class Sessions(Protocol):
    """What the watchdog needs of the session manager."""

    @property
    def records(self) -> dict[str, SessionRecord]: ...
    @property
    def recovery(self) -> dict[str, Recovery]: ...
    async def publish_status(self, record: SessionRecord) -> None: ...


class StallWatchdog:
    """Hears chat events on the hub, reads output offsets from the consoles; one task."""

    def __init__(
        self,
        manager: Sessions,
        seconds: float,
        *,
        hub: EventHub,
        consoles: Consoles,
        tasks: TaskSupervisor,
    ) -> None:
        self.manager = manager
        self.seconds = seconds
        self.hub = hub
        self.consoles = consoles
        self.tasks = tasks
        self._seen: dict[str, _Seen] = {}
        self._spoke: set[str] = set()  # sessions with a chat event since the last look
        self._unlisten: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.seconds <= 0:
            return
        self._unlisten = self.hub.listen(self._on_event)
        self._task = self.tasks.spawn(self._run(), name="stall-watchdog", group=SUPERVISE)

    async def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        await cancel_and_wait(self._task)

    def _on_event(self, event: Event) -> None:
        if event["type"] in CHAT_EVENT_TYPES:  # a transcript line became an event
            self._spoke.add(event["session_id"])

    async def _run(self) -> None:
        tick = min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, self.seconds / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                await self.check()
            except Exception:
                log.exception("stall_check_failed")

    async def check(self) -> None:
        now = asyncio.get_running_loop().time()
        spoke, self._spoke = self._spoke, set()
        for session_id in list(self._seen):
            if session_id not in self.manager.records:
                del self._seen[session_id]
        for record in list(self.manager.records.values()):
            working = (
                record.status is SessionStatus.RUNNING
                and not record.archived
                and record.agent_state is AgentState.WORKING
            )
            if not working:
                self._seen.pop(record.id, None)
                await self._clear(record)
                continue
            attachment = self.consoles.get(record.id)
            end = attachment.buffer.end if attachment is not None else -1
            seen = self._seen.get(record.id)
            if seen is None or seen.output_end != end or record.id in spoke:
                self._seen[record.id] = _Seen(end, now, utcnow())
                await self._clear(record)
            elif now - seen.since >= self.seconds:
                await self._mark(record, seen)

    async def _mark(self, record: SessionRecord, seen: _Seen) -> None:
        state = self.manager.recovery.setdefault(record.id, Recovery())
        if state.stalled_since is not None:
            return
        state.stalled_since = seen.wall
        log.warning(
            "agent_stalled",
            session_id=record.id,
            since=seen.wall.isoformat(),
            silent_seconds=round(self.seconds),
        )
        await self.manager.publish_status(record)

    async def _clear(self, record: SessionRecord) -> None:
        state = self.manager.recovery.get(record.id)
        if state is None or state.stalled_since is None:
            return
        state.stalled_since = None
        if state.idle:
            self.manager.recovery.pop(record.id, None)
        log.info("agent_stall_ended", session_id=record.id)
        await self.manager.publish_status(record)
