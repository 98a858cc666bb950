"""Orphans: what this daemon made and no longer knows about.

* **Containers** labelled ``corral.daemon_instance=<data dir>`` whose session the store does
  not have, and old containers of a known session (not its current one, no operation under
  way). A container holds no work (the worktree is bind-mounted, the agent home is on the
  host), so they are removed; one that cannot be removed is reported.
* **Worktree folders** under ``<data_dir>/worktrees`` that no session owns. One is removed
  (``git worktree remove``; its branch stays, as branches always do) only when it holds no
  work: no uncommitted or untracked files and no commits on no other branch, remote or tag.
  Anything else is kept and reported: one holding work, one that is not a git worktree, one
  whose repository is gone. A folder's own ``.git`` file is a container's to write, so it
  only suggests a repository (never one in the data dir or inside a ``.git``), which must
  list the folder as its worktree; git then runs on the directories that repository names.

Both are found without racing a session being made: a create stores its record (with its
worktree paths) before it makes a container or a worktree, so the known set is taken
after the disk is read, and checked again right before each removal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Protocol

import structlog

from backends.base import Backend, BackendError, ContainerInfo
from daemon.core import worktrees
from daemon.core.models import OrphanContainer, Orphans, OrphanWorktree, SessionStatus
from daemon.core.session import SessionRecord
from daemon.settings import Settings

log = structlog.get_logger(__name__)


class Sessions(Protocol):
    """What the sweeper needs of the session manager: what it knows, and where it works."""

    @property
    def settings(self) -> Settings: ...
    @property
    def records(self) -> dict[str, SessionRecord]: ...
    @property
    def worktrees_dir(self) -> Path: ...
    def is_busy(self, session_id: str) -> bool: ...


class OrphanSweeper:
    """Finds orphans on each pass; removes those holding no work when ``remove`` is on."""

    def __init__(self, manager: Sessions, *, remove: bool) -> None:
        self.manager = manager
        self.remove = remove
        self.containers: dict[str, list[OrphanContainer]] = {}  # per backend
        self.worktrees: list[OrphanWorktree] = []
        self.removed_containers = 0
        self.removed_worktrees = 0
        self._reported: set[str] = set()  # kept orphans already logged: once, not every pass

    def report(self) -> Orphans:
        return Orphans(
            containers=[c for found in self.containers.values() for c in found],
            worktrees=list(self.worktrees),
            removed_containers=self.removed_containers,
            removed_worktrees=self.removed_worktrees,
        )

    # containers

    def _container_reason(self, container: ContainerInfo) -> str | None:
        record = self.manager.records.get(container.session_id or "")
        if record is None:
            return "no session in the store"
        if (
            container.id != record.container_id
            and not self.manager.is_busy(record.id)
            and record.status not in (SessionStatus.CREATING, SessionStatus.DELETING)
        ):
            return "an old container of the session"
        return None

    async def sweep_containers(self, backend: Backend, listed: list[ContainerInfo]) -> None:
        kept = []
        for container in listed:
            reason = self._container_reason(container)
            if reason is None:
                continue
            bound = log.bind(
                session_id=container.session_id, container_id=container.id, name=container.name
            )
            if self.remove:
                try:
                    await backend.remove(container.id)
                except BackendError as exc:
                    reason = f"{reason}; removing it failed: {exc.message}"
                else:
                    self.removed_containers += 1
                    bound.warning("orphan_container_removed", reason=reason)
                    continue
            kept.append(
                OrphanContainer(
                    id=container.id,
                    name=container.name,
                    session_id=container.session_id,
                    state=container.state.value,
                    reason=reason,
                )
            )
            if container.id not in self._reported:
                self._reported.add(container.id)
                bound.warning("orphan_container_kept", reason=reason)
        self.containers[backend.name] = kept

    # worktrees

    # Paths are compared as strings (the store keeps them so, os.scandir gives them so): a
    # pass sees every session's worktree, and a thousand pathlib objects cost more than
    # the directory reads.

    def _known_worktrees(self) -> set[str]:
        return {
            repo.worktree_path
            for record in self.manager.records.values()
            for repo in record.repositories
        }

    def _known_tops(self) -> set[str]:
        """The <worktrees>/<name> folders that hold a known session's worktrees."""
        return {path.rpartition("/")[0] for path in self._known_worktrees()}

    def _candidates(self) -> tuple[list[str], list[str]]:
        """(folders that may be worktrees: <worktrees>/<name>/<mount>, empty <name> folders)."""
        folders: list[str] = []
        empty: list[str] = []
        try:
            with os.scandir(self.manager.worktrees_dir) as entries:
                tops = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return folders, empty
        for top in tops:
            try:
                with os.scandir(top) as entries:
                    children = [e.path for e in entries]
            except OSError:
                continue
            if not children:
                empty.append(top)
            folders += children
        return folders, empty

    async def sweep_worktrees(self) -> None:
        folders, empty = await asyncio.to_thread(self._candidates)
        known = self._known_worktrees()  # after reading the disk: see the module docstring
        kept = []
        for folder in folders:
            if folder in known:
                continue
            path = Path(folder)
            found, holds_work = await self._inspect(path)
            if self.remove and not holds_work and folder not in self._known_worktrees():
                problem = await self._remove(path, found)
                if problem is None:
                    self.removed_worktrees += 1
                    log.warning("orphan_worktree_removed", path=folder, branch=found.branch)
                    continue
                found.reason = f"{found.reason}; removing it failed: {problem}"
            kept.append(found)
            if folder not in self._reported:
                self._reported.add(folder)
                log.warning(
                    "orphan_worktree_kept",
                    path=folder,
                    reason=found.reason,
                    uncommitted=found.uncommitted,
                    unique_commits=found.unique_commits,
                )
        known_tops = self._known_tops()
        for top in empty:
            if self.remove and top not in known_tops:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.rmdir, top)  # only an empty folder goes
        self.worktrees = kept

    async def _inspect(self, path: Path) -> tuple[OrphanWorktree, bool]:
        """What the folder is and whether it holds work (True when in any doubt)."""
        timeout = self.manager.settings.sessions.git_timeout
        folder = str(path)
        if await asyncio.to_thread(lambda: path.is_symlink() or not path.is_dir()):
            return OrphanWorktree(path=folder, repository=None, reason="not a folder; kept"), True
        if not await asyncio.to_thread(os.path.isfile, path / ".git"):
            listing = await asyncio.to_thread(lambda: list(path.iterdir()))
            if not listing:
                return OrphanWorktree(path=folder, repository=None, reason="empty folder"), False
            return (
                OrphanWorktree(
                    path=folder,
                    repository=None,
                    uncommitted=len(listing),
                    reason="not a git worktree; its files are kept",
                ),
                True,
            )
        # The folder's .git file is container-written: it only suggests a repository, which
        # must list the folder as its worktree; git then runs on the directories it names.
        untrusted = [str(self.manager.settings.data_dir)]
        try:
            dirs = await worktrees.locate_worktree(folder, untrusted=untrusted)
            branch = await worktrees.run_git(
                "rev-parse", "--abbrev-ref", "HEAD", cwd=folder, timeout=timeout, dirs=dirs
            )
        except worktrees.GitError as exc:
            return (
                OrphanWorktree(
                    path=folder,
                    repository=None,
                    reason=f"its repository cannot be read ({exc.message}); its files are kept",
                ),
                True,
            )
        repo = dirs.repository
        head = branch.strip()
        try:
            if head != "HEAD":
                work = await worktrees.unsaved_work(
                    folder, head, timeout, repo_root=repo, untrusted=untrusted
                )
                uncommitted, unique = len(work.uncommitted), work.unique_commits
            else:  # detached: what HEAD reaches that no branch, remote or tag does
                uncommitted = len(await worktrees.uncommitted_files(dirs, timeout))
                count = await worktrees.run_git(
                    "rev-list", "--count", "HEAD", "--not", "--branches", "--remotes", "--tags",
                    cwd=folder, timeout=timeout, dirs=dirs,
                )  # fmt: skip
                unique = int(count.strip() or 0)
        except (worktrees.GitError, ValueError) as exc:
            message = exc.message if isinstance(exc, worktrees.GitError) else str(exc)
            return (
                OrphanWorktree(
                    path=folder,
                    repository=repo,
                    reason=f"its work cannot be checked ({message}); kept",
                ),
                True,
            )
        holds_work = bool(uncommitted or unique)
        reason = (
            "no session; it holds work that is on no other branch"
            if holds_work
            else "no session; it holds no work"
        )
        found = OrphanWorktree(
            path=folder,
            repository=repo,
            branch=None if head == "HEAD" else head,
            uncommitted=uncommitted,
            unique_commits=unique,
            reason=reason,
        )
        return found, holds_work

    async def _remove(self, path: Path, found: OrphanWorktree) -> str | None:
        """Remove a folder holding no work; the reason it failed, or None."""
        try:
            if found.repository is None:
                await asyncio.to_thread(path.rmdir)  # an empty folder
            else:
                await worktrees.remove_worktree(
                    found.repository,
                    str(path),
                    timeout=self.manager.settings.sessions.git_timeout,
                )
        except worktrees.GitError as exc:
            return exc.message
        except OSError as exc:
            return str(exc)
        if str(path.parent) not in self._known_tops():
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.parent.rmdir)  # the session-name folder, once empty
        return None
