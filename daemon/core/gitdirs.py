"""Finding a worktree's git directories without trusting its ``.git`` file.

A worktree's own ``.git`` file is container-written; the main repository's
``worktrees/<name>/gitdir`` files are not (``daemon/core/git_mounts.py`` makes each one
read-only in its container), so they decide which admin dir is a worktree's. What is found
here is handed to host git as explicit :class:`~daemon.core.git.GitDirs`.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from daemon.core.git import GitDirs, GitError

__all__ = [
    "admin_dir_of",
    "common_dir_of",
    "is_inside",
    "locate_worktree",
    "read_bounded",
    "read_small_file",
]

# Bounds for the small files read to find a worktree's git directories.
_SMALL_FILE_LIMIT = 4096


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes; None for anything else (a
    larger file, a symlink, a FIFO, a read error). Never follows a symlink and never blocks
    on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def read_small_file(path: str) -> str | None:
    """The text of a small regular file; None for anything else (see :func:`read_bounded`)."""
    data = read_bounded(path, _SMALL_FILE_LIMIT)
    return None if data is None else data.decode("utf-8", "surrogateescape")


def common_dir_of(repo_root: str) -> str:
    """The common git dir of the repository whose top-level folder the user named."""
    dot_git = Path(repo_root) / ".git"
    if dot_git.is_dir():
        return os.path.realpath(dot_git)
    # The user's repository is itself a linked worktree or a submodule: its .git file is
    # the user's, not a container's.
    text = read_small_file(str(dot_git))
    if text is None or not text.startswith("gitdir:"):
        raise GitError(f"{repo_root} has no .git directory or file git can use")
    git_dir = Path(repo_root) / text.removeprefix("gitdir:").strip()
    common = read_small_file(str(git_dir / "commondir"))
    if common is None:
        return os.path.realpath(git_dir)
    return os.path.realpath(git_dir / common.strip())


def admin_dir_of(common_dir: str, worktree_path: str) -> str | None:
    """``<common_dir>/worktrees/<name>`` whose ``gitdir`` file names ``worktree_path``."""
    wanted = os.path.realpath(worktree_path)
    base = Path(common_dir) / "worktrees"
    try:
        with os.scandir(base) as entries:
            names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return None
    for name in names:
        text = read_small_file(str(base / name / "gitdir"))
        if text is None:
            continue
        recorded = PurePosixPath(text.strip())
        if recorded.name == ".git" and os.path.realpath(recorded.parent) == wanted:
            return str(base / name)
    return None


def is_inside(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(os.path.realpath(root))


def _hinted_common_dir(work_tree: str, untrusted: Sequence[str]) -> str | None:
    """The common dir a worktree's own .git file names, if it may be a real repository.

    The file only says where to look: that repository's records must then name this
    worktree. It may not lead into a place a container writes: the ``untrusted`` folders
    (the data dir), or anywhere inside a ``.git`` (containers write objects, refs and
    their admin dir there, and could build a fake repository with its own config).
    """
    text = read_small_file(str(Path(work_tree) / ".git"))
    if text is None or not text.startswith("gitdir:"):
        return None
    admin = PurePosixPath(os.path.normpath(Path(work_tree) / text.removeprefix("gitdir:").strip()))
    if admin.parent.name != "worktrees":
        return None
    common = os.path.realpath(admin.parent.parent)
    if ".git" in PurePosixPath(common).parent.parts:
        return None
    if any(is_inside(common, root) for root in untrusted):
        return None
    return common


async def locate_worktree(
    worktree_path: str, repo_root: str | None = None, *, untrusted: Sequence[str] = ()
) -> GitDirs:
    """The git directories of a linked worktree, found without trusting its ``.git`` file.

    With ``repo_root`` (what the daemon recorded) the repository is that one; without it,
    the worktree's ``.git`` file may suggest one (see :func:`_hinted_common_dir`). Either
    way the repository must list this folder as one of its worktrees.
    """

    def find() -> GitDirs:
        work_tree = os.path.realpath(worktree_path)
        common = (
            common_dir_of(repo_root)
            if repo_root is not None
            else _hinted_common_dir(work_tree, untrusted)
        )
        if common is None:
            raise GitError(f"{worktree_path} is no longer a git worktree of a repository")
        admin = admin_dir_of(common, work_tree)
        if admin is None:
            raise GitError(f"{worktree_path} is no longer a git worktree of {common}")
        return GitDirs(git_dir=admin, common_dir=common, work_tree=work_tree)

    try:
        return await asyncio.to_thread(find)
    except OSError as exc:
        raise GitError(f"{worktree_path} cannot be read: {exc.strerror or exc}") from exc
