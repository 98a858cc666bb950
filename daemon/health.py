"""Health: what state a session is in, what the user can do about it, what each action keeps.

Pure functions of the stored record and one observation of the backend, so the same rules
serve the REST health report, the action guards (409 for an action not offered) and, later,
the reconciler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backends.base import ContainerInfo, ContainerState
from daemon.models import Action, Health, HealthReport, Reconciliation, SessionStatus
from daemon.store import SessionRecord

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


def report(record: SessionRecord, seen: Observation | None) -> HealthReport:
    health, details = assess(record, seen)
    actions, recommended = offered(record, health)
    return HealthReport(
        session_id=record.id,
        health=health,
        details=details,
        available_actions=actions,
        recommended_action=recommended,
        data_preservation={a.value: DATA_PRESERVATION[a] for a in actions},
        reconciliation=Reconciliation(),
    )
