"""A session's pull request on GitHub: the REST client, where the PR is kept, and opening it.

:class:`GitHub` speaks GitHub's REST API (``[github] api_url``, a GitHub Enterprise one
too) with a token (``[github] token``, else ``GITHUB_TOKEN``, else ``gh auth token``) as a
bearer. Answers are bounded in size and time; GitHub's refusals become the usual errors:
401 is 502 "GitHub refused the token", a rate limit (403/429 with ``x-ratelimit-*`` or
``retry-after``) is 503 with ``Retry-After``, anything else 502 ``BACKEND_ERROR``.

:class:`PullRequestStore` keeps each session's pull requests (one per repository, by
mount name) as a small JSON file under ``<data_dir>/pull-requests/``: daemon-owned (no
container mounts it), written whole by rename, read without following links and bounded.
It also holds the ETags of the last answers so the refresher asks conditionally.

:func:`open_pull_request` is ``POST .../pull-request``: it pushes the branch first when the
remote does not have its head (daemon/core/push.py), then creates the PR; when GitHub says
one already exists for the branch, that one is fetched and returned instead.
"""

# Every call takes a per-call timeout on purpose, like git's (see daemon/core/git.py).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError

from daemon.core import git, push
from daemon.core.changes_models import Checks, PullRequest, PullRequestRequest, PushRequest
from daemon.core.errors import BackendFailed, BackendUnavailableError, Conflict, InvalidRequest
from daemon.core.gitdirs import read_bounded
from daemon.core.session import SessionRecord
from daemon.settings import Settings

__all__ = [
    "GitHub",
    "GitHubError",
    "GitHubRateLimited",
    "PullRequestExists",
    "PullRequestStore",
    "StoredPullRequest",
    "Writer",
    "checks_from",
    "github_token",
    "head_sha",
    "open_pull_request",
    "parse_remote",
    "pull_request_from",
]

log = structlog.get_logger(__name__)

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
REQUEST_TIMEOUT = 30.0
GH_TIMEOUT = 10.0
# A pull request or a page of check runs is far below this; more is not an answer of GitHub's.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
MAX_STORE_BYTES = 1024 * 1024
MAX_BODY_COMMITS = 50
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
# user@host:path, git's scp-like form of an ssh URL.
_SCP = re.compile(r"^(?:[^@/:]+@)?([^/:]+):(.+)$")

# Writes a PR's title and body from the session (the metadata model): (record, subjects).
Writer = Callable[[SessionRecord, list[str]], Awaitable[tuple[str, str]]]


class GitHubError(BackendFailed):
    """GitHub refused or failed; not the daemon's fault, so 502. ``details.status`` is
    GitHub's status when it answered."""

    status = 502


class GitHubRateLimited(BackendUnavailableError):
    """GitHub's rate limit: 503 with ``Retry-After`` until the limit resets."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class PullRequestExists(Exception):
    """GitHub's 422 "A pull request already exists" for this head."""


@dataclass(frozen=True)
class Answer:
    status: int
    data: Any
    etag: str | None


def _message(data: Any) -> str:
    if isinstance(data, dict):
        message = str(data.get("message", ""))
        errors = data.get("errors")
        if isinstance(errors, list):
            extra = [str(e.get("message", "")) for e in errors if isinstance(e, dict)]
            message = "; ".join(m for m in (message, *extra) if m)
        return message[:500]
    return ""


def _retry_after(headers: Mapping[str, str]) -> int | None:
    """Seconds until GitHub lifts a rate limit, when its answer says it is one."""
    if "retry-after" in headers:
        with contextlib.suppress(ValueError):
            return max(1, int(headers["retry-after"]))
    reset = headers.get("x-ratelimit-reset")
    if reset is not None and (headers.get("x-ratelimit-remaining") in (None, "0")):
        with contextlib.suppress(ValueError):
            return max(1, int(reset) - int(time.time()))
    return None


class GitHub:
    """One conversation with GitHub's REST API; use as ``async with GitHub(...) as gh``."""

    def __init__(self, api_url: str, token: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self.api_url = api_url.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "corral",
        }
        self._timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GitHub:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def request(
        self, method: str, path: str, *, body: Any = None, etag: str | None = None
    ) -> Answer:
        """One call; 304 is returned (only asked for with ``etag``), every failure raised."""
        assert self._http is not None, "use GitHub as an async context manager"
        headers = dict(self._headers)
        if etag is not None:
            headers["If-None-Match"] = etag
        try:
            async with self._http.request(
                method, self.api_url + path, json=body, headers=headers
            ) as response:
                status, answer_headers = response.status, response.headers
                raw = await self._read(response)
        except TimeoutError as exc:
            raise GitHubError(
                f"GitHub did not answer within {self._timeout:g} s", {"reason": "timeout"}
            ) from exc
        except aiohttp.ClientError as exc:
            # The message names the host and the socket error, never the token.
            raise GitHubError(
                f"GitHub could not be reached: {exc}", {"reason": "unreachable"}
            ) from exc
        if status == 304:
            return Answer(304, None, answer_headers.get("etag") or etag)
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError:
            data = None
        if 200 <= status < 300:
            return Answer(status, data, answer_headers.get("etag"))
        message = _message(data)
        details = {"status": status, "message": message}
        if status == 401:
            raise GitHubError("GitHub refused the token", details)
        if status in (403, 429):
            wait = _retry_after(answer_headers)
            if wait is not None:
                raise GitHubRateLimited(
                    f"GitHub's rate limit is reached; it resets in {wait} s", wait
                )
            raise GitHubError(f"GitHub refused the call: {message or status}", details)
        if status == 422 and "already exists" in message.lower():
            raise PullRequestExists(message)
        if status == 404:
            raise GitHubError(
                f"GitHub has no such resource ({path}), or the token cannot see it", details
            )
        raise GitHubError(f"GitHub answered {status}: {message or '(no message)'}", details)

    @staticmethod
    async def _read(response: aiohttp.ClientResponse) -> bytes:
        data = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > MAX_ANSWER_BYTES:
                raise GitHubError(f"GitHub's answer is over {MAX_ANSWER_BYTES} bytes")
        return bytes(data)

    @staticmethod
    def _repo_path(owner: str, repo: str) -> str:
        return f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"

    async def create_pull(
        self, owner: str, repo: str, *, title: str, body: str, head: str, base: str, draft: bool
    ) -> dict[str, Any]:
        answer = await self.request(
            "POST",
            f"{self._repo_path(owner, repo)}/pulls",
            body={"title": title, "body": body, "head": head, "base": base, "draft": draft},
        )
        return _object(answer.data)

    async def find_pull(self, owner: str, repo: str, branch: str) -> dict[str, Any] | None:
        """The newest pull request whose head is ``owner:branch``, open or not."""
        query = f"?head={quote(f'{owner}:{branch}', safe='')}&state=all&per_page=1"
        answer = await self.request("GET", f"{self._repo_path(owner, repo)}/pulls{query}")
        found = answer.data if isinstance(answer.data, list) else []
        return _object(found[0]) if found else None

    async def get_pull(self, owner: str, repo: str, number: int, etag: str | None) -> Answer:
        return await self.request(
            "GET", f"{self._repo_path(owner, repo)}/pulls/{number}", etag=etag
        )

    async def check_runs(self, owner: str, repo: str, sha: str, etag: str | None) -> Answer:
        return await self.request(
            "GET",
            f"{self._repo_path(owner, repo)}/commits/{quote(sha, safe='')}/check-runs?per_page=100",
            etag=etag,
        )


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GitHubError("GitHub's answer is not a JSON object")
    return data


# --- shapes ----------------------------------------------------------------------------

_PASSED = frozenset({"success", "neutral", "skipped"})


def checks_from(data: Any) -> Checks:
    """The check runs of a commit, summed up (the first page: at most 100 runs)."""
    runs = data.get("check_runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        raise GitHubError("GitHub's check runs answer has no check_runs")
    passed = failed = pending = 0
    for run in runs:
        if not isinstance(run, dict):
            continue
        if run.get("status") != "completed":
            pending += 1
        elif run.get("conclusion") in _PASSED:
            passed += 1
        else:
            failed += 1
    total = passed + failed + pending
    state = "none" if total == 0 else "failure" if failed else "pending" if pending else "success"
    return Checks(state=state, total=total, passed=passed, failed=failed, pending=pending)


def pull_request_from(data: dict[str, Any], mount_name: str, checks: Checks | None) -> PullRequest:
    """GitHub's pull request object as the API's :class:`PullRequest`."""
    try:
        merged = bool(data.get("merged") or data.get("merged_at"))
        return PullRequest(
            mount_name=mount_name,
            number=data["number"],
            url=data["html_url"],
            state="merged" if merged else data["state"],
            draft=bool(data.get("draft", False)),
            title=data["title"],
            head=data["head"]["ref"],
            base=data["base"]["ref"],
            checks=checks,
            updated_at=data.get("updated_at"),
        )
    except (KeyError, TypeError, ValidationError) as exc:
        raise GitHubError(f"GitHub's pull request answer is not usable: {exc}") from None


def head_sha(data: dict[str, Any]) -> str | None:
    head = data.get("head")
    sha = head.get("sha") if isinstance(head, dict) else None
    return sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def parse_remote(url: str, api_url: str) -> tuple[str, str]:
    """``(owner, repo)`` of a remote URL: ``https://host/o/r(.git)``, ``ssh://...`` or
    ``git@host:o/r(.git)``. With GitHub's own API the host must be GitHub's; with a
    GitHub Enterprise ``api_url`` any host is taken (it names the server)."""
    if "://" in url:
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
    elif match := _SCP.match(url):
        host, path = match.group(1), match.group(2)
    else:
        host, path = "", ""
    segments = [s for s in path.strip("/").split("/") if s]
    github_api = urlsplit(api_url).hostname == urlsplit(DEFAULT_API_URL).hostname
    if len(segments) >= 2:
        owner, repo = segments[-2], segments[-1].removesuffix(".git")
        on_github = host == "github.com" or host.endswith(".github.com")
        if _NAME.fullmatch(owner) and _NAME.fullmatch(repo) and (on_github or not github_api):
            return owner, repo
    raise InvalidRequest(
        f"the remote's URL {url!r} does not name a GitHub repository",
        [{"field": "remote", "message": "not a GitHub repository"}],
    )


# --- the token -------------------------------------------------------------------------


async def _gh_token() -> str | None:
    """``gh auth token``, run without a shell and bounded; None when gh is absent or fails."""
    program = shutil.which("gh")
    if program is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "auth", "token",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except OSError:
        return None
    try:
        async with asyncio.timeout(GH_TIMEOUT):
            out, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        log.warning("gh_auth_token_timeout")
        return None
    token = out.decode("utf-8", "replace").strip()
    return token if proc.returncode == 0 and token and len(token) < 1024 else None


async def github_token(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """``[github] token``, else ``GITHUB_TOKEN``, else ``gh auth token``; None: no token."""
    environ = os.environ if environ is None else environ
    return (
        settings.github.token.get_secret_value()
        or environ.get("GITHUB_TOKEN", "").strip()
        or await _gh_token()
    )


async def require_token(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    token = await github_token(settings, environ)
    if not token:
        raise Conflict(
            "no GitHub token: set [github] token or GITHUB_TOKEN, or sign in with `gh auth login`"
        )
    return token


# --- the store -------------------------------------------------------------------------


class StoredPullRequest(BaseModel):
    pull_request: PullRequest
    owner: str
    repo: str
    head_sha: str | None = None
    pull_etag: str | None = None
    checks_etag: str | None = None


class _Stored(BaseModel):
    by_mount: dict[str, StoredPullRequest] = {}


class PullRequestStore:
    """Each session's pull requests, a JSON file a session under ``<data_dir>/pull-requests``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "pull-requests"
        self._locks: dict[str, asyncio.Lock] = {}

    def _path(self, session_id: str) -> Path:
        if not _NAME.fullmatch(session_id):
            raise InvalidRequest("invalid session id")
        return self.root / f"{session_id}.json"

    def lock(self, session_id: str) -> asyncio.Lock:
        """Held around a read-change-write of one session's file."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def load(self, session_id: str) -> dict[str, StoredPullRequest]:
        raw = await asyncio.to_thread(read_bounded, self._path(session_id), MAX_STORE_BYTES)
        if raw is None:
            return {}
        try:
            return _Stored.model_validate_json(raw).by_mount
        except ValidationError:
            log.warning("pull_request_store_unreadable", session_id=session_id)
            return {}

    async def save(self, session_id: str, stored: dict[str, StoredPullRequest]) -> None:
        path = self._path(session_id)
        data = _Stored(by_mount=stored).model_dump_json().encode()

        def write() -> None:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(path)

        await asyncio.to_thread(write)

    async def sessions(self) -> list[str]:
        """The sessions with a file."""

        def names() -> list[str]:
            try:
                return [p.stem for p in self.root.glob("*.json")]
            except OSError:
                return []

        return await asyncio.to_thread(names)

    async def forget(self, session_id: str) -> None:
        self._locks.pop(session_id, None)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._path(session_id).unlink)


# --- opening one -----------------------------------------------------------------------


async def _subjects(dirs: git.GitDirs, base: str, branch: str, timeout: float) -> list[str]:
    """The branch's commits not on the base, oldest first, by subject (bounded)."""
    code, out, _ = await git.run(
        ("log", "--no-ext-diff", "--no-textconv", "--reverse", "-z", "--format=%s",
         f"--max-count={MAX_BODY_COMMITS}", f"refs/heads/{base}..refs/heads/{branch}"),
        dirs.git_dir, timeout, dirs,
    )  # fmt: skip
    return [s[:200] for s in out.split("\0") if s.strip()] if code == 0 else []


def default_title(record: SessionRecord) -> str:
    first = record.description.strip().splitlines()[0] if record.description.strip() else ""
    return (first or record.name)[:256]


def default_body(record: SessionRecord, subjects: list[str]) -> str:
    parts = [record.description.strip()] if record.description.strip() else []
    if subjects:
        parts.append("Commits:\n" + "\n".join(f"- {s}" for s in subjects))
    parts.append(f"Opened from corral session `{record.name}`.")
    return "\n\n".join(parts)


async def open_pull_request(
    record: SessionRecord,
    request: PullRequestRequest,
    settings: Settings,
    store: PullRequestStore,
    *,
    writer: Writer | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[PullRequest, bool]:
    """Push when needed, then open the PR; ``(pull request, created)``. When one already
    exists for the branch it is returned with ``created`` False."""
    timeout = settings.sessions.git_timeout
    repo = record.repository(request.repository)
    remote = push.valid_remote(request.remote)
    bound = log.bind(session_id=record.id, mount_name=repo.mount_name, remote=remote)
    if request.generate and (writer is None or not settings.metadata.ai_metadata):
        raise Conflict("AI metadata is off; set metadata.ai_metadata = true to use generate")
    dirs = await push.repo_dirs(repo)
    url = await push.remote_url(dirs, remote, timeout, for_push=False)
    owner, name = parse_remote(url, settings.github.api_url)
    token = await require_token(settings, environ)
    branch, base = repo.branch_name, request.base or repo.base_branch
    head = await push.branch_head(dirs, branch, timeout)
    if head is None:
        raise Conflict(f"the session's branch {branch} does not exist", {"branch": branch})
    subjects = await _subjects(dirs, repo.base_branch, branch, timeout)
    title, body = request.title, request.body
    if request.generate and writer is not None:
        written_title, written_body = await writer(record, subjects)
        title, body = title or written_title, body if body is not None else written_body
    title = title or default_title(record)
    body = body if body is not None else default_body(record, subjects)
    if await push.tracking_head(dirs, remote, branch, timeout) != head:
        await push.push(
            record, PushRequest(repository=repo.mount_name, remote=remote, set_upstream=True),
            timeout,
        )  # fmt: skip
    created = True
    async with GitHub(settings.github.api_url, token) as gh:
        try:
            data = await gh.create_pull(
                owner, name, title=title, body=body, head=branch, base=base, draft=request.draft
            )
        except PullRequestExists:
            found = await gh.find_pull(owner, name, branch)
            if found is None:
                raise GitHubError(
                    "GitHub says a pull request exists for this branch but lists none"
                ) from None
            data, created = found, False
        sha = head_sha(data)
        checks, checks_etag = None, None
        if sha is not None:
            try:
                answer = await gh.check_runs(owner, name, sha, None)
                checks, checks_etag = checks_from(answer.data), answer.etag
            except (GitHubError, GitHubRateLimited) as exc:
                # The PR is open; its checks come with the next refresh.
                bound.warning("pull_request_checks_unread", error=exc.message)
    pull = pull_request_from(data, repo.mount_name, checks)
    async with store.lock(record.id):
        stored = await store.load(record.id)
        stored[repo.mount_name] = StoredPullRequest(
            pull_request=pull, owner=owner, repo=name, head_sha=sha, checks_etag=checks_etag
        )
        await store.save(record.id, stored)
    bound.info("pull_request_opened" if created else "pull_request_found", number=pull.number)
    return pull, created
