"""The git mounts of a session's container: its repositories' ``.git``, read-only but for
the places its own work must land.

A worktree's ``.git`` file names the main repository's ``.git/worktrees/<name>`` by its
host path, so git in the container needs the main ``.git`` at the same path. Mounted
read-write, it would let the container plant hooks, config (fsmonitor, filters, aliases)
or ``info/attributes`` that host git then obeys. So each repository's common dir is
mounted read-only, with these read-write mounts on top (the deeper mount wins):

* ``objects/``: the commits the agent makes (but ``objects/info/`` stays read-only, so no
  ``alternates`` or commit-graph can be planted for host git to read);
* ``refs/heads/corral/`` and ``logs/refs/heads/corral/``: session branches. A ref is
  updated by writing ``<ref>.lock`` beside it and renaming it over the ref, and a rename
  onto a mount point fails (EBUSY), so a single branch file cannot be mounted: the
  container can also move other sessions' ``corral/*`` branches (docs/decisions.md);
* ``worktrees/<name>/``: the worktree's own HEAD, index and logs, with its ``gitdir``,
  ``commondir`` and ``config.worktree`` mounted read-only on top, so the container cannot
  redirect host git to another repository or give it per-worktree config.

The worktree's own ``.git`` file is mounted read-only too; host git never reads it anyway
(see :mod:`daemon.core.worktrees`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from backends.base import Mount
from daemon.core.worktrees import GitError, admin_dir_of, common_dir_of

__all__ = ["GitWorktree", "git_mounts"]

# Where a session's own work lands in the common dir, relative to it. Session branches
# are corral/<name> (daemon.core.spawn.BRANCH_PREFIX).
_WRITABLE_DIRS = ("objects", "refs/heads/corral", "logs/refs/heads/corral")
_READ_ONLY_DIRS = ("objects/info",)
# Files of the worktree's admin dir that tell git where everything else is, or add config.
_READ_ONLY_ADMIN_FILES = ("gitdir", "commondir", "config.worktree")


@dataclass(frozen=True)
class GitWorktree:
    """One repository of a session: the user's repository, its worktree, and where the
    worktree is mounted in the container."""

    repo_root: str
    worktree_path: str
    target: str


def _ensure_dir(path: Path) -> None:
    # A bind mount needs its source; git creates these lazily, so a fresh repository may
    # lack them. Made as the daemon's user, like everything else in .git.
    path.mkdir(parents=True, exist_ok=True)


def _ensure_file(path: Path, *, create: bool) -> None:
    """A regular file at ``path`` (made empty when ``create``); GitError otherwise.

    A symlink here would make the read-only mount, and host git, read whatever it names.
    """
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise GitError(f"{path} is missing; the worktree is broken") from None
    if not stat.S_ISREG(mode):
        raise GitError(f"{path} is not a regular file; refusing to use the worktree")


def git_mounts(repositories: Sequence[GitWorktree]) -> list[Mount]:
    """The mounts that give a container git on its worktrees and nothing more.

    Blocking (it creates mount sources): call it in a thread. Raises GitError when a
    worktree is not registered in its repository.
    """
    mounts: list[Mount] = []
    commons: dict[str, None] = {}  # ordered set
    admins: list[tuple[str, GitWorktree]] = []
    for repo in repositories:
        common = common_dir_of(repo.repo_root)
        admin = admin_dir_of(common, repo.worktree_path)
        if admin is None:
            raise GitError(f"{repo.worktree_path} is not a registered worktree of {repo.repo_root}")
        commons[common] = None
        admins.append((admin, repo))

    for common in commons:
        base = Path(common)
        mounts.append(Mount(common, common, read_only=True))
        for sub in _WRITABLE_DIRS:
            _ensure_dir(base / sub)
            mounts.append(Mount(str(base / sub), str(base / sub)))
        for sub in _READ_ONLY_DIRS:
            _ensure_dir(base / sub)
            mounts.append(Mount(str(base / sub), str(base / sub), read_only=True))

    for admin, repo in admins:
        mounts.append(Mount(admin, admin))
        for name in _READ_ONLY_ADMIN_FILES:
            path = Path(admin) / name
            # An empty config.worktree: git reads it only with extensions.worktreeConfig,
            # and then an empty one changes nothing.
            _ensure_file(path, create=name == "config.worktree")
            mounts.append(Mount(str(path), str(path), read_only=True))
        dot_git = Path(repo.worktree_path) / ".git"
        # Only a regular file: anything else is a broken worktree git would refuse anyway.
        if dot_git.is_file() and not dot_git.is_symlink():
            mounts.append(
                Mount(str(dot_git), str(PurePosixPath(repo.target) / ".git"), read_only=True)
            )
    return mounts
