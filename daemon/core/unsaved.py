"""Unsaved work: what would be lost without a worktree and its branch.

Uncommitted files (submodules are reported, never looked into: their ``.git`` is the
container's) and commits that exist on no other branch, remote branch or tag. Delete and
the orphan sweep ask this before they remove anything, so that no operation loses a commit.
"""

# Every public call takes a per-call timeout on purpose (see daemon/core/git.py).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.core import git
from daemon.core.git import DEFAULT_TIMEOUT, GitDirs, GitError
from daemon.core.gitdirs import locate_worktree
from daemon.core.repository import branch_exists

__all__ = ["UnsavedWork", "uncommitted_files", "unique_commits", "unsaved_work"]


@dataclass(frozen=True)
class UnsavedWork:
    uncommitted: list[str]
    unique_commits: int

    @property
    def any(self) -> bool:
        return bool(self.uncommitted) or self.unique_commits > 0


async def unique_commits(cwd: str, branch: str, timeout: float, dirs: GitDirs | None = None) -> int:
    """How many commits of ``branch`` are on no other branch, remote branch or tag."""
    # --exclude applies to the next --branches only and is relative to refs/heads, so
    # it drops exactly this branch from the "saved elsewhere" set, while a remote branch
    # or tag of the same name still counts as a copy.
    out = await git.run_git(
        "rev-list",
        "--count",
        f"refs/heads/{branch}",
        "--not",
        f"--exclude={branch}",
        "--branches",
        "--remotes",
        "--tags",
        cwd=cwd,
        timeout=timeout,
        dirs=dirs,
    )
    return int(out.strip())


async def _populated_submodules(dirs: GitDirs, timeout: float) -> list[str]:
    """Submodules checked out in the worktree. Git never runs inside them for us (their
    .git is the container's), so whatever they hold is reported, not inspected."""
    assert dirs.work_tree is not None
    out = await git.run_git("ls-files", "--stage", "-z", cwd=dirs.work_tree, timeout=timeout,
                            dirs=dirs)  # fmt: skip
    gitlinks = [
        entry.partition("\t")[2] for entry in out.split("\0") if entry.startswith("160000 ")
    ]
    work_tree = dirs.work_tree

    def populated() -> list[str]:
        return [p for p in gitlinks if os.path.lexists(Path(work_tree) / p / ".git")]

    return await asyncio.to_thread(populated) if gitlinks else []


async def uncommitted_files(dirs: GitDirs, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """``git status --porcelain`` lines of a located worktree, untracked files included,
    plus one line for each populated submodule (never looked into)."""
    assert dirs.work_tree is not None
    status = await git.run_git(
        "status", "--porcelain", "--ignore-submodules=all", cwd=dirs.work_tree,
        timeout=timeout, dirs=dirs,
    )  # fmt: skip
    lines = [line for line in status.splitlines() if line]
    lines += [f"?? {p}/ (a submodule; not inspected)"
              for p in await _populated_submodules(dirs, timeout)]  # fmt: skip
    return lines


async def unsaved_work(
    worktree_path: str,
    branch: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    repo_root: str | None = None,
    untrusted: Sequence[str] = (),
) -> UnsavedWork:
    """What would be lost without this worktree and branch.

    ``uncommitted``: see :func:`uncommitted_files`. ``unique_commits``: commits of
    ``branch`` on no other branch, remote branch or tag (0 when the branch does not
    exist). When the worktree folder is gone, commits are counted in ``repo_root``.
    The worktree is found with :func:`locate_worktree`.
    """
    dirs: GitDirs | None
    if await asyncio.to_thread(os.path.isdir, worktree_path):
        located = await locate_worktree(worktree_path, repo_root, untrusted=untrusted)
        uncommitted = await uncommitted_files(located, timeout)
        dirs = located.repository_only()
        cwd = dirs.git_dir
    elif repo_root is not None:
        dirs, cwd = None, repo_root
        uncommitted = []
    else:
        raise GitError(f"{worktree_path} does not exist and no repository was given")

    if not await branch_exists(cwd, branch, timeout, dirs):
        return UnsavedWork(uncommitted=uncommitted, unique_commits=0)
    return UnsavedWork(
        uncommitted=uncommitted,
        unique_commits=await unique_commits(cwd, branch, timeout, dirs),
    )
