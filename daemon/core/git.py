"""The one place the daemon runs host git: :func:`run`, and :func:`run_git` on top of it.

A session's container can write into its worktree and into parts of the repository's
``.git`` (see ``daemon/core/git_mounts.py``). Host git therefore never executes anything such a
container could have written: every call goes through :func:`run`, which turns off hooks,
fsmonitor, system and global config, pagers, editors, prompts, transports (all but the
user's own push of a session's branch: ``transport="push"``) and submodule recursion
(carrying over only the user's ``safe.directory`` and excludes file), caps git's memory,
and runs git as a subprocess on the event loop (never a shell, never a blocking
call), bounded by a timeout after which git and everything it started (hooks, aliases,
credential helpers) are killed. Calls on a session's worktree name its git directories
explicitly (:class:`GitDirs`, found by ``daemon/core/gitdirs.py``), never from the
worktree's ``.git`` file. This is the git boundary of ``docs/threat-model.md``.
"""

# Every public call takes a per-call timeout on purpose: on expiry git's whole process
# group is killed, which a caller's asyncio.timeout around the call would not do.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

__all__ = [
    "DEFAULT_TIMEOUT",
    "GIT_MEMORY_LIMIT",
    "GitDirs",
    "GitError",
    "Transport",
    "failure",
    "read_user_config",
    "reason",
    "run",
    "run_git",
    "trim",
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

# The one call that reaches a remote: ``git push`` of a session's branch, asked by the user
# (daemon/core/push.py). It keeps every other setting above (no hooks: no pre-push hook
# runs) and opens only what pushing needs: the file, ssh and https transports; ssh as the
# user runs it (core.sshCommand left to the user's repository config, which containers
# cannot write); and for https the credential helpers of the user's global config alone.
Transport = Literal["push"]
_PUSH_OPENED = frozenset(
    {"core.sshCommand", "protocol.file.allow", "protocol.ssh.allow", "protocol.https.allow"}
)
_PUSH_ARGS = (
    *(arg for key, value in _SAFE_CONFIG if key not in _PUSH_OPENED
      for arg in ("-c", f"{key}={value}")),
    *(arg for name in ("file", "ssh", "https") for arg in ("-c", f"protocol.{name}.allow=always")),
    # Never into a submodule's repository, which a container may have written.
    "-c", "push.recurseSubmodules=no",
)  # fmt: skip
_PUSH_CARRIED_KEYS = ("credential.helper",)
_push_carried: tuple[str, ...] | None = None

# Settings carried over from the user's own global and system config, which the clean
# config above replaces: each is data (paths), never a program.
_CARRIED_KEYS = ("safe.directory", "core.excludesFile")
# Config given through the environment rather than a file: not the user's files.
_CONFIG_SOURCE_VARS = frozenset({"GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"})
_carried: tuple[str, ...] | None = None

# git's data limit (heap and anonymous memory): far above what status needs on a very large
# repository, far below what would starve the host.
GIT_MEMORY_LIMIT = 2 * 1024 * 1024 * 1024


class GitError(Exception):
    """Git failed or timed out; ``details`` holds git's stderr, trimmed."""

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


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
    # Messages are matched (resolving a repository) and shown to users; they must not be translated.
    env["LC_ALL"] = "C"
    # `git status` would otherwise take index.lock to refresh the index, and an agent
    # running git in the same worktree at that moment would fail on the lock.
    env["GIT_OPTIONAL_LOCKS"] = "0"
    if dirs is not None:
        env.update(dirs.env())
    return env


async def read_user_config(scope: str, key: str) -> list[str]:
    """Values of ``key`` in the user's own ``--global`` or ``--system`` config (files only
    the user writes; the clean config of :func:`run` hides them from every other call)."""
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
                    values = await read_user_config(scope, key)
                except (OSError, TimeoutError) as exc:
                    # Without them git still works, only stricter; say why.
                    log.warning("git_user_config_unread", scope=scope, key=key, error=str(exc))
                    values = []
                for value in values:
                    args += ["-c", f"{key}={value}"]
        _carried = tuple(args)
    return _carried


async def _push_carried_args() -> tuple[str, ...]:
    """``-c`` arguments for the credential helpers of the user's global config, read once.

    Only the global config's: a repository's own helper is dropped (``credential.helper=``
    comes first and empties the list), so that only what the user set for themselves runs.
    """
    global _push_carried
    if _push_carried is None:
        args: list[str] = []
        for key in _PUSH_CARRIED_KEYS:
            try:
                values = await read_user_config("--global", key)
            except (OSError, TimeoutError) as exc:
                log.warning("git_user_config_unread", scope="--global", key=key, error=str(exc))
                values = []
            for value in values:
                args += ["-c", f"{key}={value}"]
        _push_carried = tuple(args)
    return _push_carried


def trim(text: str) -> str | None:
    """Git's stderr, stripped and bounded; None when it said nothing."""
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


async def run(
    args: tuple[str, ...],
    cwd: str,
    timeout: float,
    dirs: GitDirs | None = None,
    *,
    transport: Transport | None = None,
) -> tuple[int, str, str]:
    """Run git; return (exit code, stdout, stderr). Raises GitError only when git cannot run.

    The one place the daemon starts git: every call gets the safe config and environment.
    ``transport="push"`` (for ``git push`` only) opens what pushing needs; see _PUSH_ARGS.
    """
    command = args[0] if args else "git"
    carried = await _carried_args()
    safe = _SAFE_ARGS
    if transport == "push":
        if command != "push":
            raise GitError(f"transport 'push' is for git push, not git {command}")
        safe = (*_PUSH_ARGS, *await _push_carried_args())
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *safe,
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
            trim(stderr.decode("utf-8", "replace")),
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


def reason(details: str | None, code: int) -> str:
    """The one line of git's stderr that says why it failed."""
    lines = details.splitlines() if details else []
    # git puts the reason on its fatal/error line; hints and usage text follow it.
    return next(
        (ln for ln in lines if ln.startswith(("fatal:", "error:"))),
        lines[-1] if lines else f"exit code {code}",
    )


def failure(args: tuple[str, ...], code: int, stderr: str) -> GitError:
    """The error for a git call that exited with ``code``."""
    details = trim(stderr)
    return GitError(f"git {args[0]} failed: {reason(details, code)}", details)


async def run_git(
    *args: str,
    cwd: str,
    timeout: float = DEFAULT_TIMEOUT,
    dirs: GitDirs | None = None,
    transport: Transport | None = None,
) -> str:
    """Run ``git *args`` in ``cwd`` and return its stdout, untouched.

    With ``dirs``, git uses exactly those directories instead of discovering them.
    Raises GitError (with git's stderr as ``details``) on a non-zero exit or a timeout.
    """
    code, out, err = await run(args, cwd, timeout, dirs, transport=transport)
    if code != 0:
        raise failure(args, code, err)
    return out
