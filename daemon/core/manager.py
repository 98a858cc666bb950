"""The SessionManager: the session core's facade, every lifecycle operation journaled.

Handlers and sockets call this; it changes the store, drives a Backend and publishes to the
EventHub (DESIGN.md, "The house"). It holds the records, one operation per session at a
time (a second one is refused with 409 rather than queued behind it), the journal and the
publishing; each operation records its intent (status, progress step, journal row) before
it acts and its result after, so a daemon killed at any point leaves a journal that says
what was under way.

About 500 lines, on purpose: what is left is that one job (records, lock, journal,
publishing) and one-line delegations that keep the calls of the handlers, sockets and
supervisors as they were. The rest is in small modules beside it:

- daemon/core/validate.py: create-time checks (repositories, roots, image paths, names);
- daemon/core/spawn.py: what a backend needs to start a session (paths, home, spec);
- daemon/core/actions.py: what each action does (worktrees, containers, terminals);
- daemon/core/health_cache.py: the last observed health and settling an observation;
- daemon/core/chat.py: messages to the agent and the chat history.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from backends.base import Backend, BackendError, BackendUnavailable
from daemon.agents.claude import ClaudeRunner
from daemon.agents.codex import CodexRunner
from daemon.core import validate, worktrees
from daemon.core.actions import Lifecycle
from daemon.core.chat import CHAT_EVENT_TYPES, Chat
from daemon.core.console import Consoles
from daemon.core.errors import (
    BackendUnavailableError,
    Conflict,
    InvalidRequest,
    SessionNotFound,
)
from daemon.core.failures import api_error
from daemon.core.health import Observation, Recovery
from daemon.core.health_cache import HealthCache, engine_away, needs_engine, observe
from daemon.core.hub import AgentExited, EventHub, UserActed
from daemon.core.image_build import ImageBuilder
from daemon.core.models import (
    Action,
    CreateSessionRequest,
    Health,
    HealthReport,
    MetadataUpdate,
    Progress,
    Repository,
    Session,
    SessionStatus,
)
from daemon.core.session import SessionRecord, utcnow
from daemon.core.spawn import Spawner
from daemon.core.store import Store, StoreError
from daemon.core.tasks import TaskSupervisor
from daemon.core.usage import Meter
from daemon.core.validate import EngineCheck, Names
from daemon.settings import Settings

# Names other modules import from here.
__all__ = ["CHAT_EVENT_TYPES", "SessionManager", "api_error"]

log = structlog.get_logger(__name__)

_Body = Callable[["SessionRecord", "_Operation"], Awaitable[None]]


@dataclass
class _Operation:
    """A journaled operation with progress; one per session at a time."""

    manager: SessionManager
    record: SessionRecord
    op_id: int
    total: int
    step_no: int = 0

    async def step(self, journal_step: str, message: str) -> None:
        """Journal the step, then show it as progress: always before its side effects."""
        self.step_no += 1
        await self.note(journal_step, message)

    async def note(self, journal_step: str, message: str) -> None:
        """Journal and show news of the step under way (a wait), keeping its number."""
        self.record.progress = Progress(step=self.step_no, total=self.total, message=message)
        self.record.updated_at = utcnow()
        await self.manager.store.record_step(
            self.op_id, journal_step, self.record, ("progress", "updated_at")
        )
        await self.manager.hub.publish(
            "session_progress",
            self.record.id,
            progress=self.record.progress.model_dump(),
        )


class SessionManager:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: EventHub,
        backends: dict[str, Backend],
        tasks: TaskSupervisor,
        consoles: Consoles,
    ) -> None:
        self.settings = settings
        self.consoles = consoles
        # What a backend needs to start each session: paths, home, container spec.
        self.spawner = Spawner(
            settings, {"claude": ClaudeRunner(settings), "codex": CodexRunner(settings)}
        )
        consoles.on_exit = self._agent_exited
        self.store = store
        self.hub = hub
        self.backends = backends
        self.tasks = tasks
        self.records: dict[str, SessionRecord] = {}
        self._busy: set[str] = set()
        self._engine = EngineCheck()
        # What automatic recovery has done per session (daemon/supervise/recovery.py keeps it).
        self.recovery: dict[str, Recovery] = {}
        self.health_cache = HealthCache()
        self.names = Names(self.records, self.spawner)
        # The default agent image, built on first use (sessions wait for it in ``launch``).
        self.images = ImageBuilder(settings, backends.get("docker"), tasks)
        self.lifecycle = Lifecycle(self)
        self.chat = Chat(settings, store, consoles)
        # Usage and budgets (daemon/core/usage.py), set by the app once loaded: the API's
        # sessions show their spend from it.
        self.usage: Meter | None = None

    # paths (daemon/core/spawn.py)

    @property
    def worktrees_dir(self) -> Path:
        return self.spawner.worktrees_dir

    def agent_home(self, session_id: str) -> Path:
        return self.spawner.agent_home(session_id)

    def agent_working_dir(self, record: SessionRecord) -> str:
        return self.spawner.agent_working_dir(record)

    # reading

    def get(self, session_id: str) -> SessionRecord:
        record = self.records.get(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        return record

    def to_api(self, record: SessionRecord) -> Session:
        primary = record.primary
        data = record.model_dump(exclude={"repositories", "image_paths"})
        return Session(
            **data,
            repositories=record.repositories,
            repo_path=primary.path,
            worktree_path=primary.worktree_path,
            branch_name=primary.branch_name,
            base_branch=primary.base_branch,
            health=self.current_health(record),
            cost_usd=self.usage.spent(record.id)[0] if self.usage else 0.0,
            total_tokens=self.usage.spent(record.id)[1] if self.usage else 0,
        )

    def query(self, *, include_archived: bool, status: SessionStatus | None) -> list[SessionRecord]:
        """Matching sessions, newest first."""
        found = [
            r
            for r in self.records.values()
            if (include_archived or not r.archived) and (status is None or r.status is status)
        ]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return found

    @property
    def version(self) -> tuple[int, int, int, int]:
        """What answers built from the sessions are cached under: it moves with every write
        of a session to the store (a failed one too), every change of a health shown, every
        record added or removed and every request the usage meter counts, so no path can
        forget to invalidate them."""
        return (
            self.store.sessions_changed,
            self.health_cache.changes,
            len(self.records),
            self.usage.changes if self.usage else 0,
        )

    async def save(self, record: SessionRecord, *fields: str) -> None:
        written = (*fields, "updated_at")
        record.updated_at = utcnow()
        try:
            await self.store.update_session(record, written)
        except StoreError:
            # The write did not happen (a full disk, say): put back what the store holds, so
            # what the API shows never runs ahead of what a restart would find.
            with contextlib.suppress(StoreError, sqlite3.Error):
                for name, value in (await self.store.stored_fields(record.id, written)).items():
                    setattr(record, name, value)
            self.store.sessions_changed += 1  # the record was put back after the failed write
            raise

    async def publish_status(self, record: SessionRecord) -> None:
        await self.hub.publish(
            "session_status",
            record.id,
            status=record.status.value,
            health=self.current_health(record).value,
            agent_state=record.agent_state.value,
            agent_state_reason=record.agent_state_reason,
            archived=record.archived,
        )

    def backend_for(self, record: SessionRecord) -> Backend:
        return self._backend(record.backend)

    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise InvalidRequest(
                f"backend '{name}' is not available in this daemon",
                [{"field": "backend", "message": f"available: {sorted(self.backends)}"}],
            )
        return backend

    # start-up

    async def load(self) -> None:
        """Load every session, and settle what a killed daemon left half done."""
        for record in await self.store.load_sessions():
            self.records[record.id] = record
        interrupted: dict[str, dict[str, Any]] = {}
        for op in await self.store.open_operations():
            await self.store.end_operation(op["id"], "interrupted", "the daemon stopped")
            interrupted[op["session_id"]] = op
        for session_id, op in interrupted.items():
            if session_id not in self.records:
                continue
            record = self.records[session_id]
            log.warning(
                "operation_interrupted", session_id=session_id, kind=op["kind"], step=op["step"]
            )
            if record.status is SessionStatus.DELETING:
                self._start_delete(record)
                continue
            record.progress = None
            record.error_message = (
                f"'{op['kind']}' was interrupted by a daemon restart at step '{op['step']}'"
            )
            if record.status is SessionStatus.CREATING:
                record.status = SessionStatus.FAILED
            await self.save(record, "progress", "error_message", "status")
        for record in self.records.values():
            if record.status is SessionStatus.DELETING and record.id not in interrupted:
                self._start_delete(record)
            elif record.backend == "local" and record.container_id is not None:
                # A host process dies with the daemon that held its terminal.
                record.container_id = None
                if record.status is SessionStatus.RUNNING:
                    record.status = SessionStatus.STOPPED
                await self.save(record, "container_id", "status")
        running = [
            r
            for r in self.records.values()
            if r.status is SessionStatus.RUNNING and r.container_id and not r.archived
        ]
        # Also with none, so that "every console is back" is always logged once at start.
        self.tasks.spawn(self.lifecycle.reattach(running), name="console-reattach")

    # create

    async def create(self, request: CreateSessionRequest) -> SessionRecord:
        backend = self._backend(request.backend)
        validate.egress_policy(self.settings, request)  # a 400 before any path is opened
        repo_requests = validate.repository_requests(request)
        name = request.name
        if name is not None:
            self.names.reserve(name)
        try:
            resolved = await validate.resolve_repositories(self.settings, repo_requests)
            await validate.check_image_paths(self.settings, request.image_paths)
            if name is None:
                name = await self.names.generate_free(resolved)
            else:
                await self.names.check_free(name, resolved)
            await self._engine.check(backend)
            record = validate.new_record(self.settings, self.spawner, request, name, resolved)
            await self.store.insert_session(record)
            op_id = await self.store.begin_operation(record.id, "create", "record")
            self.records[record.id] = record
        finally:
            if name is not None:
                self.names.release(name)
        self._busy.add(record.id)
        await self.hub.publish("session_created", record.id, session=self._json(record))
        self.tasks.spawn(self._run_create(record, op_id), name=f"create:{record.id}")
        return record

    def _json(self, record: SessionRecord) -> dict[str, Any]:
        return self.to_api(record).model_dump(mode="json")

    async def _run_create(self, record: SessionRecord, op_id: int) -> None:
        op = _Operation(self, record, op_id, total=4)
        log_ = log.bind(session_id=record.id)
        made_worktrees: list[Repository] = []
        try:
            await self.lifecycle.build(record, op, made_worktrees)
            await self.store.end_operation(op_id, "done")
        except Exception as exc:
            error = api_error(exc)
            log_.warning("create_failed", error=error.message, details=error.details)
            await self.lifecycle.undo_create(record, made_worktrees)
            self._busy.discard(record.id)
            await self._fail(record, op_id, error.message)
        except BaseException:  # cancelled (shutdown): the session is not held for ever
            self._busy.discard(record.id)
            raise
        else:
            # Free the session before it shows as running, so a client that sees
            # "running" can act on it at once. Never again after that: by then an action
            # the client started holds the session, and freeing it here would let a second
            # one in beside it (two recreates making the same container).
            self._busy.discard(record.id)
            await self.lifecycle.mark_running(record)
            log_.info("session_created", name=record.name)

    async def _fail(self, record: SessionRecord, op_id: int | None, message: str) -> None:
        record.status = SessionStatus.FAILED
        record.error_message = message
        record.progress = None
        await self.save(record, "status", "error_message", "progress", "container_id")
        if op_id is not None:
            await self.store.end_operation(op_id, "failed", message)
        await self.publish_status(record)

    async def _agent_exited(self, session_id: str, exit_code: int | None) -> None:
        """The terminal ended: the agent's process (the container's main one) is gone.

        The consoles' one exit hook: the session is marked stopped, then the supervisors
        hear of it through the hub (the reconciler takes a look).
        """
        record = self.records.get(session_id)
        running = record is not None and record.status is SessionStatus.RUNNING
        if record is not None and running and record.id not in self._busy:
            record.status = SessionStatus.STOPPED
            await self.save(record, "status")
            await self.publish_status(record)
        await self.hub.emit(AgentExited(session_id, exit_code))

    # observation and health (daemon/core/health_cache.py)

    async def observe(self, record: SessionRecord) -> Observation:
        return await observe(record, self.backend_for)

    async def health(self, record: SessionRecord) -> HealthReport:
        seen = await self.observe(record) if needs_engine(record) else None
        return await self.settle(record, seen)

    def current_health(self, record: SessionRecord) -> Health:
        """The last observed health while it still applies, else the stored status's."""
        return self.health_cache.current(record)

    def is_busy(self, session_id: str) -> bool:
        """Whether an operation is under way on the session."""
        return session_id in self._busy

    async def settle(self, record: SessionRecord, seen: Observation | None) -> HealthReport:
        """Report what was observed; bring the stored status in line and publish a change."""
        recovery = self.recovery.get(record.id)
        health_report, changed = await self.health_cache.settle(record, seen, recovery, self.save)
        if changed:
            await self.publish_status(record)
        return health_report

    async def health_or_stored(self, record: SessionRecord) -> HealthReport:
        """The live report, or the stored one with the reason when the engine is away."""
        try:
            return await self.health(record)
        except BackendUnavailable as exc:
            return engine_away(record, self.recovery.get(record.id), exc)

    # the guard and the journal

    @contextlib.asynccontextmanager
    async def _exclusive(self, record: SessionRecord) -> AsyncIterator[None]:
        if record.id in self._busy:
            raise Conflict("another operation is in progress on this session")
        self._busy.add(record.id)
        try:
            yield
        finally:
            self._busy.discard(record.id)

    async def _require(self, record: SessionRecord, action: Action) -> HealthReport:
        try:
            health_report = await self.health(record)
        except BackendError as exc:
            raise api_error(exc) from exc
        if action not in health_report.available_actions:
            raise Conflict(
                f"cannot {action.value} a session whose health is {health_report.health.value}",
                {
                    "health": health_report.health.value,
                    "available_actions": [a.value for a in health_report.available_actions],
                },
            )
        return health_report

    async def _journaled(
        self, record: SessionRecord, action: Action, total: int
    ) -> tuple[_Operation, int]:
        op_id = await self.store.begin_operation(record.id, action.value, "begin")
        return _Operation(self, record, op_id, total=total), op_id

    async def _run_action(
        self, record: SessionRecord, action: Action, body: _Body, *, total: int
    ) -> None:
        """Guard, journal and run one synchronous action; failures leave a clear record."""
        async with self._exclusive(record):
            await self._require(record, action)
            # Heard before the action is journaled (automatic recovery forgets its attempts).
            await self.hub.emit(UserActed(record, action))
            op, op_id = await self._journaled(record, action, total=total)
            try:
                await body(record, op)
            except Exception as exc:
                error = api_error(exc)
                log.warning(
                    "action_failed", session_id=record.id, action=action.value, error=error.message
                )
                if isinstance(error, BackendUnavailableError):
                    record.progress = None
                    await self.save(record, "progress", "container_id")
                    await self.store.end_operation(op_id, "failed", error.message)
                else:
                    await self._fail(record, op_id, f"{action.value} failed: {error.message}")
                raise error from exc
            await self.store.end_operation(op_id, "done")
            log.info("action_done", session_id=record.id, action=action.value)

    # actions (daemon/core/actions.py says what each does)

    async def _act(
        self, session_id: str, action: Action, body: _Body, *, total: int
    ) -> SessionRecord:
        record = self.get(session_id)
        await self._run_action(record, action, body, total=total)
        return record

    async def start(self, session_id: str) -> SessionRecord:
        return await self._act(session_id, Action.START, self.lifecycle.start, total=2)

    async def archive(self, session_id: str) -> SessionRecord:
        return await self._act(session_id, Action.ARCHIVE, self.lifecycle.archive, total=1)

    async def unarchive(self, session_id: str) -> SessionRecord:
        return await self._act(session_id, Action.UNARCHIVE, self.lifecycle.unarchive, total=3)

    async def recreate(self, session_id: str, *, fresh: bool = False) -> SessionRecord:
        action = Action.RECREATE_FRESH if fresh else Action.RECREATE
        body = partial(self.lifecycle.recreate, fresh=fresh)
        return await self._act(session_id, action, body, total=4)

    async def refresh(self, session_id: str) -> SessionRecord:
        return await self._act(session_id, Action.REFRESH, self.lifecycle.refresh, total=4)

    async def update_metadata(self, session_id: str, update: MetadataUpdate) -> SessionRecord:
        record = self.get(session_id)
        changed = update.model_dump(exclude_unset=True, exclude_none=True)
        new_name = changed.get("name")
        if new_name not in (None, record.name) and self.names.taken(new_name):
            raise Conflict(f"a session named '{new_name}' already exists")
        for key, value in changed.items():
            setattr(record, key, value)
        if changed:
            await self.save(record, *changed)
            await self.hub.publish("session_updated", record.id, session=self._json(record))
        return record

    # chat (daemon/core/chat.py)

    async def send_message(self, session_id: str, content: str) -> None:
        """Type the message into the agent's terminal as a person would: paste, then Enter."""
        await self.chat.send(self.get(session_id), content)

    async def chat_events(self, session_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        self.get(session_id)
        return await self.chat.events(session_id, after, limit)

    async def chat_history(self, record: SessionRecord) -> list[dict[str, Any]]:
        return await self.chat.history(record)

    # delete and cleanup

    async def delete(self, session_id: str, *, force: bool = False) -> SessionRecord:
        record = self.get(session_id)
        return await self._delete(record, Action.DELETE, force=force)

    async def cleanup(self, session_id: str) -> SessionRecord:
        record = self.get(session_id)
        return await self._delete(record, Action.CLEANUP, force=True)

    async def _delete(self, record: SessionRecord, action: Action, *, force: bool) -> SessionRecord:
        async with self._exclusive(record):
            if action is Action.CLEANUP or record.container_id:
                await self._require(record, action)
            elif record.status in (SessionStatus.CREATING, SessionStatus.DELETING):
                raise Conflict(f"cannot delete a session that is {record.status.value}")
            if not force:
                try:
                    work = await self.lifecycle.unsaved_work(record)
                except worktrees.GitError as exc:
                    raise api_error(exc) from exc
                if work:
                    raise Conflict(
                        "the session has work that is not saved on any other branch; "
                        "commit and merge it, or delete with force=true",
                        {"repositories": work},
                    )
            record.status = SessionStatus.DELETING
            record.progress = Progress(step=0, total=3, message="Queued for deletion")
            await self.save(record, "status", "progress")
        await self.publish_status(record)
        self._start_delete(record)
        return record

    def _start_delete(self, record: SessionRecord) -> None:
        self._busy.add(record.id)
        self.tasks.spawn(self._run_delete(record), name=f"delete:{record.id}")

    async def _run_delete(self, record: SessionRecord) -> None:
        op_id = await self.store.begin_operation(record.id, "delete", "begin")
        op = _Operation(self, record, op_id, total=3)
        try:
            await self.lifecycle.remove(record, op)
            await op.step("forget", "Removing the record")
            await self.hub.publish("session_deleted", record.id)
            await self.store.delete_session(record.id)
            await self.store.end_operation(op_id, "done")
            self.records.pop(record.id, None)
            self.health_cache.forget(record.id)
            self.recovery.pop(record.id, None)
            self.hub.forget(record.id)
            log.info("session_deleted", session_id=record.id)
        except Exception as exc:
            error = api_error(exc)
            log.warning("delete_failed", session_id=record.id, error=error.message)
            await self._fail(record, op_id, f"delete failed: {error.message}")
        finally:
            self._busy.discard(record.id)
