"""REST handlers for landing a session's work: merge it back, or hand a refused merge to
its agent. The logic is ``daemon/core/landing.py``'s; these read requests and answer."""

from __future__ import annotations

from aiohttp import web

from daemon.core import landing
from daemon.core.changes_models import AskAgentRequest, AskAgentResult, MergeRequest, MergeResult
from daemon.core.errors import Conflict
from daemon.core.failures import api_error
from daemon.core.git import GitError
from daemon.core.manager import SessionManager
from daemon.core.session import SessionRecord
from daemon.http.routes import ROUTES, dump, read_body
from daemon.keys import MANAGER

SESSION = "/api/sessions/{session_id}"
TAGS = ("changes",)


async def _merge(manager: SessionManager, record: SessionRecord, body: MergeRequest) -> MergeResult:
    source = record.repository(body.repository)
    try:
        return await landing.merge(
            record.id, record.name, source, body, timeout=manager.settings.sessions.git_timeout
        )
    except GitError as exc:
        raise api_error(exc) from exc


@ROUTES.route(
    "POST",
    f"{SESSION}/merge",
    "Merge the session's branch into a target branch, or dry-run it",
    body=MergeRequest,
    response=MergeResult,
    errors=(400, 404, 409, 500),
    tags=TAGS,
    description="A dry run moves nothing and answers the verdict (clean, conflicts, "
    "refusal). A real merge first keeps the target's commit under refs/corral/backup/..., "
    "moves refs only with their old value as a check, never touches the session's worktree, "
    "and updates the user's clean checkout of the target. When it would lose anything it is "
    "refused: 409 CONFLICT whose details are the MergeResult, refusal saying why "
    "(uncommitted_changes, conflicts, target_dirty, target_moved, branch_moved, "
    "not_fast_forward, nothing_to_merge).",
)
async def merge_session(request: web.Request) -> web.Response:
    manager: SessionManager = request.app[MANAGER]
    record = manager.get(request.match_info["session_id"])
    body = await read_body(request, MergeRequest)
    return dump(await _merge(manager, record, body))


@ROUTES.route(
    "POST",
    f"{SESSION}/merge/ask-agent",
    "Ask the agent to rebase its branch and resolve what keeps it from merging",
    body=AskAgentRequest,
    body_optional=True,
    response=AskAgentResult,
    errors=(400, 404, 409, 500),
    tags=TAGS,
    description="Runs the dry run; when the branch conflicts with the target (or cannot "
    "fast-forward), sends the agent a message naming the target and the conflicting files. "
    "409 when there is nothing to resolve.",
)
async def ask_agent(request: web.Request) -> web.Response:
    manager: SessionManager = request.app[MANAGER]
    record = manager.get(request.match_info["session_id"])
    body = await read_body(request, AskAgentRequest, optional=True)
    merge = MergeRequest(
        strategy=body.strategy,
        repository=body.repository,
        target_branch=body.target_branch,
        dry_run=True,
    )
    result = await _merge(manager, record, merge)
    if result.refusal not in ("conflicts", "not_fast_forward"):
        raise Conflict("nothing to resolve: the branch merges without conflicts",
                       result.model_dump(mode="json"))  # fmt: skip
    message = landing.ask_agent_message(result.target_branch, body.strategy, result)
    await manager.send_message(record.id, message)
    return dump(AskAgentResult(sent=True, message=message, conflicts=result.conflicts))
