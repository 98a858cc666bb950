"""A repository the user names: checked, resolved to its top level, asked about its refs.

:func:`resolve_repository` explains, in words for the user, why a folder cannot be a
session's repository (not a work tree, bare, no commits, inside corral's data folder where
sessions write); :func:`branch_exists` and :func:`ref_exists` answer the questions create
asks before it makes a worktree.
"""

# Every public call takes a per-call timeout on purpose (see daemon/core/git.py).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from daemon.core import git
from daemon.core.git import DEFAULT_TIMEOUT, GitDirs, GitError
from daemon.core.gitdirs import is_inside

__all__ = ["InvalidRepository", "RepoInfo", "branch_exists", "ref_exists", "resolve_repository"]

_BARE_REFUSED = re.compile(r"cannot use bare repository '(.*)' \(safe\.bareRepository")


class InvalidRepository(GitError):
    """The path cannot be used as a repository; ``message`` says why, for the user."""


@dataclass(frozen=True)
class RepoInfo:
    root: str
    git_dir: str
    subdir: str
    current_branch: str | None


def _existing_folder(path: str) -> Path:
    """The resolved folder ``path`` names, or InvalidRepository saying what is wrong."""
    given = Path(path).expanduser()
    if not given.is_absolute():
        raise InvalidRepository(f"{path} is not an absolute path")
    try:
        if not given.exists():
            raise InvalidRepository(f"{path} does not exist")
        if not given.is_dir():
            raise InvalidRepository(f"{path} is not a directory")
        return given.resolve(strict=True)
    except OSError as exc:
        raise InvalidRepository(f"{path} cannot be read: {exc.strerror or exc}") from exc


def _repo_paths(folder: Path, toplevel: str, common_dir: str) -> tuple[Path, Path, str]:
    root = Path(toplevel).resolve()
    # Older git prints the common dir relative to the current directory.
    git_dir = (folder / common_dir).resolve()
    subdir = folder.relative_to(root).as_posix() if folder != root else ""
    return root, git_dir, subdir


def _refuse_untrusted(path: str, place: str, untrusted: Sequence[str]) -> None:
    if any(is_inside(place, root) for root in untrusted):
        # Session containers write there: a repository found there is theirs, with a
        # config (filters, drivers) that host git would obey.
        raise InvalidRepository(
            f"{path} is inside corral's data folder, where sessions write; "
            "name the repository itself"
        )


async def resolve_repository(
    path: str, timeout: float = DEFAULT_TIMEOUT, *, untrusted: Sequence[str] = ()
) -> RepoInfo:
    """Check that ``path`` is a git work tree (or a folder in one) that has commits.

    Neither ``path`` nor the repository it is in may lie inside an ``untrusted`` folder.
    """
    folder = await asyncio.to_thread(_existing_folder, path)
    cwd = str(folder)
    _refuse_untrusted(path, cwd, untrusted)

    # The common case in one git process; anything unusual takes the detailed path below,
    # which explains what is wrong.
    code, out, _ = await git.run(
        ("rev-parse", "--is-inside-work-tree", "--show-toplevel", "--git-common-dir",
         "--symbolic-full-name", "HEAD"), cwd, timeout,
    )  # fmt: skip
    lines = out.splitlines()
    if code == 0 and len(lines) == 4 and lines[0] == "true":
        root, git_dir, subdir = await asyncio.to_thread(_repo_paths, folder, lines[1], lines[2])
        _refuse_untrusted(path, str(git_dir), untrusted)
        head = lines[3]
        current_branch = (
            head.removeprefix("refs/heads/") if head.startswith("refs/heads/") else None
        )
        return RepoInfo(str(root), str(git_dir), subdir, current_branch)

    code, out, err = await git.run(("rev-parse", "--is-inside-work-tree"), cwd, timeout)
    if code != 0:
        if "not a git repository" in err:
            raise InvalidRepository(f"{path} is not a git repository")
        # safe.bareRepository=explicit: git names the bare repository it refused.
        bare_dir = _BARE_REFUSED.search(err)
        if bare_dir is not None:
            if PurePosixPath(bare_dir.group(1)).name == ".git":
                raise InvalidRepository(f"{path} is inside a .git directory, not a work tree")
            raise InvalidRepository(f"{path} is a bare repository, which has no work tree")
        # e.g. "detected dubious ownership": git's own words are the useful reason.
        details = git.trim(err)
        raise InvalidRepository(
            f"{path} cannot be used as a git repository: {git.reason(details, code)}", details
        )
    if out.strip() != "true":
        bare = await git.run_git("rev-parse", "--is-bare-repository", cwd=cwd, timeout=timeout)
        if bare.strip() == "true":
            raise InvalidRepository(f"{path} is a bare repository, which has no work tree")
        raise InvalidRepository(f"{path} is inside a .git directory, not a work tree")

    out = await git.run_git(
        "rev-parse", "--show-toplevel", "--git-common-dir", cwd=cwd, timeout=timeout
    )
    lines = out.splitlines()
    if len(lines) < 2:
        raise GitError("git rev-parse gave no top-level or git directory", git.trim(out))
    root, git_dir, subdir = await asyncio.to_thread(_repo_paths, folder, lines[0], lines[1])
    _refuse_untrusted(path, str(git_dir), untrusted)

    code, _, _ = await git.run(("rev-parse", "--verify", "--quiet", "HEAD^{commit}"), cwd, timeout)
    if code != 0:
        raise InvalidRepository(
            f"{path} has no commits yet; make a first commit so there is a base to branch from"
        )

    code, out, err = await git.run(("symbolic-ref", "--quiet", "--short", "HEAD"), cwd, timeout)
    if code == 0:
        current: str | None = out.strip() or None
    elif code == 1:  # detached HEAD
        current = None
    else:
        raise git.failure(("symbolic-ref",), code, err)

    return RepoInfo(root=str(root), git_dir=str(git_dir), subdir=subdir, current_branch=current)


async def branch_exists(
    repo_root: str, branch: str, timeout: float = DEFAULT_TIMEOUT, dirs: GitDirs | None = None
) -> bool:
    """Whether ``refs/heads/<branch>`` exists (local branches only).

    With ``dirs``, git asks exactly that repository, whatever ``repo_root`` holds.
    """
    if not branch or branch.startswith("-"):
        return False
    args = ("show-ref", "--verify", "--quiet", f"refs/heads/{branch}")
    code, _, err = await git.run(args, repo_root, timeout, dirs)
    if code in (0, 1):
        return code == 0
    raise git.failure(args, code, err)


async def ref_exists(repo_root: str, ref: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``ref`` names a commit: a branch, remote-tracking branch, tag or hash."""
    if not ref:
        return False
    args = ("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    code, _, err = await git.run(args, repo_root, timeout)
    if code == 0:
        return True
    # --quiet silences "unknown ref"; anything still printed is a real failure.
    if err.strip():
        raise git.failure(args, code, err)
    return False
