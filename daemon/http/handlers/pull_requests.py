"""REST handlers that send a session's work out: push its branch, open and show its PR."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from daemon.core import github, push
from daemon.core.changes_models import PullRequest, PullRequestRequest, PushRequest, PushResult
from daemon.core.errors import NotFound
from daemon.http.handlers.credentials import credentials_of
from daemon.http.routes import ROUTES, dump, read_body, read_query
from daemon.keys import MANAGER, PULL_REQUESTS, SETTINGS, STORE
from daemon.supervise.pull_requests import writer

SESSION = "/api/sessions/{session_id}"
TAGS = ("changes",)


class PullRequestQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repository: str | None = Field(None, min_length=1, description="Mount name; default primary.")


@ROUTES.route(
    "POST",
    f"{SESSION}/push",
    "Push the session's branch to a remote of its repository",
    body=PushRequest,
    response=PushResult,
    errors=(400, 404, 409, 502),
    body_optional=True,
    tags=TAGS,
    description="Pushes refs/heads/<branch> to the same name on the remote (default origin, "
    "which must be in the repository's config), never forced. No hook runs (no pre-push). "
    "A remote that has moved on is 409 (details.kind 'rejected'); an auth failure, an "
    "unreachable remote or a timeout is 502 BACKEND_ERROR with details {kind, remote, output}.",
)
async def push_branch(request: web.Request) -> web.Response:
    record = request.app[MANAGER].get(request.match_info["session_id"])
    body = await read_body(request, PushRequest, optional=True)
    timeout = request.app[SETTINGS].sessions.git_timeout
    return dump(await push.push(record, body, timeout))


@ROUTES.route(
    "POST",
    f"{SESSION}/pull-request",
    "Open a pull request on GitHub for the session's branch",
    body=PullRequestRequest,
    response=PullRequest,
    status=201,
    errors=(400, 404, 409, 502, 503),
    body_optional=True,
    tags=TAGS,
    description="Pushes the branch first when the remote lacks its head. 201 for a new pull "
    "request; 200 with the existing one when GitHub says one is open for the branch. Title "
    "and body default to the session's description and its commits; generate: true has the "
    "metadata model write them (409 unless metadata.ai_metadata). A token GitHub refuses is "
    "502; its rate limit is 503 with Retry-After. Kept and refreshed (pull_request events).",
)
async def create_pull_request(request: web.Request) -> web.Response:
    app = request.app
    record = app[MANAGER].get(request.match_info["session_id"])
    body = await read_body(request, PullRequestRequest, optional=True)
    settings = app[SETTINGS]
    pull, created = await github.open_pull_request(
        record,
        body,
        settings,
        app[PULL_REQUESTS],
        writer=writer(settings, app[STORE], credentials_of(app)),
    )
    return dump(pull, status=201 if created else 200)


@ROUTES.route(
    "GET",
    f"{SESSION}/pull-request",
    "The session's pull request, as last refreshed",
    query=PullRequestQuery,
    response=PullRequest,
    errors=(400, 404),
    tags=TAGS,
    description="404 NOT_FOUND when the session has none for that repository.",
)
async def get_pull_request(request: web.Request) -> web.Response:
    app = request.app
    record = app[MANAGER].get(request.match_info["session_id"])
    query = read_query(request, PullRequestQuery)
    repo = record.repository(query.repository)
    stored = (await app[PULL_REQUESTS].load(record.id)).get(repo.mount_name)
    if stored is None:
        raise NotFound(f"session {record.name} has no pull request for {repo.mount_name}")
    return dump(stored.pull_request)
