"""Session worktrees and branches: add, remove, prune, archive, reset; one repository at a time.

Every session works on its own worktree and branch. This module creates and removes those
worktrees and moves branches out of the way, never losing a commit: an existing branch is
attached as it is, a removed worktree keeps its branch, and a branch with unique commits is
archived rather than reset. git does not make concurrent worktree changes in one repository
safe, so they take turns per repository.

Host git runs only through ``daemon/core/git.py`` (the git boundary). The rest of the
session's git lives beside this module and is re-exported here, so that callers keep one
name to import: ``daemon/core/repository.py`` (resolving the repository a user names),
``daemon/core/gitdirs.py`` (finding a worktree's git directories without trusting its
``.git`` file) and ``daemon/core/unsaved.py`` (what would be lost).
"""

# Every public call takes a per-call timeout on purpose: on expiry git's whole process
# group is killed, which a caller's asyncio.timeout around the call would not do.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import weakref
from datetime import UTC, datetime
from pathlib import Path

import structlog

from daemon.core.git import DEFAULT_TIMEOUT, GitDirs, GitError, run_git
from daemon.core.gitdirs import admin_dir_of, common_dir_of, locate_worktree, read_small_file
from daemon.core.repository import (
    InvalidRepository,
    RepoInfo,
    branch_exists,
    ref_exists,
    resolve_repository,
)
from daemon.core.unsaved import UnsavedWork, uncommitted_files, unique_commits, unsaved_work

__all__ = [
    "DEFAULT_TIMEOUT",
    "GitDirs",
    "GitError",
    "InvalidRepository",
    "RepoInfo",
    "UnsavedWork",
    "add_worktree",
    "admin_dir_of",
    "archive_branch",
    "branch_exists",
    "common_dir_of",
    "locate_worktree",
    "prune",
    "ref_exists",
    "remove_worktree",
    "reset_branch",
    "resolve_repository",
    "run_git",
    "uncommitted_files",
    "unsaved_work",
    "worktree_is_registered",
]

log = structlog.get_logger(__name__)

# Filesystem checks run in a thread: a path on a hung network mount must not stall the loop.


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _absolute(path: str) -> str:
    if not Path(path).is_absolute():
        raise GitError(f"{path} is not an absolute path")
    return os.path.normpath(path)


async def _registered_worktrees(repo_root: str, timeout: float) -> list[tuple[str, str | None]]:
    """(path, branch ref or None) of every worktree the repository knows, missing ones too."""
    out = await run_git("worktree", "list", "--porcelain", cwd=repo_root, timeout=timeout)
    entries: list[tuple[str, str | None]] = []
    for line in out.splitlines():
        if line.startswith("worktree "):
            entries.append((line.removeprefix("worktree "), None))
        elif line.startswith("branch ") and entries:
            entries[-1] = (entries[-1][0], line.removeprefix("branch "))
    return entries


def _find_entry(entries: list[tuple[str, str | None]], path: str) -> tuple[str, str | None] | None:
    # git records the resolved path; compare resolved paths so a symlinked data dir matches.
    return next((e for e in entries if _same_path(e[0], path)), None)


async def _registration(repo_root: str, path: str, timeout: float) -> tuple[str, str | None] | None:
    entries = await _registered_worktrees(repo_root, timeout)
    return await asyncio.to_thread(_find_entry, entries, path)


async def worktree_is_registered(
    repo_root: str, worktree_path: str, timeout: float = DEFAULT_TIMEOUT
) -> bool:
    """Whether the repository lists ``worktree_path`` as one of its worktrees."""
    return await _registration(repo_root, worktree_path, timeout) is not None


async def _prune_unlocked(repo_root: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Forget registrations of worktrees whose folders are gone."""
    await run_git("worktree", "prune", cwd=repo_root, timeout=timeout)


async def _add_worktree_unlocked(
    repo_root: str,
    worktree_path: str,
    branch: str,
    base: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    new_branch: bool = False,
) -> None:
    """Check out ``branch`` at ``worktree_path``, creating the branch from ``base`` if new.

    An existing branch is attached as it is, never reset, so recreating a lost
    worktree keeps its commits. Already having exactly that worktree is success.
    With ``new_branch`` the caller has just checked that neither the branch nor the
    path exists, so the checks are skipped; git still refuses if that changed meanwhile.
    """
    if branch.startswith("-"):
        raise GitError(f"invalid branch name: {branch}")
    path = _absolute(worktree_path)
    if new_branch:
        await run_git("worktree", "add", "--no-track", "-b", branch, "--end-of-options", path,
                      base, cwd=repo_root, timeout=timeout)  # fmt: skip
        log.info("worktree_added", repo=repo_root, path=path, branch=branch, base=base)
        return
    entry = await _registration(repo_root, path, timeout)
    if entry is not None:
        if await asyncio.to_thread(os.path.isdir, path):
            if entry[1] == f"refs/heads/{branch}":
                # A retry after a crash that happened once git had already done the work.
                return
            raise GitError(f"{path} is already a worktree of {entry[1] or 'a detached HEAD'}")
        # Deleted by hand: git refuses to reuse a path it still has registered.
        await _prune_unlocked(repo_root, timeout)

    await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
    if await branch_exists(repo_root, branch, timeout):
        args: tuple[str, ...] = ("worktree", "add", "--end-of-options", path, branch)
    else:
        # --no-track: the session branch is new work, not a follower of its base
        # (a base like origin/main would otherwise become its upstream).
        args = ("worktree", "add", "--no-track", "-b", branch, "--end-of-options", path, base)
    await run_git(*args, cwd=repo_root, timeout=timeout)
    log.info("worktree_added", repo=repo_root, path=path, branch=branch, base=base)


def _is_disposable(path: str, repo_root: str) -> bool:
    """A leftover worktree folder we may delete: never the repository or one that holds it."""
    real = Path(path).resolve()
    root = Path(repo_root).resolve()
    if real == root or real in root.parents:
        return False
    # A real .git directory means a standalone repository, not one of our worktrees.
    return not (real / ".git").is_dir()


def _restore_dot_git(repo_root: str, path: str) -> None:
    """Point a worktree's .git file back at its admin dir if its content was changed.

    The right content comes from the repository's records; the file is replaced by a
    rename inside the worktree, so a symlink planted as ``.git`` is replaced, not followed.
    """
    admin = admin_dir_of(common_dir_of(repo_root), path)
    if admin is None:
        return
    dot_git = Path(path) / ".git"
    content = f"gitdir: {admin}\n"
    current = read_small_file(str(dot_git)) or ""
    if current.startswith("gitdir:") and _same_path(
        str(Path(path) / current.removeprefix("gitdir:").strip()), admin
    ):
        return
    temp = Path(path) / f".git.corral-{os.getpid()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as file:
            file.write(content)
        temp.replace(dot_git)
    except OSError as exc:
        # git's own refusal then says what is wrong.
        log.warning("worktree_git_file_not_restored", path=path, error=str(exc))
        with contextlib.suppress(OSError):
            temp.unlink()
        return
    log.warning("worktree_git_file_restored", path=path, admin_dir=admin)


async def _remove_worktree_unlocked(
    repo_root: str, worktree_path: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Remove the worktree and its folder, uncommitted changes included; keep the branch.

    A worktree that is already gone is success.
    """
    path = _absolute(worktree_path)
    failure: GitError | None = None
    if await worktree_is_registered(repo_root, path, timeout):
        # git refuses to remove a worktree whose .git file no longer points back at it.
        await asyncio.to_thread(_restore_dot_git, repo_root, path)
        try:
            # Twice --force: removes it even with changes or a lock. It is ours to remove;
            # the commits stay on the branch.
            await run_git(
                "worktree",
                "remove",
                "--force",
                "--force",
                "--end-of-options",
                path,
                cwd=repo_root,
                timeout=timeout,
            )
        except GitError as exc:
            failure = exc

    exists = await asyncio.to_thread(os.path.lexists, path)
    if exists and not await worktree_is_registered(repo_root, path, timeout):
        # git stopped half way, or the registration was lost: the folder is a leftover.
        if not await asyncio.to_thread(_is_disposable, path, repo_root):
            raise GitError(f"refusing to delete {path}: it is not a worktree of {repo_root}")
        try:
            await asyncio.to_thread(shutil.rmtree, path)
        except OSError as exc:
            raise GitError(f"could not delete {path}: {exc.strerror or exc}") from exc

    await _prune_unlocked(repo_root, timeout)
    if await worktree_is_registered(repo_root, path, timeout):
        raise failure or GitError(f"{path} is still a registered worktree of {repo_root}")
    log.info("worktree_removed", repo=repo_root, path=path)


async def _archive_branch_unlocked(
    repo_root: str, branch: str, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """Keep ``branch``'s unique commits under ``<branch>-prev-<UTC time>``; return that name.

    Returns None, changing nothing, when the branch is missing or has no unique commits.
    """
    if not await branch_exists(repo_root, branch, timeout):
        return None
    if await unique_commits(repo_root, branch, timeout) == 0:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    new = f"{branch}-prev-{stamp}"
    n = 1
    # Two archives within one second must not collide.
    while await branch_exists(repo_root, new, timeout):
        n += 1
        new = f"{branch}-prev-{stamp}-{n}"
    await run_git("branch", "-m", "--end-of-options", branch, new, cwd=repo_root, timeout=timeout)
    log.info("branch_archived", repo=repo_root, branch=branch, archived_as=new)
    return new


async def _reset_branch_unlocked(
    repo_root: str, branch: str, base: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Point ``branch`` at ``base`` (``git branch -f``); git refuses if it is checked out."""
    if branch.startswith("-"):
        raise GitError(f"invalid branch name: {branch}")
    await run_git(
        "branch",
        "-f",
        "--no-track",
        "--end-of-options",
        branch,
        base,
        cwd=repo_root,
        timeout=timeout,
    )
    log.info("branch_reset", repo=repo_root, branch=branch, base=base)


# git does not make concurrent worktree and branch changes in one repository safe (two adds
# can race for the same .git/worktrees/<name>), so they take turns per repository.
_REPO_LOCKS: weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def _repo_lock(repo_root: str) -> asyncio.Lock:
    key = (id(asyncio.get_running_loop()), repo_root)
    lock = _REPO_LOCKS.get(key)
    if lock is None:
        lock = asyncio.Lock()
        _REPO_LOCKS[key] = lock
    return lock


async def prune(repo_root: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """``git worktree prune``: forget worktrees whose folders are gone."""
    async with _repo_lock(repo_root):
        await _prune_unlocked(repo_root, timeout)


async def add_worktree(
    repo_root: str,
    worktree_path: str,
    branch: str,
    base: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    new_branch: bool = False,
) -> None:
    """Check out ``branch`` at ``worktree_path``, creating it from ``base`` if new.

    The rules are those of :func:`_add_worktree_unlocked`; this takes the repository's turn.
    """
    async with _repo_lock(repo_root):
        await _add_worktree_unlocked(
            repo_root, worktree_path, branch, base, timeout, new_branch=new_branch
        )


async def remove_worktree(
    repo_root: str, worktree_path: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Remove a worktree and its folder; its branch is never deleted."""
    async with _repo_lock(repo_root):
        await _remove_worktree_unlocked(repo_root, worktree_path, timeout)


async def archive_branch(
    repo_root: str, branch: str, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """Rename a branch that holds unique commits out of the way; see the unlocked version."""
    async with _repo_lock(repo_root):
        return await _archive_branch_unlocked(repo_root, branch, timeout)


async def reset_branch(
    repo_root: str, branch: str, base: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Point ``branch`` at ``base`` (it must not be checked out anywhere)."""
    async with _repo_lock(repo_root):
        await _reset_branch_unlocked(repo_root, branch, base, timeout)
