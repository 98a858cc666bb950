"""Health: what state a session is in, what the user can do about it, what each action keeps.

Pure functions of the stored record, one observation of the backend and what automatic
recovery has done, so the same rules serve the REST health report, the action guards (409
for an action not offered) and the reconciler.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backends.base import ContainerInfo, ContainerState
from daemon.core.models import Action, Health, HealthReport, Reconciliation, SessionStatus
from daemon.core.session import SessionRecord

# Whether the worktree's files and the conversation survive each action.
DATA_PRESERVATION: dict[Action, bool] = {
    Action.START: True,
    Action.RECREATE: True,
    Action.RECREATE_FRESH: False,
    Action.REFRESH: True,
    Action.ARCHIVE: True,
    Action.UNARCHIVE: True,
    Action.CLEANUP: False,
    Action.DELETE: False,
}

# A container the engine restarted this often is crash-looping, not starting.
CRASH_LOOP_RESTARTS = 3

_A = Action
_OFFERED: dict[Health, tuple[list[Action], Action | None]] = {
    Health.HEALTHY: ([_A.RECREATE, _A.RECREATE_FRESH, _A.REFRESH, _A.ARCHIVE, _A.DELETE], None),
    Health.STARTING: ([], None),
    Health.STOPPED: (
        [_A.START, _A.RECREATE, _A.RECREATE_FRESH, _A.REFRESH, _A.ARCHIVE, _A.DELETE],
        _A.START,
    ),
    Health.MISSING: (
        [_A.RECREATE, _A.RECREATE_FRESH, _A.REFRESH, _A.ARCHIVE, _A.CLEANUP, _A.DELETE],
        _A.RECREATE,
    ),
    Health.ERROR: (
        [_A.START, _A.RECREATE, _A.RECREATE_FRESH, _A.REFRESH, _A.ARCHIVE, _A.CLEANUP, _A.DELETE],
        _A.RECREATE,
    ),
    Health.CRASH_LOOP: (
        [_A.RECREATE, _A.RECREATE_FRESH, _A.REFRESH, _A.ARCHIVE, _A.CLEANUP, _A.DELETE],
        _A.RECREATE_FRESH,
    ),
    Health.WORKTREE_MISSING: (
        [_A.RECREATE, _A.RECREATE_FRESH, _A.CLEANUP, _A.DELETE],
        _A.RECREATE,
    ),
    Health.ARCHIVED: ([_A.UNARCHIVE, _A.DELETE], None),
}


class Outcome(enum.StrEnum):
    """How automatic recovery ended, once it has left the session to the user."""

    CRASH_LOOP = "crash_loop"  # every recreate worked, and every new container died again
    GAVE_UP = "gave_up"  # the last recreate itself failed


@dataclass
class Recovery:
    """What the reconciler has done for one session (kept by ``daemon/supervise/recovery.py``).

    The first five fields are stored; ``recreated`` says whether the last attempt made a
    running container (so a death after it counts toward a crash loop).
    ``stalled_since`` is the stall watchdog's, kept in memory only.
    """

    attempts: int = 0
    last_attempt: datetime | None = None
    last_error: str | None = None
    next_attempt: datetime | None = None
    outcome: Outcome | None = None
    recreated: bool = False
    stalled_since: datetime | None = None
    # Files in the agent home the daemon refuses to read (path in the home → what it is),
    # kept in memory by the agent watcher (daemon/supervise/agent_watch.py) while they stay so.
    hostile_files: dict[str, str] = field(default_factory=dict)

    def public(self) -> Reconciliation:
        return Reconciliation(
            attempts=self.attempts,
            last_attempt=self.last_attempt,
            last_error=self.last_error,
            next_attempt=self.next_attempt,
        )

    def stored(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "last_attempt": self.last_attempt,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt,
            "outcome": self.outcome.value if self.outcome else None,
            "recreated": self.recreated,
        }

    @property
    def idle(self) -> bool:
        """Nothing to remember: no attempt made, none planned, no stall, no hostile file."""
        return not (
            self.attempts
            or self.next_attempt
            or self.outcome
            or self.stalled_since
            or self.hostile_files
        )


def stored_health(record: SessionRecord) -> Health:
    """Health as the store knows it, without asking the engine (for lists)."""
    if record.archived:
        return Health.ARCHIVED
    return {
        SessionStatus.CREATING: Health.STARTING,
        SessionStatus.RUNNING: Health.HEALTHY,
        SessionStatus.STOPPED: Health.STOPPED,
        SessionStatus.FAILED: Health.ERROR,
        SessionStatus.DELETING: Health.STOPPED,
    }[record.status]


@dataclass
class Observation:
    """One look at reality: the container (None when absent) and which worktrees are gone."""

    container: ContainerInfo | None
    missing_worktrees: list[str] = field(default_factory=list)


def assess(record: SessionRecord, seen: Observation | None) -> tuple[Health, dict[str, Any]]:
    """The health state and its details; ``seen`` is None when nothing was observed."""
    details: dict[str, Any] = {}
    if record.error_message:
        details["error_message"] = record.error_message
    if record.archived:
        return Health.ARCHIVED, details
    if record.status in (SessionStatus.CREATING, SessionStatus.DELETING):
        details["operation"] = record.status.value
        return (
            Health.STARTING if record.status is SessionStatus.CREATING else Health.STOPPED,
            details,
        )
    if seen is None:
        return stored_health(record), details
    if record.status is SessionStatus.FAILED:
        if seen.container is not None:
            details["container_status"] = seen.container.state.value
        return Health.ERROR, details
    if seen.missing_worktrees:
        details["missing_worktrees"] = seen.missing_worktrees
        return Health.WORKTREE_MISSING, details
    container = seen.container
    if container is None:
        if record.backend == "local" and record.status is SessionStatus.STOPPED:
            # Local agents end with the daemon; start makes a new process on the same work.
            details["container_status"] = "not_started"
            return Health.STOPPED, details
        details["container_status"] = "missing"
        return Health.MISSING, details
    details["container_status"] = container.state.value
    details["restart_count"] = container.restart_count
    if container.exit_code is not None and container.state is not ContainerState.RUNNING:
        details["exit_code"] = container.exit_code
    if container.error:
        details["error_message"] = container.error
    if container.oom_killed:
        details["oom_killed"] = True
    if container.state is ContainerState.RESTARTING or (
        container.restart_count >= CRASH_LOOP_RESTARTS and not container.running
    ):
        return Health.CRASH_LOOP, details
    if container.running:
        return Health.HEALTHY, details
    if container.state is ContainerState.DEAD:
        return Health.ERROR, details
    if container.state is ContainerState.EXITED and container.exit_code not in (0, None):
        return Health.ERROR, details
    return Health.STOPPED, details


def offered(record: SessionRecord, health: Health) -> tuple[list[Action], Action | None]:
    if record.status is SessionStatus.DELETING:
        return [], None
    if record.status is SessionStatus.FAILED and health is Health.ERROR:
        # A failed creation may have no container yet: start has nothing to start.
        return [_A.RECREATE, _A.CLEANUP, _A.DELETE], _A.RECREATE
    actions, recommended = _OFFERED[health]
    return list(actions), recommended


def with_recovery(
    record: SessionRecord, health: Health, details: dict[str, Any], recovery: Recovery
) -> Health:
    """The health once automatic recovery is taken into account, with its reason."""
    if recovery.stalled_since is not None and health is Health.HEALTHY:
        details["stalled_since"] = recovery.stalled_since.isoformat().replace("+00:00", "Z")
    if recovery.hostile_files:
        # The agent's chat or state stops updating from these; the session itself still runs.
        details["hostile_files"] = dict(recovery.hostile_files)
    if recovery.outcome is None or record.archived:
        return health
    details["recovery"] = recovery.outcome.value
    if recovery.last_error:
        details["reason"] = recovery.last_error
    # A crash loop is the state of a session that is down; one started again by hand since
    # shows as what it is.
    if recovery.outcome is Outcome.CRASH_LOOP and health in (
        Health.ERROR,
        Health.MISSING,
        Health.STOPPED,
    ):
        return Health.CRASH_LOOP
    return health


def report(
    record: SessionRecord, seen: Observation | None, recovery: Recovery | None = None
) -> HealthReport:
    health, details = assess(record, seen)
    if recovery is not None:
        health = with_recovery(record, health, details, recovery)
    actions, recommended = offered(record, health)
    return HealthReport(
        session_id=record.id,
        health=health,
        details=details,
        available_actions=actions,
        recommended_action=recommended,
        data_preservation={a.value: DATA_PRESERVATION[a] for a in actions},
        reconciliation=recovery.public() if recovery is not None else Reconciliation(),
    )
