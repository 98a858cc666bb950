"""The SessionManager: every lifecycle operation, journaled before its side effects.

Handlers and sockets call this; it changes the store, drives a Backend and publishes to the
EventHub (DESIGN.md, "The house"). Each operation records its intent (status, progress
step, journal row) before it acts and its result after, so a daemon killed at any point
leaves a journal that says what was under way. One operation runs per session at a time;
a second one is refused with 409 rather than queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ContainerSpec,
    ImageNotFound,
    Mount,
)
from daemon.agents.claude import ClaudeRunner
from daemon.agents.codex import CodexRunner
from daemon.agents.runner import CONTAINER_HOME, AgentRunner, copy_attachments
from daemon.core import homefs, worktrees
from daemon.core.confine import resolved_roots, within
from daemon.core.console import Consoles
from daemon.core.errors import (
    ApiError,
    BackendFailed,
    BackendUnavailableError,
    Conflict,
    Forbidden,
    InvalidRequest,
    SessionNotFound,
)
from daemon.core.git_mounts import GitWorktree, git_mounts
from daemon.core.health import Observation, Recovery, report, stored_health
from daemon.core.hub import EventHub
from daemon.core.models import (
    Action,
    CreateSessionRequest,
    Health,
    HealthReport,
    MetadataUpdate,
    Progress,
    Repository,
    RepositoryRequest,
    Session,
    SessionStatus,
    slug,
)
from daemon.core.names import generate_name
from daemon.core.store import SessionRecord, Store, StoreError, creation_time, utcnow
from daemon.core.tasks import TaskSupervisor
from daemon.settings import Settings

log = structlog.get_logger(__name__)

CONTAINER_WORKSPACE = "/workspace"
BRANCH_PREFIX = "corral/"
CHAT_EVENT_TYPES = ("chat_message", "tool_call", "tool_result")
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
PASTE_SETTLE_SECONDS = 0.05
ENGINE_TRUST_SECONDS = 2.0
REATTACH_CONCURRENCY = 16  # terminals reattached at once after a restart

_Body = Callable[["SessionRecord", "_Operation"], Awaitable[None]]


def api_error(exc: BaseException) -> ApiError:
    """The PROTOCOL error for a failure below the manager (engine, git, anything else)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BackendUnavailable):
        return BackendUnavailableError(f"The container engine does not answer: {exc.message}")
    if isinstance(exc, ImageNotFound):
        return BackendFailed(exc.message, exc.details)
    if isinstance(exc, BackendError):
        return BackendFailed(exc.message, exc.details)
    if isinstance(exc, worktrees.GitError):
        return BackendFailed(f"git failed: {exc.message}", exc.details)
    return BackendFailed(f"{type(exc).__name__}: {exc}")


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
        self.record.progress = Progress(step=self.step_no, total=self.total, message=message)
        self.record.updated_at = utcnow()
        await self.manager.store.record_step(
            self.op_id, journal_step, self.record, ("progress", "updated_at")
        )
        self.manager.version += 1
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
        self.runners: dict[str, AgentRunner] = {
            "claude": ClaudeRunner(settings),
            "codex": CodexRunner(settings),
        }
        consoles.on_exit = self._agent_exited
        self.store = store
        self.hub = hub
        self.backends = backends
        self.tasks = tasks
        self.records: dict[str, SessionRecord] = {}
        self.version = 0  # bumped on every change; caches key on it
        self._busy: set[str] = set()
        self._reserved_names: set[str] = set()
        self._engine_seen: dict[str, float] = {}
        # What automatic recovery has done per session (daemon/supervise/recovery.py keeps it).
        self.recovery: dict[str, Recovery] = {}
        # The last observed health, valid while the record's status, archived flag and
        # container stay as they were when it was observed (see current_health).
        self._observed: dict[str, tuple[tuple[object, ...], Health]] = {}
        # Called before each action a client asked for runs (the reconciler resets its
        # attempts when the user acts).
        self.on_action: Callable[[SessionRecord, Action], Awaitable[None]] | None = None

    # paths

    @property
    def worktrees_dir(self) -> Path:
        return self.settings.data_dir / "worktrees"

    def session_dir(self, session_id: str) -> Path:
        return self.settings.data_dir / "sessions" / session_id

    def agent_home(self, session_id: str) -> Path:
        return self.session_dir(session_id) / "home"

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
            self.version += 1
            raise
        self.version += 1

    async def publish_status(self, record: SessionRecord) -> None:
        await self.hub.publish(
            "session_status",
            record.id,
            status=record.status.value,
            health=self.current_health(record).value,
            agent_state=record.agent_state.value,
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
        self.version += 1
        running = [
            r
            for r in self.records.values()
            if r.status is SessionStatus.RUNNING and r.container_id and not r.archived
        ]
        # Also with none, so that "every console is back" is always logged once at start.
        self.tasks.spawn(self._reattach(running), name="console-reattach")

    async def _reattach(self, records: list[SessionRecord]) -> None:
        """After a restart: rebuild each running session's screen from its log and attach.

        Several at a time: each is two engine round trips (log tail, attach) that mostly
        wait, and with a hundred sessions one after another the last terminal would stay
        dark for seconds. Bounded, so the engine is not handed a hundred requests at once.
        """
        started = time.monotonic()
        gate = asyncio.Semaphore(REATTACH_CONCURRENCY)

        async def one(record: SessionRecord) -> None:
            async with gate:
                await self._attach_console(record, replay_log=True)

        await asyncio.gather(*(one(record) for record in records))
        attached = sum(1 for record in records if self.consoles.get(record.id) is not None)
        log.info(
            "consoles_reattached",
            count=attached,
            sessions=len(records),
            seconds=round(time.monotonic() - started, 3),
        )

    # create

    async def create(self, request: CreateSessionRequest) -> SessionRecord:
        backend = self._backend(request.backend)
        repo_requests = self._repository_requests(request)
        name = request.name
        if name is not None:
            self._reserve_name(name)
        try:
            resolved = await self._resolve_repositories(repo_requests)
            await self._check_image_paths(request.image_paths)
            if name is None:
                name = await self._generate_free_name(resolved)
            else:
                await self._check_name_free(name, resolved)
            await self._check_engine(backend)
            now = creation_time()  # sub-second and increasing: the list's order
            record = SessionRecord(
                id=str(uuid.uuid4()),
                name=name,
                backend=request.backend,
                agent=request.agent,
                model=request.model or self.settings.sessions.default_model or None,
                status=SessionStatus.CREATING,
                prompt=request.prompt,
                no_plan_mode=request.no_plan_mode,
                image=request.image or self.settings.docker.default_image,
                image_paths=request.image_paths,
                created_at=now,
                updated_at=now,
                progress=Progress(step=0, total=4, message="Queued"),
                repositories=[
                    Repository(
                        path=info_.root,
                        mount_name=req.mount_name,
                        worktree_path=str(self.worktrees_dir / name / req.mount_name),
                        branch_name=BRANCH_PREFIX + name,
                        base_branch=base,
                        is_primary=index == 0,
                        subdir=info_.subdir,
                    )
                    for index, (req, info_, base) in enumerate(resolved)
                ],
            )
            await self.store.insert_session(record)
            op_id = await self.store.begin_operation(record.id, "create", "record")
            self.records[record.id] = record
            self.version += 1
        finally:
            if request.name is not None:
                self._reserved_names.discard(request.name)
            elif name is not None:
                self._reserved_names.discard(name)
        self._busy.add(record.id)
        await self.hub.publish("session_created", record.id, session=self._json(record))
        self.tasks.spawn(self._run_create(record, op_id), name=f"create:{record.id}")
        return record

    async def _check_engine(self, backend: Backend) -> None:
        """Answer 503 at once when the engine is away; a recent answer is trusted briefly."""
        loop_time = asyncio.get_running_loop().time()
        if (
            self._engine_seen.get(backend.name, -ENGINE_TRUST_SECONDS)
            > loop_time - ENGINE_TRUST_SECONDS
        ):
            return
        info = await backend.info()
        if not info.available:
            raise BackendUnavailableError("The container engine does not answer")
        self._engine_seen[backend.name] = loop_time

    def _json(self, record: SessionRecord) -> dict[str, Any]:
        return self.to_api(record).model_dump(mode="json")

    def _repository_requests(self, request: CreateSessionRequest) -> list[RepositoryRequest]:
        if request.repositories is not None:
            return request.repositories
        assert request.repo_path is not None
        mount = slug(Path(request.repo_path.rstrip("/")).name)[:64] or "repo"
        return [
            RepositoryRequest(
                path=request.repo_path, mount_name=mount, base_branch=request.base_branch
            )
        ]

    async def _resolve_repositories(
        self, requests: list[RepositoryRequest]
    ) -> list[tuple[RepositoryRequest, worktrees.RepoInfo, str]]:
        timeout = self.settings.sessions.git_timeout
        field = "repo_path" if len(requests) == 1 else "repositories.{}.path"
        allowed = resolved_roots(self.settings.server.allowed_roots)
        # The roots first, before git or anything else opens a path: one answer for every
        # path outside them, whether it exists, is a repository or not (no probing).
        paths = [r.path for r in requests]
        outside = await asyncio.to_thread(self._outside_roots, paths, allowed)
        if outside is not None:
            raise self._outside_error(paths[outside], field.format(outside))
        results = await asyncio.gather(
            *(
                # Not a repository in the data dir: its config would be a container's.
                worktrees.resolve_repository(
                    r.path, timeout=timeout, untrusted=(str(self.settings.data_dir),)
                )
                for r in requests
            ),
            return_exceptions=True,
        )
        problems: list[dict[str, str]] = []
        infos: list[worktrees.RepoInfo] = []
        for index, result in enumerate(results):
            if isinstance(result, worktrees.InvalidRepository):
                problems.append({"field": field.format(index), "message": result.message})
            elif isinstance(result, BaseException):
                raise api_error(result)
            else:
                infos.append(result)
        if problems:
            raise InvalidRequest(problems[0]["message"], problems)
        # A folder inside the roots of a repository whose top level is not: the same answer.
        roots_in = await asyncio.to_thread(self._outside_roots, [i.root for i in infos], allowed)
        if roots_in is not None:
            raise self._outside_error(paths[roots_in], field.format(roots_in))
        roots = [i.root for i in infos]
        if len(set(roots)) != len(roots):
            raise InvalidRequest(
                "the same repository is given twice",
                [{"field": "repositories", "message": "each repository may appear once"}],
            )
        resolved = []
        for index, (req, info) in enumerate(zip(requests, infos, strict=True)):
            base = req.base_branch or info.current_branch
            where = "base_branch" if len(requests) == 1 else f"repositories.{index}.base_branch"
            if base is None:
                raise InvalidRequest(
                    f"{info.root} is on a detached HEAD; give base_branch",
                    [{"field": where, "message": "required on a detached HEAD"}],
                )
            given = req.base_branch is not None and req.base_branch != info.current_branch
            if given and not await worktrees.ref_exists(info.root, base, timeout=timeout):
                raise InvalidRequest(
                    f"base_branch '{base}' does not exist in {info.root}",
                    [{"field": where, "message": "no such branch or commit"}],
                )
            resolved.append((req, info, base))
        return resolved

    @staticmethod
    def _outside_roots(paths: list[str], allowed: list[Path]) -> int | None:
        """The index of the first absolute path outside ``allowed`` (blocking: it resolves
        links). A relative path is left to the repository check, which refuses it unread."""
        for index, path in enumerate(paths):
            if Path(path).expanduser().is_absolute() and not within(path, allowed):
                return index
        return None

    @staticmethod
    def _outside_error(path: str, field: str) -> Forbidden:
        return Forbidden(
            f"{path} is outside the folders this daemon may use",
            [{"field": field, "message": "outside server.allowed_roots"}],
        )

    async def _check_image_paths(self, paths: list[str]) -> None:
        allowed = resolved_roots(self.settings.server.allowed_roots)

        def missing() -> list[str]:
            # within() before is_file(): nothing outside the roots is looked at.
            return [
                p
                for p in paths
                if "\x00" in p
                or not (Path(p).is_absolute() and within(p, allowed) and Path(p).is_file())
            ]

        bad = await asyncio.to_thread(missing)
        if bad:
            raise InvalidRequest(
                "image_paths must be existing files given by absolute path (inside "
                f"server.allowed_roots when set): {bad[0]}",
                [{"field": "image_paths", "message": f"not a file: {p}"} for p in bad],
            )

    def _reserve_name(self, name: str) -> None:
        if name in self._reserved_names or any(r.name == name for r in self.records.values()):
            raise Conflict(f"a session named '{name}' already exists")
        self._reserved_names.add(name)

    async def _name_conflict(
        self, name: str, resolved: Iterable[tuple[RepositoryRequest, worktrees.RepoInfo, str]]
    ) -> str | None:
        if await asyncio.to_thread((self.worktrees_dir / name).exists):
            return f"the worktree folder for '{name}' already exists"
        for _, info, _ in resolved:
            if await worktrees.branch_exists(
                info.root, BRANCH_PREFIX + name, timeout=self.settings.sessions.git_timeout
            ):
                return f"branch '{BRANCH_PREFIX}{name}' already exists in {info.root}"
        return None

    async def _check_name_free(self, name: str, resolved: Any) -> None:
        reason = await self._name_conflict(name, resolved)
        if reason:
            raise Conflict(f"{reason}; choose another name")

    async def _generate_free_name(self, resolved: Any) -> str:
        for _ in range(50):
            name = generate_name()
            try:
                self._reserve_name(name)
            except Conflict:
                continue
            if await self._name_conflict(name, resolved) is None:
                return name
            self._reserved_names.discard(name)
        raise Conflict("could not find a free session name; give one")

    async def _run_create(self, record: SessionRecord, op_id: int) -> None:
        op = _Operation(self, record, op_id, total=4)
        log_ = log.bind(session_id=record.id)
        made_worktrees: list[Repository] = []
        try:
            await op.step("worktrees", "Creating worktrees")
            made_worktrees = await self._ensure_worktrees(record, new_session=True)
            await op.step("home", "Preparing the agent home")
            await self._prepare_home(record, attach=True)
            await self._launch(record, op, new_session=True)
            await self.store.end_operation(op_id, "done")
        except Exception as exc:
            error = api_error(exc)
            log_.warning("create_failed", error=error.message, details=error.details)
            await self._undo_create(record, made_worktrees)
            self._busy.discard(record.id)
            await self._fail(record, op_id, error.message)
        else:
            # Free the session before it shows as running, so a client that sees
            # "running" can act on it at once.
            self._busy.discard(record.id)
            await self._mark_running(record)
            log_.info("session_created", name=record.name)
        finally:
            self._busy.discard(record.id)

    async def _undo_create(self, record: SessionRecord, made: list[Repository]) -> None:
        """Remove what a failed create made; the branch stays, as branches always do."""
        with contextlib.suppress(Exception):
            await self._remove_containers(record)
        for repo in made:
            try:
                await self._remove_worktree(repo)
            except worktrees.GitError as exc:
                log.warning("undo_worktree_failed", session_id=record.id, error=exc.message)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(lambda: (self.worktrees_dir / record.name).rmdir())

    async def _fail(self, record: SessionRecord, op_id: int | None, message: str) -> None:
        record.status = SessionStatus.FAILED
        record.error_message = message
        record.progress = None
        await self.save(record, "status", "error_message", "progress", "container_id")
        if op_id is not None:
            await self.store.end_operation(op_id, "failed", message)
        await self.publish_status(record)

    # the container

    def _runner(self, record: SessionRecord) -> AgentRunner | None:
        if not self.settings.sessions.start_agent:
            return None
        return self.runners[record.agent]

    def agent_working_dir(self, record: SessionRecord) -> str:
        if record.backend == "local":
            return str(Path(record.primary.worktree_path) / record.primary.subdir)
        subdir = record.primary.subdir
        return f"{CONTAINER_WORKSPACE}/{subdir}" if subdir else CONTAINER_WORKSPACE

    async def _prepare_home(self, record: SessionRecord, *, attach: bool = False) -> None:
        """Seed the agent home; with ``attach`` (a new session only) copy the attached files.

        The files are read from the user's disk once, right after their paths were checked:
        one may live where a container writes (an upload in a worktree), and a later
        re-copy could find it swapped for a link to a host secret.
        """
        home = self.agent_home(record.id)
        # The home is the container's $HOME: made here, then written only through homefs.
        await asyncio.to_thread(homefs.make_home, home)
        runner = self._runner(record)
        if runner is not None:
            await asyncio.to_thread(
                runner.prepare_home, home, record, self.agent_working_dir(record)
            )
            if attach:
                await asyncio.to_thread(copy_attachments, home, record.image_paths)

    def _spec(self, record: SessionRecord) -> ContainerSpec:
        mounts: list[Mount] = []
        git_repos: list[GitWorktree] = []
        for repo in record.repositories:
            target = CONTAINER_WORKSPACE if repo.is_primary else f"/repos/{repo.mount_name}"
            mounts.append(Mount(repo.worktree_path, target))
            git_repos.append(GitWorktree(repo.path, repo.worktree_path, target))
        # The main .git read-only, but where this session's work lands (daemon/core/git_mounts.py).
        mounts += git_mounts(git_repos)
        mounts.append(Mount(str(self.agent_home(record.id)), CONTAINER_HOME))
        subdir = record.primary.subdir
        docker = self.settings.docker
        user = None
        if self.settings.sessions.run_as_host_user:
            user = f"{os.getuid()}:{os.getgid()}"
        env = {"HOME": CONTAINER_HOME, "CORRAL_SESSION_ID": record.id, "TERM": "xterm-256color"}
        command = None
        runner = self._runner(record)
        if runner is not None:
            # The local backend runs the agent on the host, in the home itself.
            home = str(self.agent_home(record.id)) if record.backend == "local" else CONTAINER_HOME
            launch = runner.launch(record, self.agent_working_dir(record), home)
            command = launch.command
            env.update(launch.env)
        return ContainerSpec(
            session_id=record.id,
            session_name=record.name,
            image=record.image or docker.default_image,
            working_dir=f"{CONTAINER_WORKSPACE}/{subdir}" if subdir else CONTAINER_WORKSPACE,
            mounts=tuple(mounts),
            env=env,
            command=command,
            user=user,
            cpu_limit=docker.cpu_limit or None,
            memory_limit=docker.memory_limit_mb * 1024 * 1024 or None,
            pids_limit=docker.pids_limit or None,
            network_mode=docker.network_mode,
            allow_host_network=docker.allow_host_network,
            daemon_instance=str(self.settings.data_dir),
        )

    async def _launch(
        self, record: SessionRecord, op: _Operation, *, new_session: bool = False
    ) -> None:
        backend = self.backend_for(record)
        await op.step("container", "Creating the container")
        if not new_session:  # a new session has no container to sweep, its home is ready
            await self._remove_containers(record)
            await self._prepare_home(record)
        # In a thread: the git mounts read and create folders in the repositories.
        info = await backend.create(await asyncio.to_thread(self._spec, record))
        record.container_id = info.id
        await self.save(record, "container_id")
        await op.step("start", "Starting the container")
        await backend.start(info.id)

    async def _mark_running(self, record: SessionRecord) -> None:
        record.status = SessionStatus.RUNNING
        record.progress = None
        record.error_message = None
        await self.save(record, "status", "progress", "error_message")
        await self._attach_console(record)
        await self.publish_status(record)

    async def _attach_console(self, record: SessionRecord, *, replay_log: bool = False) -> None:
        """Attach the daemon to the session's terminal; a failure only costs the console."""
        if record.container_id is None:
            return
        try:
            await self.consoles.attach(
                record.id, self.backend_for(record), record.container_id, replay_log=replay_log
            )
        except BackendError as exc:
            log.warning("console_attach_failed", session_id=record.id, error=exc.message)

    async def _agent_exited(self, session_id: str, exit_code: int | None) -> None:
        """The terminal ended: the agent's process (the container's main one) is gone."""
        record = self.records.get(session_id)
        if record is None or record.status is not SessionStatus.RUNNING or record.id in self._busy:
            return
        record.status = SessionStatus.STOPPED
        await self.save(record, "status")
        await self.publish_status(record)

    async def _remove_containers(self, record: SessionRecord) -> None:
        """Remove every container of this session, by label, so none is ever lost track of."""
        backend = self.backend_for(record)
        await self.consoles.detach(record.id)
        ids = {c.id for c in await backend.list_managed() if c.session_id == record.id}
        if record.container_id:
            ids.add(record.container_id)
        for container_id in ids:
            await backend.remove(container_id)
        record.container_id = None

    async def _ensure_worktrees(
        self, record: SessionRecord, *, new_session: bool = False
    ) -> list[Repository]:
        """Add each worktree that is not on disk; an existing branch is attached, not reset."""
        made = []
        for repo in record.repositories:
            present = await asyncio.to_thread(Path(repo.worktree_path).is_dir)
            if present:
                continue
            await worktrees.add_worktree(
                repo.path,
                repo.worktree_path,
                repo.branch_name,
                repo.base_branch,
                timeout=self.settings.sessions.git_timeout,
                new_branch=new_session,
            )
            made.append(repo)
        return made

    # observation and health

    async def observe(self, record: SessionRecord) -> Observation:
        container = None
        if record.container_id:
            container = await self.backend_for(record).inspect(record.container_id)

        def missing() -> list[str]:
            return [r.mount_name for r in record.repositories if not Path(r.worktree_path).is_dir()]

        return Observation(container, await asyncio.to_thread(missing))

    async def health(self, record: SessionRecord) -> HealthReport:
        seen = None
        needs_engine = not record.archived and record.status in (
            SessionStatus.RUNNING,
            SessionStatus.STOPPED,
            SessionStatus.FAILED,
        )
        if needs_engine:
            seen = await self.observe(record)
        return await self.settle(record, seen)

    @staticmethod
    def _observation_key(record: SessionRecord) -> tuple[object, ...]:
        return (record.status, record.archived, record.container_id)

    def current_health(self, record: SessionRecord) -> Health:
        """The last observed health while it still applies, else the stored status's."""
        observed = self._observed.get(record.id)
        if observed is not None and observed[0] == self._observation_key(record):
            return observed[1]
        return stored_health(record)

    def is_busy(self, session_id: str) -> bool:
        """Whether an operation is under way on the session."""
        return session_id in self._busy

    async def settle(self, record: SessionRecord, seen: Observation | None) -> HealthReport:
        """Report what was observed; bring the stored status in line and publish a change."""
        health_report = report(record, seen, self.recovery.get(record.id))
        before = self.current_health(record)
        changed = await self._sync_status(record, seen)
        if seen is not None:
            self._observed[record.id] = (self._observation_key(record), health_report.health)
        if changed or self.current_health(record) is not before:
            self.version += 1
            await self.publish_status(record)
        return health_report

    async def health_or_stored(self, record: SessionRecord) -> HealthReport:
        """The live report, or the stored one with the reason when the engine is away."""
        try:
            return await self.health(record)
        except BackendUnavailable as exc:
            stored = report(record, None, self.recovery.get(record.id))
            stored.details.update(backend_available=False, backend_error=exc.message)
            stored.available_actions = []
            stored.recommended_action = None
            stored.data_preservation = {}
            return stored

    async def _sync_status(self, record: SessionRecord, seen: Observation | None) -> bool:
        """Bring the stored status in line with an observed container; True if it changed."""
        if seen is None or record.status not in (SessionStatus.RUNNING, SessionStatus.STOPPED):
            return False
        running = seen.container is not None and seen.container.running
        status = SessionStatus.RUNNING if running else SessionStatus.STOPPED
        if status is record.status:
            return False
        record.status = status
        await self.save(record, "status")
        return True

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
            if self.on_action is not None:
                await self.on_action(record, action)
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

    # actions

    async def start(self, session_id: str) -> SessionRecord:
        async def body(record: SessionRecord, op: _Operation) -> None:
            if record.container_id is None:  # a local session after a daemon restart
                await self._ensure_worktrees(record)
                await self._launch(record, op)
            else:
                await op.step("start", "Starting the container")
                await self.backend_for(record).start(record.container_id)
            await self._mark_running(record)

        record = self.get(session_id)
        await self._run_action(record, Action.START, body, total=2)
        return record

    async def archive(self, session_id: str) -> SessionRecord:
        async def body(record: SessionRecord, op: _Operation) -> None:
            await op.step("remove_container", "Removing the container")
            await self._remove_containers(record)
            record.archived = True
            record.archived_at = utcnow()
            record.status = SessionStatus.STOPPED
            record.progress = None
            await self.save(record, "archived", "archived_at", "status", "progress", "container_id")
            await self.publish_status(record)

        record = self.get(session_id)
        await self._run_action(record, Action.ARCHIVE, body, total=1)
        return record

    async def unarchive(self, session_id: str) -> SessionRecord:
        async def body(record: SessionRecord, op: _Operation) -> None:
            await op.step("worktrees", "Checking the worktrees")
            await self._ensure_worktrees(record)
            record.archived = False
            record.archived_at = None
            await self.save(record, "archived", "archived_at")
            await self._launch(record, op)
            await self._mark_running(record)

        record = self.get(session_id)
        await self._run_action(record, Action.UNARCHIVE, body, total=3)
        return record

    async def recreate(self, session_id: str, *, fresh: bool = False) -> SessionRecord:
        async def body(record: SessionRecord, op: _Operation) -> None:
            await op.step("remove_container", "Removing the old container")
            await self._remove_containers(record)
            await self.save(record, "container_id")
            if fresh:
                await op.step("fresh_worktrees", "Making fresh worktrees from the base branch")
                await self._fresh_worktrees(record)
            else:
                await op.step("worktrees", "Checking the worktrees")
                await self._ensure_worktrees(record)
            await self._launch(record, op)
            await self._mark_running(record)

        record = self.get(session_id)
        action = Action.RECREATE_FRESH if fresh else Action.RECREATE
        await self._run_action(record, action, body, total=4)
        return record

    async def refresh(self, session_id: str) -> SessionRecord:
        async def body(record: SessionRecord, op: _Operation) -> None:
            await op.step("image", f"Refreshing image {record.image}")
            await self.backend_for(record).refresh_image(record.image or "")
            await op.step("remove_container", "Removing the old container")
            await self._remove_containers(record)
            await self.save(record, "container_id")
            await self._ensure_worktrees(record)
            await self._launch(record, op)
            await self._mark_running(record)

        record = self.get(session_id)
        await self._run_action(record, Action.REFRESH, body, total=4)
        return record

    async def _fresh_worktrees(self, record: SessionRecord) -> None:
        timeout = self.settings.sessions.git_timeout
        for repo in record.repositories:
            await worktrees.remove_worktree(repo.path, repo.worktree_path, timeout=timeout)
            kept = await worktrees.archive_branch(repo.path, repo.branch_name, timeout=timeout)
            if kept:
                log.info("previous_commits_kept", session_id=record.id, branch=kept, repo=repo.path)
            else:
                await worktrees.reset_branch(
                    repo.path, repo.branch_name, repo.base_branch, timeout=timeout
                )
            await worktrees.add_worktree(
                repo.path, repo.worktree_path, repo.branch_name, repo.base_branch, timeout=timeout
            )

    async def update_metadata(self, session_id: str, update: MetadataUpdate) -> SessionRecord:
        record = self.get(session_id)
        changed = update.model_dump(exclude_unset=True, exclude_none=True)
        new_name = changed.get("name")
        if new_name not in (None, record.name) and any(
            r.name == new_name for r in self.records.values()
        ):
            raise Conflict(f"a session named '{new_name}' already exists")
        for key, value in changed.items():
            setattr(record, key, value)
        if changed:
            await self.save(record, *changed)
            await self.hub.publish("session_updated", record.id, session=self._json(record))
        return record

    # chat

    async def send_message(self, session_id: str, content: str) -> None:
        """Type the message into the agent's terminal as a person would: paste, then Enter."""
        record = self.get(session_id)
        if not content.strip():
            raise InvalidRequest(
                "content must not be empty", [{"field": "content", "message": "empty"}]
            )
        if record.archived or record.status is not SessionStatus.RUNNING:
            raise Conflict(f"the session is not running ({record.status.value})")
        attachment = self.consoles.get(record.id)
        if attachment is None:
            raise Conflict("the session's terminal is not attached")
        try:
            await attachment.write(PASTE_START + content.encode() + PASTE_END)
            # A TUI that sees Enter in the same read as the paste may take it as pasted text.
            await asyncio.sleep(PASTE_SETTLE_SECONDS)
            await attachment.write(b"\r")
        except BackendError as exc:
            raise Conflict(f"the message could not be delivered: {exc.message}") from exc
        log.info("message_sent", session_id=record.id, chars=len(content))

    async def chat_events(self, session_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        self.get(session_id)
        return await self.store.events_after(session_id, after, limit, CHAT_EVENT_TYPES)

    async def chat_history(self, record: SessionRecord) -> list[dict[str, Any]]:
        limit = self.settings.events.chat_history_limit
        if limit == 0:
            return []
        return await self.store.events_tail(record.id, limit, CHAT_EVENT_TYPES)

    # delete and cleanup

    async def unsaved_work(self, record: SessionRecord) -> list[dict[str, Any]]:
        found = []
        for repo in record.repositories:
            work = await worktrees.unsaved_work(
                repo.worktree_path,
                repo.branch_name,
                repo_root=repo.path,
                timeout=self.settings.sessions.git_timeout,
            )
            if work.any:
                found.append(
                    {
                        "mount_name": repo.mount_name,
                        "worktree_path": repo.worktree_path,
                        "uncommitted": work.uncommitted[:50],
                        "unique_commits": work.unique_commits,
                    }
                )
        return found

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
                    work = await self.unsaved_work(record)
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
            await op.step("remove_container", "Removing the container")
            if record.container_id or not record.archived:
                await self._remove_containers(record)
            await op.step("remove_worktrees", "Removing the worktrees (branches are kept)")
            for repo in record.repositories:
                await self._remove_worktree(repo)
            await asyncio.to_thread(self._remove_session_files, record)
            await op.step("forget", "Removing the record")
            await self.hub.publish("session_deleted", record.id)
            await self.store.delete_session(record.id)
            await self.store.end_operation(op_id, "done")
            self.records.pop(record.id, None)
            self._observed.pop(record.id, None)
            self.recovery.pop(record.id, None)
            self.hub.forget(record.id)
            self.version += 1
            log.info("session_deleted", session_id=record.id)
        except Exception as exc:
            error = api_error(exc)
            log.warning("delete_failed", session_id=record.id, error=error.message)
            await self._fail(record, op_id, f"delete failed: {error.message}")
        finally:
            self._busy.discard(record.id)

    async def _remove_worktree(self, repo: Repository) -> None:
        """Remove one worktree; if its repository is gone, remove our folder by hand."""
        if await asyncio.to_thread(Path(repo.path).is_dir):
            await worktrees.remove_worktree(
                repo.path, repo.worktree_path, timeout=self.settings.sessions.git_timeout
            )
            return
        folder = Path(repo.worktree_path)
        if folder.is_relative_to(self.worktrees_dir):
            log.warning("repository_gone", repo=repo.path, worktree=repo.worktree_path)
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    def _remove_session_files(self, record: SessionRecord) -> None:
        shutil.rmtree(self.session_dir(record.id), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.worktrees_dir / record.name).rmdir()
