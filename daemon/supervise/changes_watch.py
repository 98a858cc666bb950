"""Publishes ``session_changes`` (a running session's diff totals and branch heads) when
they change, so that no client polls for them.

Two things say a session may have changed: the agent's own hook events as the agent
watcher publishes them (its state changing, a tool's result: a turn or a tool may have
written files), and its branch moving (a commit, a reset, a merge). The branch is watched
cheaply: a ``stat`` (never a read, never a follow of the last component) of the files a
commit rewrites (the branch's ref, ``packed-refs``, the worktree's ``HEAD`` and index) a
few times a second, and ``git rev-parse`` of each branch every ``check_seconds`` for what
stat cannot see. Only then is the diff recomputed, at most once per ``debounce_seconds``
per session, and an event published only when the totals or heads differ from the last
ones sent. Sessions found at start-up are read silently first (a restart publishes
nothing that did not change), and so is a new session's first look while it has no work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from daemon.core import changes
from daemon.core.changes_models import ChangesTotals, DiffTotals
from daemon.core.errors import ApiError
from daemon.core.git import GitDirs, GitError
from daemon.core.gitdirs import locate_worktree
from daemon.core.hub import Event, EventHub
from daemon.core.models import Repository, SessionStatus
from daemon.core.session import SessionRecord
from daemon.core.tasks import WATCH, TaskSupervisor, cancel_and_wait
from daemon.settings import Settings

log = structlog.get_logger(__name__)

EVENT = "session_changes"
POLL_SECONDS = 0.25
CHECK_SECONDS = 2.0
DEBOUNCE_SECONDS = 0.3
# What the agent watcher publishes after a hook or a tool: the agent may have written files.
_TRIGGERS = frozenset({"session_status", "tool_result"})


class Sessions(Protocol):
    """What the changes watcher needs of the session manager."""

    @property
    def settings(self) -> Settings: ...
    @property
    def records(self) -> dict[str, SessionRecord]: ...


@dataclass
class _State:
    last: ChangesTotals | None = None
    stamp: tuple[object, ...] = ()
    heads: dict[str, str | None] = field(default_factory=dict)
    dirty: bool = False
    computed_at: float = 0.0
    dirs: dict[str, GitDirs] = field(default_factory=dict)


def _stamp_of(paths: list[str]) -> tuple[object, ...]:
    """What a commit changes about these files, without reading them."""
    found: list[object] = []
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            found.append(None)
        else:
            found.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(found)


class ChangesWatcher:
    """One task of the ``watch`` group; publishes ``session_changes`` on the hub."""

    def __init__(
        self,
        manager: Sessions,
        *,
        hub: EventHub,
        tasks: TaskSupervisor,
        poll_seconds: float = POLL_SECONDS,
        check_seconds: float = CHECK_SECONDS,
        debounce_seconds: float = DEBOUNCE_SECONDS,
    ) -> None:
        self.manager = manager
        self.hub = hub
        self.tasks = tasks
        self.poll_seconds = poll_seconds
        self.check_seconds = check_seconds
        self.debounce_seconds = debounce_seconds
        self._states: dict[str, _State] = {}
        self._task: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None

    def start(self) -> None:
        self._unlisten = self.hub.listen(self._heard)
        self._task = self.tasks.spawn(self._run(), name="changes-watch", group=WATCH)

    async def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        await cancel_and_wait(self._task)

    def _heard(self, event: Event) -> None:
        # A listener of the hub: never blocks, only marks the session.
        if event.get("type") in _TRIGGERS:
            state = self._states.get(event["session_id"])
            if state is not None:
                state.dirty = True

    def _running(self) -> list[SessionRecord]:
        return [r for r in self.manager.records.values() if r.status is SessionStatus.RUNNING]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        for record in self._running():
            self._states[record.id] = _State()
            await self._guarded(record, publish=False)
        last_check = loop.time()
        while True:
            await asyncio.sleep(self.poll_seconds)
            check = loop.time() - last_check >= self.check_seconds
            if check:
                last_check = loop.time()
            await self.poll_all(check_heads=check)

    async def poll_all(self, *, check_heads: bool = False) -> None:
        running = self._running()
        for gone in self._states.keys() - {r.id for r in running}:
            self._states.pop(gone)
        for record in running:
            if record.id not in self._states:
                # New since start-up: its first totals are news.
                self._states[record.id] = _State(dirty=True)
        # One worker-thread hop for every session's stat calls.
        watched = {r.id: self._watched_files(r, self._states[r.id]) for r in running}
        stamps = await asyncio.to_thread(lambda: {k: _stamp_of(v) for k, v in watched.items()})
        for record in running:
            state = self._states[record.id]
            await self._look(record, state, stamps[record.id], check_heads)
            now = asyncio.get_running_loop().time()
            if state.dirty and now - state.computed_at >= self.debounce_seconds:
                await self._guarded(record, publish=True)

    async def _look(
        self, record: SessionRecord, state: _State, stamp: tuple[object, ...], check_heads: bool
    ) -> None:
        """Mark the session dirty when its branch or index looks changed."""
        if stamp != state.stamp:
            state.stamp = stamp
            state.dirty = True
        if check_heads:
            timeout = self.manager.settings.sessions.git_timeout
            for repo in record.repositories:
                head = await changes.heads(repo, timeout, state.dirs.get(repo.mount_name))
                if state.heads.get(repo.mount_name) != head:
                    state.heads[repo.mount_name] = head
                    state.dirty = True

    def _watched_files(self, record: SessionRecord, state: _State) -> list[str]:
        files: list[str] = []
        for repo in record.repositories:
            dirs = state.dirs.get(repo.mount_name)
            if dirs is None:
                continue
            common = Path(dirs.common_dir or dirs.git_dir)
            files += [
                str(common / "refs" / "heads" / repo.branch_name),
                str(common / "packed-refs"),
                str(Path(dirs.git_dir) / "HEAD"),
                str(Path(dirs.git_dir) / "index"),
            ]
        return files

    async def _guarded(self, record: SessionRecord, *, publish: bool) -> None:
        try:
            await self._compute(record, publish=publish)
        except (ApiError, GitError) as exc:
            # A branch gone or a worktree broken: health says so; try again on the next sign.
            log.info("changes_unreadable", session_id=record.id, error=str(exc))
        except Exception:
            log.exception("changes_watch_failed", session_id=record.id)

    async def _locate(self, repo: Repository, state: _State) -> None:
        if repo.mount_name not in state.dirs:
            with contextlib.suppress(GitError):
                state.dirs[repo.mount_name] = await locate_worktree(repo.worktree_path, repo.path)

    async def _compute(self, record: SessionRecord, *, publish: bool) -> None:
        state = self._states.get(record.id)
        if state is None:
            return
        state.dirty = False
        state.computed_at = asyncio.get_running_loop().time()
        settings = self.manager.settings
        limits = changes.DiffLimits(
            max_patch_bytes=settings.changes.max_patch_bytes,
            max_total_patch_bytes=settings.changes.max_total_patch_bytes,
            big_file_bytes=settings.changes.big_file_bytes,
            timeout=settings.sessions.git_timeout,
        )
        totals = DiffTotals()
        heads: dict[str, str] = {}
        for repo in record.repositories:
            await self._locate(repo, state)
            view = await changes.diff_view(repo, "all", limits)
            heads[repo.mount_name] = view.head_commit
            state.heads[repo.mount_name] = view.head_commit
            part = view.totals
            totals = DiffTotals(
                files=totals.files + part.files,
                additions=totals.additions + part.additions,
                deletions=totals.deletions + part.deletions,
            )
        found = ChangesTotals(totals=totals, heads=heads)
        if found == state.last:
            return
        first, state.last = state.last is None, found
        # A new session's empty first look is no news (its work, when it comes, is).
        if publish and not (first and totals.files == 0):
            await self.hub.publish(EVENT, record.id, **found.model_dump(mode="json"))
            log.debug("session_changes_published", session_id=record.id, files=totals.files)
