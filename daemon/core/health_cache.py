"""The last observed health of each session, and settling a new observation into it.

Lists show health without asking the engine: the last observation is kept while the
record's status, archived flag and container stay as they were when it was made, else the
stored status's health applies (daemon/core/health.py). Settling an observation brings the
stored status in line with the container seen; the manager publishes what changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from backends.base import Backend, BackendUnavailable
from daemon.core.health import Observation, Recovery, report, stored_health
from daemon.core.models import Health, HealthReport, SessionStatus
from daemon.core.session import SessionRecord

_Save = Callable[[SessionRecord, str], Awaitable[None]]


def needs_engine(record: SessionRecord) -> bool:
    """Whether the session's health depends on what the engine says (else the store's)."""
    return not record.archived and record.status in (
        SessionStatus.RUNNING,
        SessionStatus.STOPPED,
        SessionStatus.FAILED,
    )


async def observe(
    record: SessionRecord, backend_for: Callable[[SessionRecord], Backend]
) -> Observation:
    """One look at the session's container (the engine asked only when it has one) and
    worktrees."""
    container = None
    if record.container_id:
        container = await backend_for(record).inspect(record.container_id)

    def missing() -> list[str]:
        return [r.mount_name for r in record.repositories if not Path(r.worktree_path).is_dir()]

    return Observation(container, await asyncio.to_thread(missing))


def engine_away(
    record: SessionRecord, recovery: Recovery | None, exc: BackendUnavailable
) -> HealthReport:
    """The stored report with the reason, and no action offered, while the engine is away."""
    stored = report(record, None, recovery)
    stored.details.update(backend_available=False, backend_error=exc.message)
    stored.available_actions = []
    stored.recommended_action = None
    stored.data_preservation = {}
    return stored


class HealthCache:
    """Per session, the last observed health and the record state it was observed in."""

    def __init__(self) -> None:
        self._observed: dict[str, tuple[tuple[object, ...], Health]] = {}
        # Moves whenever a health shown could change; keys cached answers with the store's.
        self.changes = 0

    @staticmethod
    def _key(record: SessionRecord) -> tuple[object, ...]:
        return (record.status, record.archived, record.container_id)

    def current(self, record: SessionRecord) -> Health:
        """The last observed health while it still applies, else the stored status's."""
        observed = self._observed.get(record.id)
        if observed is not None and observed[0] == self._key(record):
            return observed[1]
        return stored_health(record)

    def forget(self, session_id: str) -> None:
        self._observed.pop(session_id, None)
        self.changes += 1

    async def settle(
        self,
        record: SessionRecord,
        seen: Observation | None,
        recovery: Recovery | None,
        save: _Save,
    ) -> tuple[HealthReport, bool]:
        """The report of what was observed, with the stored status brought in line (through
        ``save``); True when the status or the health shown changed (to publish)."""
        health_report = report(record, seen, recovery)
        before = self.current(record)
        changed = await self._sync_status(record, seen, save)
        if seen is not None:
            self._observed[record.id] = (self._key(record), health_report.health)
        changed = changed or self.current(record) is not before
        if changed:
            self.changes += 1
        return health_report, changed

    @staticmethod
    async def _sync_status(record: SessionRecord, seen: Observation | None, save: _Save) -> bool:
        """Bring the stored status in line with an observed container; True if it changed."""
        if seen is None or record.status not in (SessionStatus.RUNNING, SessionStatus.STOPPED):
            return False
        running = seen.container is not None and seen.container.running
        status = SessionStatus.RUNNING if running else SessionStatus.STOPPED
        if status is record.status:
            return False
        record.status = status
        await save(record, "status")
        return True
