"""Git repositories and worktrees for sessions, through the real ``git`` binary.

Every session works on its own worktree and branch. This module checks the
repositories a user names, creates and removes those worktrees, and tells whether
a worktree or branch holds work that exists nowhere else, so that no operation
ever loses a commit. Git runs as a subprocess on the event loop (never a shell,
never a blocking call), each call bounded by a timeout after which git and
everything it started (hooks, aliases, credential helpers) are killed.

A session's container can write into its worktree and into parts of the repository's
``.git`` (see ``daemon/core/git_mounts.py``). Host git therefore never executes anything such a
container could have written: every call goes through :func:`_run`, which turns off hooks,
fsmonitor, system and global config, pagers, editors, prompts, transports and submodule
recursion; and calls on a session's worktree name its git directories explicitly, found
from the main repository's own records, never from the worktree's ``.git`` file.
"""

# Every public call takes a per-call timeout on purpose: on expiry git's whole process
# group is killed, which a caller's asyncio.timeout around the call would not do.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import stat
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import structlog

__all__ = [
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

DEFAULT_TIMEOUT = 60.0
# After a kill, how long to wait for git's pipes to close before giving up on them.
_KILL_GRACE = 5.0
# Enough of git's stderr to explain a failure without flooding logs or API answers.
_DETAILS_LIMIT = 4000

# From the daemon's own environment, only these GIT_* variables reach git: who commits
# and where discovery stops. Every other one (GIT_DIR, GIT_CONFIG_*, GIT_SSH_COMMAND,
# GIT_EXTERNAL_DIFF, ...) would point git at another repository or name a program.
_KEPT_GIT_VARS = frozenset(
    {
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_AUTHOR_DATE",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_COMMITTER_DATE",
        "GIT_CEILING_DIRECTORIES",
    }
)

# Nothing can ever be created under /dev/null, so as a hooks folder it holds no hook, and
# as a config file it is empty; no folder of ours to create, protect or clean up.
_NO_HOOKS = os.devnull
_EMPTY_CONFIG = os.devnull

# Command-line config outranks every config file, so these hold whatever a repository's
# config says. Each names a program git could run, or a way to reach one. Keys git offers
# no neutral value for (diff.external: an empty one is run as a command) are left alone:
# only porcelain diff and log -p use them, and the daemon runs neither. Drivers named per
# attribute (filter.<name>.*, diff.<name>.*, merge.<name>.*) are defined only in config,
# and every config git reads here is read-only to containers: they are the user's own.
_SAFE_CONFIG = (
    ("core.hooksPath", _NO_HOOKS),
    ("core.fsmonitor", "false"),
    # The index extension is container-written; do not trust or write it.
    ("core.untrackedCache", "false"),
    ("core.pager", "cat"),
    ("core.editor", ":"),
    ("sequence.editor", ":"),
    ("core.askPass", ""),
    ("core.sshCommand", "false"),
    ("core.alternateRefsCommand", ""),
    ("credential.helper", ""),
    # The daemon never fetches or pushes; a lazy fetch of a partial clone, a submodule
    # or a remote helper must not run anything either.
    ("protocol.allow", "never"),
    *((f"protocol.{name}.allow", "never") for name in ("ext", "file", "ssh", "git", "http")),
    ("protocol.https.allow", "never"),
    # A submodule's .git inside a worktree is container-controlled: git must never run
    # inside it (status would, to see whether it is dirty).
    ("submodule.recurse", "false"),
    ("diff.ignoreSubmodules", "all"),
    ("status.submoduleSummary", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("gpg.program", "false"),
    ("gpg.openpgp.program", "false"),
    ("gpg.x509.program", "false"),
    ("gpg.ssh.program", "false"),
    # No background gc or maintenance started by a daemon call.
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    # A bare repository planted inside a worktree is not picked up by discovery.
    ("safe.bareRepository", "explicit"),
)
_SAFE_ARGS = tuple(arg for key, value in _SAFE_CONFIG for arg in ("-c", f"{key}={value}"))

# Settings carried over from the user's own global and system config, which the clean
# config above replaces: each is data (paths), never a program.
_CARRIED_KEYS = ("safe.directory", "core.excludesFile")
# Config given through the environment rather than a file: not the user's files.
_CONFIG_SOURCE_VARS = frozenset({"GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"})
_carried: tuple[str, ...] | None = None

_BARE_REFUSED = re.compile(r"cannot use bare repository '(.*)' \(safe\.bareRepository")

# git's data limit (heap and anonymous memory): far above what status needs on a very large
# repository, far below what would starve the host.
GIT_MEMORY_LIMIT = 2 * 1024 * 1024 * 1024

# Bounds for the small files read to find a worktree's git directories.
_SMALL_FILE_LIMIT = 4096


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


@dataclass(frozen=True)
class GitDirs:
    """Where git must look, named explicitly so that nothing in a work tree redirects it.

    ``git_dir`` is a repository's common dir, or a linked worktree's admin dir (then with
    ``common_dir``); ``work_tree`` is set for calls that read the work tree.
    """

    git_dir: str
    common_dir: str | None = None
    work_tree: str | None = None

    @property
    def repository(self) -> str:
        """The main repository's folder (the parent of its ``.git``)."""
        common = Path(self.common_dir or self.git_dir)
        return str(common.parent if common.name == ".git" else common)

    def env(self) -> dict[str, str]:
        env = {"GIT_DIR": self.git_dir}
        if self.common_dir is not None:
            # Outranks the admin dir's commondir file.
            env["GIT_COMMON_DIR"] = self.common_dir
        if self.work_tree is not None:
            # Outranks core.worktree and the worktree's own .git file.
            env["GIT_WORK_TREE"] = self.work_tree
        return env

    def repository_only(self) -> GitDirs:
        """The same repository without the work tree: for refs and commits."""
        return GitDirs(self.common_dir or self.git_dir)


def _git_env(dirs: GitDirs | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT_GIT_VARS}
    env.pop("SSH_ASKPASS", None)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_CONFIG_GLOBAL"] = _EMPTY_CONFIG
    # Set and empty: git then asks neither core.askPass nor SSH_ASKPASS.
    env["GIT_ASKPASS"] = ""
    env["GIT_EDITOR"] = ":"
    env["GIT_PAGER"] = "cat"
    # No one is at a terminal to answer a credential prompt; git must fail instead of waiting.
    env["GIT_TERMINAL_PROMPT"] = "0"
    # Messages are matched below and shown to users; they must not be translated.
    env["LC_ALL"] = "C"
    # `git status` would otherwise take index.lock to refresh the index, and an agent
    # running git in the same worktree at that moment would fail on the lock.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    if dirs is not None:
        env.update(dirs.env())
    return env


async def _read_user_config(scope: str, key: str) -> list[str]:
    """Values of ``key`` in the user's own ``--global`` or ``--system`` config."""
    # The user's own environment decides which files those are (GIT_CONFIG_GLOBAL too).
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_SOURCE_VARS}
    proc = await asyncio.create_subprocess_exec(
        "git", *_SAFE_ARGS, "config", scope, "--get-all", key,
        cwd="/", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        async with asyncio.timeout(DEFAULT_TIMEOUT):
            out, _ = await proc.communicate()
    except BaseException:
        await _kill_and_reap(proc, "config", "/")
        raise
    return out.decode("utf-8", "surrogateescape").splitlines() if proc.returncode == 0 else []


async def _carried_args() -> tuple[str, ...]:
    """``-c`` arguments for the user's safe.directory and excludes file, read once.

    The clean global config would otherwise drop them: a repository owned by another user
    that the user trusts would be refused, and files the user's global excludes file
    ignores would count as unsaved work.
    """
    global _carried
    if _carried is None:
        # Calls that start together may each read it once; the answers are the same.
        args: list[str] = []
        for key in _CARRIED_KEYS:
            for scope in ("--system", "--global"):
                try:
                    values = await _read_user_config(scope, key)
                except (OSError, TimeoutError) as exc:
                    # Without them git still works, only stricter; say why.
                    log.warning("git_user_config_unread", scope=scope, key=key, error=str(exc))
                    values = []
                for value in values:
                    args += ["-c", f"{key}={value}"]
        _carried = tuple(args)
    return _carried


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


def _limit_memory(pid: int) -> None:
    """Bound git's heap. A container can make a ref or HEAD a symlink to /dev/zero, which git
    reads to the end: unbounded, it would take the host's memory, not only its own time.

    Set from outside right after exec (a preexec_fn is unsafe in a process with threads);
    git cannot have grown far by then, and a lowered limit stops it growing further. File
    mappings (pack files) are not counted, only data.
    """
    with contextlib.suppress(OSError, ValueError):
        resource.prlimit(pid, resource.RLIMIT_DATA, (GIT_MEMORY_LIMIT, GIT_MEMORY_LIMIT))


async def _run(
    args: tuple[str, ...], cwd: str, timeout: float, dirs: GitDirs | None = None
) -> tuple[int, str, str]:
    """Run git; return (exit code, stdout, stderr). Raises GitError only when git cannot run.

    The one place the daemon starts git: every call gets the safe config and environment.
    """
    command = args[0] if args else "git"
    carried = await _carried_args()
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *_SAFE_ARGS,
            *carried,
            *args,
            cwd=cwd,
            env=_git_env(dirs),
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
    _limit_memory(proc.pid)

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


async def run_git(
    *args: str, cwd: str, timeout: float = DEFAULT_TIMEOUT, dirs: GitDirs | None = None
) -> str:
    """Run ``git *args`` in ``cwd`` and return its stdout, untouched.

    With ``dirs``, git uses exactly those directories instead of discovering them.
    Raises GitError (with git's stderr as ``details``) on a non-zero exit or a timeout.
    """
    code, out, err = await _run(args, cwd, timeout, dirs)
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


def _refuse_untrusted(path: str, place: str, untrusted: Sequence[str]) -> None:
    if any(_inside(place, root) for root in untrusted):
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
    code, out, _ = await _run(
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

    code, out, err = await _run(("rev-parse", "--is-inside-work-tree"), cwd, timeout)
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
    _refuse_untrusted(path, str(git_dir), untrusted)

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
    return await _branch_exists(repo_root, branch, timeout)


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
    current = _read_small_file(str(dot_git)) or ""
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


# Finding a worktree's git directories. A worktree's own .git file is container-written;
# the main repository's worktrees/<name>/gitdir files are not (git_mounts makes each one
# read-only in its container), so they decide which admin dir is a worktree's.


def _read_small_file(path: str) -> str | None:
    """The text of a small regular file; None for anything else. Never follows a symlink
    and never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, _SMALL_FILE_LIMIT + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > _SMALL_FILE_LIMIT:
        return None
    return data.decode("utf-8", "surrogateescape")


def common_dir_of(repo_root: str) -> str:
    """The common git dir of the repository whose top-level folder the user named."""
    dot_git = Path(repo_root) / ".git"
    if dot_git.is_dir():
        return os.path.realpath(dot_git)
    # The user's repository is itself a linked worktree or a submodule: its .git file is
    # the user's, not a container's.
    text = _read_small_file(str(dot_git))
    if text is None or not text.startswith("gitdir:"):
        raise GitError(f"{repo_root} has no .git directory or file git can use")
    git_dir = Path(repo_root) / text.removeprefix("gitdir:").strip()
    common = _read_small_file(str(git_dir / "commondir"))
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
        text = _read_small_file(str(base / name / "gitdir"))
        if text is None:
            continue
        recorded = PurePosixPath(text.strip())
        if recorded.name == ".git" and os.path.realpath(recorded.parent) == wanted:
            return str(base / name)
    return None


def _inside(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(os.path.realpath(root))


def _hinted_common_dir(work_tree: str, untrusted: Sequence[str]) -> str | None:
    """The common dir a worktree's own .git file names, if it may be a real repository.

    The file only says where to look: that repository's records must then name this
    worktree. It may not lead into a place a container writes: the ``untrusted`` folders
    (the data dir), or anywhere inside a ``.git`` (containers write objects, refs and
    their admin dir there, and could build a fake repository with its own config).
    """
    text = _read_small_file(str(Path(work_tree) / ".git"))
    if text is None or not text.startswith("gitdir:"):
        return None
    admin = PurePosixPath(os.path.normpath(Path(work_tree) / text.removeprefix("gitdir:").strip()))
    if admin.parent.name != "worktrees":
        return None
    common = os.path.realpath(admin.parent.parent)
    if ".git" in PurePosixPath(common).parent.parts:
        return None
    if any(_inside(common, root) for root in untrusted):
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


async def _branch_exists(
    cwd: str, branch: str, timeout: float, dirs: GitDirs | None = None
) -> bool:
    if not branch or branch.startswith("-"):
        return False
    args = ("show-ref", "--verify", "--quiet", f"refs/heads/{branch}")
    code, _, err = await _run(args, cwd, timeout, dirs)
    if code in (0, 1):
        return code == 0
    raise _failure(args, code, err)


async def _unique_commits(
    cwd: str, branch: str, timeout: float, dirs: GitDirs | None = None
) -> int:
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
        dirs=dirs,
    )
    return int(out.strip())


async def _populated_submodules(dirs: GitDirs, timeout: float) -> list[str]:
    """Submodules checked out in the worktree. Git never runs inside them for us (their
    .git is the container's), so whatever they hold is reported, not inspected."""
    assert dirs.work_tree is not None
    out = await run_git("ls-files", "--stage", "-z", cwd=dirs.work_tree, timeout=timeout,
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
    status = await run_git(
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

    if not await _branch_exists(cwd, branch, timeout, dirs):
        return UnsavedWork(uncommitted=uncommitted, unique_commits=0)
    return UnsavedWork(
        uncommitted=uncommitted,
        unique_commits=await _unique_commits(cwd, branch, timeout, dirs),
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
