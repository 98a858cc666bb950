"""Pushing a session's branch to one of its repository's remotes (``POST .../push``).

The one host git call that reaches the network: ``git push`` through
:func:`daemon.core.git.run` with ``transport="push"``, which opens the file, ssh and https
transports, the user's own ssh and the credential helpers of the user's global config, and
nothing else: hooks stay off (no pre-push hook runs, ``--no-verify`` besides), so nothing a
container wrote into the repository runs. It pushes from the user's repository (its common
git dir), never from the session's worktree, and only
``refs/heads/<branch>:refs/heads/<branch>``, never forced.

The remote must be named in the repository's own config (read-only to containers). git's
words are sorted into what a user can act on: ``auth`` (the remote refused who we are),
``rejected`` (the remote branch has moved on: 409), ``unreachable`` (no such host or
repository), ``timeout`` and ``failed``; each but ``rejected`` is 502 ``BACKEND_ERROR``,
with ``details`` = ``{kind, remote, output}``.
"""

# Every call takes git's per-call timeout on purpose (see daemon/core/git.py).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import re
from typing import Literal

import structlog

from daemon.core import git
from daemon.core.changes_models import PushRequest, PushResult
from daemon.core.errors import BackendFailed, Conflict, InvalidRequest
from daemon.core.git import GitDirs, GitError
from daemon.core.gitdirs import common_dir_of
from daemon.core.models import Repository
from daemon.core.session import SessionRecord

__all__ = [
    "DEFAULT_REMOTE",
    "PushFailed",
    "PushRejected",
    "branch_head",
    "classify",
    "push",
    "remote_url",
    "repo_dirs",
    "tracking_head",
    "valid_remote",
]

log = structlog.get_logger(__name__)

DEFAULT_REMOTE = "origin"
# A remote's name as the API accepts it; never one git could read as an option.
_REMOTE_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,99}")
# What of git's output goes into an answer: the end, where git says why.
_OUTPUT_LIMIT = 4000

Kind = Literal["auth", "rejected", "unreachable", "timeout", "failed"]

# Matched case-insensitively on git's output (LC_ALL=C, so never translated). Auth comes
# first: ssh says "Could not read from remote repository" after "Permission denied" too.
_AUTH = (
    "authentication failed",
    "permission denied (publickey",
    "permission denied",
    "invalid username or password",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "requested url returned error: 401",
    "requested url returned error: 403",
    "http 401",
    "http 403",
)
_REJECTED = ("[rejected]", "[remote rejected]", "non-fast-forward", "fetch first")
_UNREACHABLE = (
    "could not resolve host",
    "could not resolve hostname",
    "connection refused",
    "connection timed out",
    "no route to host",
    "network is unreachable",
    "does not appear to be a git repository",
    "repository not found",
    "could not read from remote repository",
    "unable to access",
    "failed to connect",
)


class PushFailed(BackendFailed):
    """The push did not happen; ``details`` = ``{kind, remote, output}``. A remote's failure
    is not the daemon's: 502, a bad gateway."""

    status = 502

    def __init__(self, message: str, kind: Kind, remote: str, output: str) -> None:
        super().__init__(message, {"kind": kind, "remote": remote, "output": output})
        self.kind = kind


class PushRejected(Conflict):
    """The remote branch has commits the session's branch lacks: 409, nothing forced."""

    def __init__(self, message: str, remote: str, output: str) -> None:
        super().__init__(message, {"kind": "rejected", "remote": remote, "output": output})
        self.kind: Kind = "rejected"


def classify(output: str) -> Kind:
    """Which of the kinds git's output tells of."""
    text = output.lower()
    for kind, needles in (("auth", _AUTH), ("rejected", _REJECTED), ("unreachable", _UNREACHABLE)):
        if any(needle in text for needle in needles):
            return kind  # type: ignore[return-value]
    return "failed"


def _bounded(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _OUTPUT_LIMIT else "…" + text[-_OUTPUT_LIMIT:]


def valid_remote(name: str | None) -> str:
    """The remote's name, checked; ``origin`` when none is given."""
    remote = DEFAULT_REMOTE if name is None else name
    if not _REMOTE_NAME.fullmatch(remote) or ".." in remote:
        raise InvalidRequest(
            f"invalid remote name {remote!r}: letters, digits, '.', '_' and '-' only",
            [{"field": "remote", "message": "invalid remote name"}],
        )
    return remote


async def repo_dirs(repo: Repository) -> GitDirs:
    """The user's repository itself (never the session's worktree): refs, objects, config."""
    try:
        common = await asyncio.to_thread(common_dir_of, repo.path)
    except OSError as exc:
        raise BackendFailed(f"{repo.path} cannot be read: {exc.strerror or exc}") from exc
    except GitError as exc:
        raise BackendFailed(exc.message) from exc
    return GitDirs(common)


async def remote_url(dirs: GitDirs, remote: str, timeout: float, *, for_push: bool = True) -> str:
    """The URL of ``remote`` in the repository's config (its push URL first when
    ``for_push``); 400 when there is no such remote."""
    keys = (f"remote.{remote}.pushurl",) if for_push else ()
    for key in (*keys, f"remote.{remote}.url"):
        code, out, err = await git.run(("config", "--get", key), dirs.git_dir, timeout, dirs)
        if code == 0 and out.strip():
            return out.strip().splitlines()[-1]
        if code not in (0, 1):
            raise BackendFailed(f"cannot read the repository's config: {git.reason(err, code)}")
    raise InvalidRequest(
        f"the repository has no remote named {remote!r}",
        [{"field": "remote", "message": "no such remote"}],
    )


async def branch_head(dirs: GitDirs, branch: str, timeout: float) -> str | None:
    """The commit ``refs/heads/<branch>`` names, or None when there is no such branch."""
    code, out, _ = await git.run(
        ("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"),
        dirs.git_dir, timeout, dirs,
    )  # fmt: skip
    return out.strip() if code == 0 and out.strip() else None


async def tracking_head(dirs: GitDirs, remote: str, branch: str, timeout: float) -> str | None:
    """Where the repository last saw ``branch`` on ``remote`` (its remote-tracking ref)."""
    code, out, _ = await git.run(
        ("rev-parse", "--verify", "--quiet", f"refs/remotes/{remote}/{branch}^{{commit}}"),
        dirs.git_dir, timeout, dirs,
    )  # fmt: skip
    return out.strip() if code == 0 and out.strip() else None


async def push(record: SessionRecord, request: PushRequest, timeout: float) -> PushResult:
    """Push the session's branch of one repository; see the module's docstring."""
    repo = record.repository(request.repository)
    remote = valid_remote(request.remote)
    bound = log.bind(session_id=record.id, mount_name=repo.mount_name, remote=remote)
    dirs = await repo_dirs(repo)
    await remote_url(dirs, remote, timeout)
    branch = repo.branch_name
    head = await branch_head(dirs, branch, timeout)
    if head is None:
        raise Conflict(f"the session's branch {branch} does not exist", {"branch": branch})
    ref = f"refs/heads/{branch}"
    args: tuple[str, ...] = ("push", "--no-verify")
    if request.set_upstream:
        args += ("--set-upstream",)
    # No leading '+': a remote branch that moved on is refused, never overwritten.
    args += (remote, f"{ref}:{ref}")
    try:
        code, out, err = await git.run(args, dirs.git_dir, timeout, dirs, transport="push")
    except GitError as exc:
        bound.warning("push_failed", kind="timeout", error=exc.message)
        raise PushFailed(
            f"pushing {branch} to {remote} failed: {exc.message}",
            "timeout",
            remote,
            _bounded(exc.details or ""),
        ) from exc
    output = _bounded("\n".join(part for part in (err.strip(), out.strip()) if part))
    if code != 0:
        kind = classify(output)
        bound.warning("push_failed", kind=kind, exit_code=code)
        message = _MESSAGES[kind].format(branch=branch, remote=remote)
        if kind == "rejected":
            raise PushRejected(message, remote, output)
        raise PushFailed(message, kind, remote, output)
    bound.info("pushed", branch=branch, commit=head)
    return PushResult(
        mount_name=repo.mount_name, remote=remote, branch=branch, commit=head, output=output
    )


_MESSAGES: dict[str, str] = {
    "auth": "{remote} refused the push of {branch}: authentication failed",
    "rejected": "{remote} rejected {branch}: the remote branch has commits this one lacks; "
    "nothing was forced",
    "unreachable": "{remote} could not be reached to push {branch}",
    "failed": "pushing {branch} to {remote} failed",
}
