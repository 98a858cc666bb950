"""REST handlers for a session's work: its diff (as files, one file's patch, or the whole
patch) and its commits. The git work is ``daemon/core/changes.py``'s."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from daemon.core import changes
from daemon.core.changes_models import (
    DiffTotals,
    Include,
    RepoDiff,
    SessionCommits,
    SessionDiff,
)
from daemon.core.errors import BackendFailed, InvalidRequest
from daemon.core.git import GitError
from daemon.core.models import Repository
from daemon.core.session import SessionRecord
from daemon.http.routes import ROUTES, dump, read_query
from daemon.keys import MANAGER, SETTINGS

SESSION = "/api/sessions/{session_id}"
TAGS = ("changes",)
MAX_LIMIT = 5000
PATCH_TYPE = "text/x-diff"
T = TypeVar("T")


class DiffQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include: Include = "all"
    repository: str | None = Field(
        None, min_length=1, max_length=64, description="A mount name; default all."
    )
    offset: int = Field(0, ge=0)
    limit: int | None = Field(
        None, ge=1, le=MAX_LIMIT, description="Files per page; default changes.max_files_per_page."
    )
    # Bounded so that the request line stays under the server's 8 KiB even when every
    # character is a 4-byte one, percent-encoded.
    path: str | None = Field(
        None, min_length=1, max_length=512, description="One changed file: its unified patch."
    )
    format: Literal["json", "patch"] = Field("json", description="patch: the whole as text/x-diff.")


class CommitsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: str | None = Field(
        None, min_length=1, max_length=64, description="A mount name; default all."
    )


def _repositories(record: SessionRecord, mount: str | None) -> list[Repository]:
    """Every repository of the session, or the one mounted as ``mount``."""
    return list(record.repositories) if mount is None else [record.repository(mount)]


async def _git(call: Awaitable[T], record: SessionRecord) -> T:
    """A git failure is the backend's, said in git's words."""
    try:
        return await call
    except GitError as exc:
        raise BackendFailed(f"session {record.id}: {exc.message}", exc.details) from exc


def _limits(request: web.Request) -> changes.DiffLimits:
    settings = request.app[SETTINGS]
    return changes.DiffLimits(
        max_patch_bytes=settings.changes.max_patch_bytes,
        max_total_patch_bytes=settings.changes.max_total_patch_bytes,
        big_file_bytes=settings.changes.big_file_bytes,
        timeout=settings.sessions.git_timeout,
    )


@ROUTES.route(
    "GET",
    f"{SESSION}/diff",
    "The session's work against the merge base with its base branch",
    query=DiffQuery,
    response=SessionDiff,
    errors=(400, 404, 409, 413),
    tags=TAGS,
    description="Per repository (or `repository=<mount>`): committed is merge-base..branch, "
    "uncommitted the worktree (untracked files too, .gitignore respected) against the "
    "branch, all merge-base..worktree. Files are paged (`offset`, `limit`, `next_offset`, "
    "per repository); a file over changes.max_patch_bytes is `summarised`. With `path=` "
    "(a changed file as listed) the answer is that file's unified patch, with "
    "`format=patch` the whole diff, both as text/x-diff (413 over the configured limits). "
    "409 when the branch or its base branch is gone.",
)
async def session_diff(request: web.Request) -> web.Response:
    query = read_query(request, DiffQuery)
    record = request.app[MANAGER].get(request.match_info["session_id"])
    repos = _repositories(record, query.repository)
    limits = _limits(request)
    if query.path is not None:
        if len(repos) != 1 and query.repository is None:
            repos = [record.primary]
        if "\0" in query.path:
            raise InvalidRequest("path contains a NUL byte", [{"field": "path", "message": "NUL"}])
        body = await _git(changes.patch(repos[0], query.include, limits, query.path), record)
        return web.Response(body=body, content_type=PATCH_TYPE, charset="utf-8")
    if query.format == "patch":
        parts: list[bytes] = []
        for repo in repos:
            left = limits.max_total_patch_bytes - sum(len(p) for p in parts)
            bounded = changes.DiffLimits(
                limits.max_patch_bytes, max(left, 0), limits.big_file_bytes, limits.timeout
            )
            parts.append(await _git(changes.patch(repo, query.include, bounded), record))
        return web.Response(body=b"".join(parts), content_type=PATCH_TYPE, charset="utf-8")
    limit = query.limit or request.app[SETTINGS].changes.max_files_per_page
    answers = []
    for repo in repos:
        view = await _git(
            changes.diff_view(repo, query.include, limits, page=(query.offset, limit)), record
        )
        files, next_offset = view.page(query.offset, limit)
        answers.append(
            RepoDiff(
                mount_name=repo.mount_name,
                repo_path=repo.path,
                branch=repo.branch_name,
                base_branch=repo.base_branch,
                merge_base=view.merge_base,
                head_commit=view.head_commit,
                includes_uncommitted=view.includes_uncommitted,
                totals=view.totals,
                files=files,
                next_offset=next_offset,
            )
        )
    totals = DiffTotals(
        files=sum(a.totals.files for a in answers),
        additions=sum(a.totals.additions for a in answers),
        deletions=sum(a.totals.deletions for a in answers),
    )
    return dump(
        SessionDiff(
            session_id=record.id, include=query.include, totals=totals, repositories=answers
        )
    )


@ROUTES.route(
    "GET",
    f"{SESSION}/commits",
    "The session branch's commits not on its base branch, newest first",
    query=CommitsQuery,
    response=SessionCommits,
    errors=(400, 404, 409),
    tags=TAGS,
    description=f"Per repository, at most {changes.MAX_COMMITS} (then `truncated`).",
)
async def session_commits(request: web.Request) -> web.Response:
    query = read_query(request, CommitsQuery)
    record = request.app[MANAGER].get(request.match_info["session_id"])
    timeout = request.app[SETTINGS].sessions.git_timeout
    found = [
        await _git(changes.commits(repo, timeout), record)
        for repo in _repositories(record, query.repository)
    ]
    return dump(SessionCommits(session_id=record.id, repositories=found))
