"""What each lifecycle action does: the steps of create, start, archive, unarchive, recreate,
refresh and delete, with the worktrees, containers and terminals they touch.

The manager (daemon/core/manager.py) guards, journals and runs these; each step is
announced through ``op.step`` before its side effects, so a daemon killed part way leaves
a journal that says where it stopped. Paths and the container spec come from the Spawner.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import structlog

from backends.base import Backend, BackendError, ImageNotFound
from daemon.core import worktrees
from daemon.core.console import Consoles
from daemon.core.image_build import ImageBuilder
from daemon.core.models import Repository, SessionStatus
from daemon.core.session import SessionRecord, utcnow
from daemon.core.spawn import Spawner
from daemon.settings import Settings

log = structlog.get_logger(__name__)

REATTACH_CONCURRENCY = 16  # terminals reattached at once after a restart


class Steps(Protocol):
    """A journaled operation's progress (the manager's Operation)."""

    async def step(self, journal_step: str, message: str) -> None: ...

    async def note(self, journal_step: str, message: str) -> None: ...


class Core(Protocol):
    """What the actions need of the session core: records' writes and their publishing."""

    settings: Settings
    spawner: Spawner
    consoles: Consoles
    images: ImageBuilder

    def backend_for(self, record: SessionRecord) -> Backend: ...

    async def save(self, record: SessionRecord, *fields: str) -> None: ...

    async def publish_status(self, record: SessionRecord) -> None: ...


class Lifecycle:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.spawner = core.spawner

    @property
    def _git_timeout(self) -> float:
        return self.core.settings.sessions.git_timeout

    # the actions a client asks for (each runs under the manager's guard and journal)

    async def start(self, record: SessionRecord, op: Steps) -> None:
        if record.container_id is None:  # a local session after a daemon restart
            await self.ensure_worktrees(record)
            await self.launch(record, op)
        else:
            await op.step("start", "Starting the container")
            await self.core.backend_for(record).start(record.container_id)
        await self.mark_running(record)

    async def archive(self, record: SessionRecord, op: Steps) -> None:
        await op.step("remove_container", "Removing the container")
        await self.remove_containers(record)
        await self.spawner.revoke_access(record.id)
        record.archived = True
        record.archived_at = utcnow()
        record.status = SessionStatus.STOPPED
        record.progress = None
        await self.core.save(
            record, "archived", "archived_at", "status", "progress", "container_id"
        )
        await self.core.publish_status(record)

    async def unarchive(self, record: SessionRecord, op: Steps) -> None:
        await op.step("worktrees", "Checking the worktrees")
        await self.ensure_worktrees(record)
        record.archived = False
        record.archived_at = None
        await self.core.save(record, "archived", "archived_at")
        await self.launch(record, op)
        await self.mark_running(record)

    async def recreate(self, record: SessionRecord, op: Steps, *, fresh: bool = False) -> None:
        await op.step("remove_container", "Removing the old container")
        await self.remove_containers(record)
        await self.core.save(record, "container_id")
        if fresh:
            await op.step("fresh_worktrees", "Making fresh worktrees from the base branch")
            await self.fresh_worktrees(record)
        else:
            await op.step("worktrees", "Checking the worktrees")
            await self.ensure_worktrees(record)
        await self.launch(record, op)
        await self.mark_running(record)

    async def refresh(self, record: SessionRecord, op: Steps) -> None:
        await op.step("image", f"Refreshing image {record.image}")
        await self.core.backend_for(record).refresh_image(record.image or "")
        await op.step("remove_container", "Removing the old container")
        await self.remove_containers(record)
        await self.core.save(record, "container_id")
        await self.ensure_worktrees(record)
        await self.launch(record, op)
        await self.mark_running(record)

    # create

    async def build(self, record: SessionRecord, op: Steps, made: list[Repository]) -> None:
        """A new session's worktrees, home and container; ``made`` gets each worktree
        added, for ``undo_create`` should a later step fail."""
        await op.step("worktrees", "Creating worktrees")
        made += await self.ensure_worktrees(record, new_session=True)
        await op.step("home", "Preparing the agent home")
        await self.spawner.make_home(record)
        await self.launch(record, op, new_session=True)

    async def undo_create(self, record: SessionRecord, made: list[Repository]) -> None:
        """Remove what a failed create made; the branch stays, as branches always do."""
        with contextlib.suppress(Exception):
            await self.remove_containers(record)
        for repo in made:
            try:
                await self.remove_worktree(repo)
            except worktrees.GitError as exc:
                log.warning("undo_worktree_failed", session_id=record.id, error=exc.message)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(lambda: (self.spawner.worktrees_dir / record.name).rmdir())

    # the container and its terminal

    async def launch(self, record: SessionRecord, op: Steps, *, new_session: bool = False) -> None:
        backend = self.core.backend_for(record)
        await op.step("container", "Creating the container")
        if not new_session:  # a new session has no container to sweep
            await self.remove_containers(record)
        access = await self.spawner.plan_access(record)
        await self.spawner.prepare_home(record, access)
        # In a thread: the git mounts read and create folders in the repositories.
        spec = await asyncio.to_thread(self.spawner.spec, record, access)
        try:
            info = await backend.create(spec)
        except ImageNotFound:
            # Wait while the default image is built on first use; any other missing image
            # fails with the command that makes it.
            await self.core.images.provide(spec.image, partial(op.note, "image"))
            info = await backend.create(spec)
        record.container_id = info.id
        await self.core.save(record, "container_id")
        await op.step("start", "Starting the container")
        await backend.start(info.id)

    async def mark_running(self, record: SessionRecord) -> None:
        record.status = SessionStatus.RUNNING
        record.progress = None
        record.error_message = None
        await self.core.save(record, "status", "progress", "error_message")
        await self.attach_console(record)
        await self.core.publish_status(record)

    async def attach_console(self, record: SessionRecord, *, replay_log: bool = False) -> None:
        """Attach the daemon to the session's terminal; a failure only costs the console."""
        if record.container_id is None:
            return
        try:
            await self.core.consoles.attach(
                record.id, self.core.backend_for(record), record.container_id, replay_log=replay_log
            )
        except BackendError as exc:
            log.warning("console_attach_failed", session_id=record.id, error=exc.message)

    async def reattach(self, records: list[SessionRecord]) -> None:
        """After a restart: rebuild each running session's screen from its log and attach.

        Several at a time: each is two engine round trips (log tail, attach) that mostly
        wait, and with a hundred sessions one after another the last terminal would stay
        dark for seconds. Bounded, so the engine is not handed a hundred requests at once.
        """
        started = time.monotonic()
        gate = asyncio.Semaphore(REATTACH_CONCURRENCY)

        async def one(record: SessionRecord) -> None:
            async with gate:
                await self.attach_console(record, replay_log=True)

        await asyncio.gather(*(one(record) for record in records))
        attached = sum(1 for record in records if self.core.consoles.get(record.id) is not None)
        log.info(
            "consoles_reattached",
            count=attached,
            sessions=len(records),
            seconds=round(time.monotonic() - started, 3),
        )

    async def remove_containers(self, record: SessionRecord) -> None:
        """Remove every container of this session, by label, so none is ever lost track of."""
        backend = self.core.backend_for(record)
        await self.core.consoles.detach(record.id)
        ids = {c.id for c in await backend.list_managed() if c.session_id == record.id}
        if record.container_id:
            ids.add(record.container_id)
        for container_id in ids:
            await backend.remove(container_id)
        record.container_id = None

    # worktrees

    async def ensure_worktrees(
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
                timeout=self._git_timeout,
                new_branch=new_session,
            )
            made.append(repo)
        return made

    async def fresh_worktrees(self, record: SessionRecord) -> None:
        timeout = self._git_timeout
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

    # delete

    async def unsaved_work(self, record: SessionRecord) -> list[dict[str, Any]]:
        found = []
        for repo in record.repositories:
            work = await worktrees.unsaved_work(
                repo.worktree_path,
                repo.branch_name,
                repo_root=repo.path,
                timeout=self._git_timeout,
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

    async def remove(self, record: SessionRecord, op: Steps) -> None:
        """Delete's side effects: the containers, the worktrees (branches are kept), the
        session's files. The record itself is the manager's to forget."""
        await op.step("remove_container", "Removing the container")
        if record.container_id or not record.archived:
            await self.remove_containers(record)
        await self.spawner.revoke_access(record.id)
        await op.step("remove_worktrees", "Removing the worktrees (branches are kept)")
        for repo in record.repositories:
            await self.remove_worktree(repo)
        await asyncio.to_thread(self._remove_session_files, record)

    async def remove_worktree(self, repo: Repository) -> None:
        """Remove one worktree; if its repository is gone, remove our folder by hand."""
        if await asyncio.to_thread(Path(repo.path).is_dir):
            await worktrees.remove_worktree(
                repo.path, repo.worktree_path, timeout=self._git_timeout
            )
            return
        folder = Path(repo.worktree_path)
        if folder.is_relative_to(self.spawner.worktrees_dir):
            log.warning("repository_gone", repo=repo.path, worktree=repo.worktree_path)
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    def _remove_session_files(self, record: SessionRecord) -> None:
        shutil.rmtree(self.spawner.session_dir(record.id), ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.spawner.worktrees_dir / record.name).rmdir()
