"""Git repositories and worktrees for sessions, through the real ``git`` binary.

Every session works on its own worktree and branch. This module checks the
repositories a user names, creates and removes those worktrees, and tells whether
a worktree or branch holds work that exists nowhere else, so that no operation
ever loses a commit. Git runs as a subprocess on the event loop (never a shell,
never a blocking call), each call bounded by a timeout after which git and
everything it started (hooks, aliases, credential helpers) are killed.
"""

# Every public call takes a per-call timeout on purpose: on expiry git's whole process
# group is killed, which a caller's asyncio.timeout around the call would not do.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

__all__ = [
    "GitError",
    "InvalidRepository",
    "RepoInfo",
    "UnsavedWork",
    "add_worktree",
    "archive_branch",
    "branch_exists",
    "prune",
    "ref_exists",
    "remove_worktree",
    "reset_branch",
    "resolve_repository",
    "run_git",
    "unsaved_work",
    "worktree_is_registered",
]

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 60.0
# After a kill, how long to wait for git's pipes to close before giving up on them.
_KILL_GRACE = 5.0
# Enough of git's stderr to explain a failure without flooding logs or API answers.
_DETAILS_LIMIT = 4000

# Variables that would point git at some other repository than the one we name
# (set, for instance, when the daemon is started from inside a git hook).
_REPO_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)


class GitError(Exception):
    """Git failed or timed out; ``details`` holds git's stderr, trimmed."""

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidRepository(GitError):
    """The path cannot be used as a repository; ``message`` says why, for the user."""


@dataclass(frozen=True)
class RepoInfo:
    root: str
    git_dir: str
    subdir: str
    current_branch: str | None


@dataclass(frozen=True)
class UnsavedWork:
    uncommitted: list[str]
    unique_commits: int

    @property
    def any(self) -> bool:
        return bool(self.uncommitted) or self.unique_commits > 0


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_LOCATION_VARS}
    # No one is at a terminal to answer a credential prompt; git must fail instead of waiting.
    env["GIT_TERMINAL_PROMPT"] = "0"
    # Messages are matched below and shown to users; they must not be translated.
    env["LC_ALL"] = "C"
    # `git status` would otherwise take index.lock to refresh the index, and an agent
    # running git in the same worktree at that moment would fail on the lock.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    return env


def _trim(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if len(text) > _DETAILS_LIMIT:
        # The end of stderr is where git puts the fatal line.
        text = "…" + text[-_DETAILS_LIMIT:]
    return text


async def _kill_and_reap(proc: asyncio.subprocess.Process, command: str, cwd: str) -> bytes:
    """Kill git with everything it started, wait for it to go; return what it wrote to stderr."""
    # git runs hooks, aliases and helpers as children that hold our pipes open;
    # killing git alone would leave us waiting on them. The process group id stays
    # reserved while any member lives, so this cannot hit an unrelated group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        async with asyncio.timeout(_KILL_GRACE):
            _, stderr = await proc.communicate()
    except TimeoutError:
        # Something that left git's process group (setsid) still holds the pipes.
        log.warning("git_pipes_left_open", command=command, cwd=cwd, pid=proc.pid)
        return b""
    return stderr


async def _run(args: tuple[str, ...], cwd: str, timeout: float) -> tuple[int, str, str]:
    """Run git; return (exit code, stdout, stderr). Raises GitError only when git cannot run."""
    command = args[0] if args else "git"
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=_git_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so a timeout can kill git and everything it started.
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        if exc.filename == cwd:
            raise GitError(f"{cwd} does not exist") from exc
        raise GitError("git is not installed or not on PATH") from exc
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc.strerror or exc}") from exc

    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        stderr = await _kill_and_reap(proc, command, cwd)
        log.warning("git_timeout", command=command, cwd=cwd, timeout=timeout)
        raise GitError(
            f"git {command} timed out after {timeout:g} s",
            _trim(stderr.decode("utf-8", "replace")),
        ) from None
    except BaseException:
        # Cancelled: git must not outlive the operation that wanted it, and must be
        # reaped here rather than left to a loop that may be closing.
        await _kill_and_reap(proc, command, cwd)
        raise
    assert proc.returncode is not None
    # surrogateescape keeps non-UTF-8 file names round-trippable as paths.
    return (
        proc.returncode,
        out.decode("utf-8", "surrogateescape"),
        err.decode("utf-8", "replace"),
    )


def _reason(details: str | None, code: int) -> str:
    lines = details.splitlines() if details else []
    # git puts the reason on its fatal/error line; hints and usage text follow it.
    return next(
        (ln for ln in lines if ln.startswith(("fatal:", "error:"))),
        lines[-1] if lines else f"exit code {code}",
    )


def _failure(args: tuple[str, ...], code: int, stderr: str) -> GitError:
    details = _trim(stderr)
    return GitError(f"git {args[0]} failed: {_reason(details, code)}", details)


async def run_git(*args: str, cwd: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run ``git *args`` in ``cwd`` and return its stdout, untouched.

    Raises GitError (with git's stderr as ``details``) on a non-zero exit or a timeout.
    """
    code, out, err = await _run(args, cwd, timeout)
    if code != 0:
        raise _failure(args, code, err)
    return out


# Filesystem checks run in a thread: a path on a hung network mount must not stall the loop.


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _absolute(path: str) -> str:
    if not Path(path).is_absolute():
        raise GitError(f"{path} is not an absolute path")
    return os.path.normpath(path)


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


async def resolve_repository(path: str, timeout: float = DEFAULT_TIMEOUT) -> RepoInfo:
    """Check that ``path`` is a git work tree (or a folder in one) that has commits."""
    folder = await asyncio.to_thread(_existing_folder, path)
    cwd = str(folder)

    # The common case in one git process; anything unusual takes the detailed path below,
    # which explains what is wrong.
    code, out, _ = await _run(
        ("rev-parse", "--is-inside-work-tree", "--show-toplevel", "--git-common-dir",
         "--symbolic-full-name", "HEAD"), cwd, timeout,
    )  # fmt: skip
    lines = out.splitlines()
    if code == 0 and len(lines) == 4 and lines[0] == "true":
        root, git_dir, subdir = await asyncio.to_thread(_repo_paths, folder, lines[1], lines[2])
        head = lines[3]
        current_branch = (
            head.removeprefix("refs/heads/") if head.startswith("refs/heads/") else None
        )
        return RepoInfo(str(root), str(git_dir), subdir, current_branch)

    code, out, err = await _run(("rev-parse", "--is-inside-work-tree"), cwd, timeout)
    if code != 0:
        if "not a git repository" in err:
            raise InvalidRepository(f"{path} is not a git repository")
        # e.g. "detected dubious ownership": git's own words are the useful reason.
        details = _trim(err)
        raise InvalidRepository(
            f"{path} cannot be used as a git repository: {_reason(details, code)}", details
        )
    if out.strip() != "true":
        bare = await run_git("rev-parse", "--is-bare-repository", cwd=cwd, timeout=timeout)
        if bare.strip() == "true":
            raise InvalidRepository(f"{path} is a bare repository, which has no work tree")
        raise InvalidRepository(f"{path} is inside a .git directory, not a work tree")

    out = await run_git(
        "rev-parse", "--show-toplevel", "--git-common-dir", cwd=cwd, timeout=timeout
    )
    lines = out.splitlines()
    if len(lines) < 2:
        raise GitError("git rev-parse gave no top-level or git directory", _trim(out))
    root, git_dir, subdir = await asyncio.to_thread(_repo_paths, folder, lines[0], lines[1])

    code, _, _ = await _run(("rev-parse", "--verify", "--quiet", "HEAD^{commit}"), cwd, timeout)
    if code != 0:
        raise InvalidRepository(
            f"{path} has no commits yet; make a first commit so there is a base to branch from"
        )

    code, out, err = await _run(("symbolic-ref", "--quiet", "--short", "HEAD"), cwd, timeout)
    if code == 0:
        current: str | None = out.strip() or None
    elif code == 1:  # detached HEAD
        current = None
    else:
        raise _failure(("symbolic-ref",), code, err)

    return RepoInfo(root=str(root), git_dir=str(git_dir), subdir=subdir, current_branch=current)


async def branch_exists(repo_root: str, branch: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``refs/heads/<branch>`` exists (local branches only)."""
    if not branch or branch.startswith("-"):
        return False
    args = ("show-ref", "--verify", "--quiet", f"refs/heads/{branch}")
    code, _, err = await _run(args, repo_root, timeout)
    if code in (0, 1):
        return code == 0
    raise _failure(args, code, err)


async def ref_exists(repo_root: str, ref: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``ref`` names a commit: a branch, remote-tracking branch, tag or hash."""
    if not ref:
        return False
    args = ("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    code, _, err = await _run(args, repo_root, timeout)
    if code == 0:
        return True
    # --quiet silences "unknown ref"; anything still printed is a real failure.
    if err.strip():
        raise _failure(args, code, err)
    return False


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


async def _remove_worktree_unlocked(
    repo_root: str, worktree_path: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Remove the worktree and its folder, uncommitted changes included; keep the branch.

    A worktree that is already gone is success.
    """
    path = _absolute(worktree_path)
    failure: GitError | None = None
    if await worktree_is_registered(repo_root, path, timeout):
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


async def _unique_commits(cwd: str, branch: str, timeout: float) -> int:
    # --exclude applies to the next --branches only and is relative to refs/heads, so
    # it drops exactly this branch from the "saved elsewhere" set, while a remote branch
    # or tag of the same name still counts as a copy.
    out = await run_git(
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
    )
    return int(out.strip())


async def unsaved_work(
    worktree_path: str,
    branch: str,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    repo_root: str | None = None,
) -> UnsavedWork:
    """What would be lost without this worktree and branch.

    ``uncommitted``: ``git status --porcelain`` lines, untracked files included.
    ``unique_commits``: commits of ``branch`` on no other branch, remote branch or tag
    (0 when the branch does not exist). When the worktree folder is gone, commits are
    counted in ``repo_root``.
    """
    if await asyncio.to_thread(os.path.isdir, worktree_path):
        cwd = await asyncio.to_thread(os.path.realpath, worktree_path)
        code, top, err = await _run(("rev-parse", "--show-toplevel"), cwd, timeout)
        # Without its .git file, git would walk up and report on whatever repository
        # encloses the folder (a dotfiles repo in $HOME, say).
        if code != 0 or top.strip() != cwd:
            raise GitError(f"{worktree_path} is no longer a git worktree", _trim(err))
        status = await run_git("status", "--porcelain", cwd=cwd, timeout=timeout)
        uncommitted = [line for line in status.splitlines() if line]
    elif repo_root is not None:
        cwd = repo_root
        uncommitted = []
    else:
        raise GitError(f"{worktree_path} does not exist and no repository was given")

    if not await branch_exists(cwd, branch, timeout):
        return UnsavedWork(uncommitted=uncommitted, unique_commits=0)
    return UnsavedWork(
        uncommitted=uncommitted, unique_commits=await _unique_commits(cwd, branch, timeout)
    )


async def _archive_branch_unlocked(
    repo_root: str, branch: str, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """Keep ``branch``'s unique commits under ``<branch>-prev-<UTC time>``; return that name.

    Returns None, changing nothing, when the branch is missing or has no unique commits.
    """
    if not await branch_exists(repo_root, branch, timeout):
        return None
    if await _unique_commits(repo_root, branch, timeout) == 0:
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
