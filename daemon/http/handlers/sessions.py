"""REST handlers for sessions: list, create, read, change, act on and delete."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from daemon.core.manager import SessionManager
from daemon.core.models import (
    ChatEvent,
    ChatMessages,
    CreateSessionRequest,
    HealthReport,
    MessageRequest,
    MetadataUpdate,
    RecreateRequest,
    SessionDetail,
    SessionDetailEnvelope,
    SessionEnvelope,
    SessionList,
    SessionStatus,
)
from daemon.http.handlers.credentials import credentials_of
from daemon.http.routes import ROUTES, dump, read_body, read_query
from daemon.keys import HUB, LIST_CACHE, MANAGER, STORE
from daemon.supervise import metadata

SESSION = "/api/sessions/{session_id}"
TAGS = ("sessions",)


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_archived: bool = False
    status: SessionStatus | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class DeleteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False


def _manager(request: web.Request) -> SessionManager:
    return request.app[MANAGER]


def _session(request: web.Request, manager: SessionManager) -> web.Response:
    record = manager.get(request.match_info["session_id"])
    return dump(SessionEnvelope(session=manager.to_api(record)))


@ROUTES.route(
    "GET",
    "/api/sessions",
    "List sessions, newest first",
    query=ListQuery,
    response=SessionList,
    errors=(400,),
    tags=TAGS,
)
async def list_sessions(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    manager = _manager(request)
    cache = request.app[LIST_CACHE]
    key = (manager.version, query.include_archived, query.status, query.limit, query.offset)
    body = cache.get(key)
    if body is None:
        found = manager.query(include_archived=query.include_archived, status=query.status)
        page = found[query.offset : query.offset + query.limit]
        body = (
            SessionList(sessions=[manager.to_api(r) for r in page], total=len(found))
            .model_dump_json()
            .encode()
        )
        _remember(cache, key, body, manager.version)
    return web.Response(body=body, content_type="application/json")


def _remember(cache: dict[tuple[object, ...], bytes], key: tuple[object, ...], body: bytes,
              version: object) -> None:  # fmt: skip
    """Keep answers for the current version only, and not too many of them."""
    if len(cache) > 256 or any(k[0] != version for k in cache):
        cache.clear()
    cache[key] = body


@ROUTES.route(
    "POST",
    "/api/sessions",
    "Create a session; the work continues in the background",
    body=CreateSessionRequest,
    response=SessionEnvelope,
    status=201,
    errors=(400, 403, 409, 413, 503),
    tags=TAGS,
    description="Answers at once with status 'creating'; progress and the final "
    "status arrive as session_progress and session_status events. A path outside "
    "server.allowed_roots (when set) is 403, the same answer whether it exists or not.",
)
async def create_session(request: web.Request) -> web.Response:
    body = await read_body(request, CreateSessionRequest)
    manager = _manager(request)
    record = await manager.create(body)
    return dump(SessionEnvelope(session=manager.to_api(record)), status=201)


@ROUTES.route(
    "GET",
    SESSION,
    "Get a session with its chat history",
    response=SessionDetailEnvelope,
    errors=(404,),
    tags=TAGS,
)
async def get_session(request: web.Request) -> web.Response:
    manager = _manager(request)
    record = manager.get(request.match_info["session_id"])
    cache = request.app[LIST_CACHE]
    key = (manager.version, "detail", record.id, request.app[HUB].last_seq(record.id))
    body = cache.get(key)
    if body is None:
        history = [ChatEvent.model_validate(e) for e in await manager.chat_history(record)]
        detail = SessionDetail(**manager.to_api(record).model_dump(), chat_history=history)
        body = SessionDetailEnvelope(session=detail).model_dump_json().encode()
        _remember(cache, key, body, manager.version)
    return web.Response(body=body, content_type="application/json")


async def _update_metadata(request: web.Request) -> web.Response:
    manager = _manager(request)
    body = await read_body(request, MetadataUpdate)
    record = await manager.update_metadata(request.match_info["session_id"], body)
    return dump(SessionEnvelope(session=manager.to_api(record)))


ROUTES.route(
    "PATCH",
    f"{SESSION}/metadata",
    "Change name, description or tags",
    body=MetadataUpdate,
    response=SessionEnvelope,
    errors=(400, 404, 409),
    tags=TAGS,
)(_update_metadata)
ROUTES.route(
    "POST",
    f"{SESSION}/metadata",
    "Change name, description or tags (POST form)",
    body=MetadataUpdate,
    response=SessionEnvelope,
    errors=(400, 404, 409),
    tags=TAGS,
)(_update_metadata)


@ROUTES.route(
    "POST",
    f"{SESSION}/regenerate-metadata",
    "Have a model write name, description and tags from the chat history",
    response=SessionEnvelope,
    errors=(404, 409, 500),
    tags=TAGS,
    description="Only with metadata.ai_metadata = true (else 409). Applied as PATCH "
    "/metadata is: a new name is a display name only. When the model is unreachable, too "
    "slow, answers non-2xx or not the JSON asked for: 500 BACKEND_ERROR with "
    "details.reason (unreachable, timeout, http_status, invalid_answer) and the session "
    "unchanged.",
)
async def regenerate_metadata(request: web.Request) -> web.Response:
    manager = _manager(request)
    session_id = request.match_info["session_id"]
    record = await metadata.regenerate(
        manager, request.app[STORE], session_id, credentials=credentials_of(request.app)
    )
    return dump(SessionEnvelope(session=manager.to_api(record)))


@ROUTES.route(
    "DELETE",
    SESSION,
    "Delete a session; its branches are kept",
    query=DeleteQuery,
    status=202,
    errors=(400, 404, 409, 503),
    tags=TAGS,
    description="Without force, refused with 409 when a worktree has uncommitted "
    "changes or its branch has commits on no other branch (details list them).",
)
async def delete_session(request: web.Request) -> web.Response:
    query = read_query(request, DeleteQuery)
    manager = _manager(request)
    record = await manager.delete(request.match_info["session_id"], force=query.force)
    return dump(SessionEnvelope(session=manager.to_api(record)), status=202)


def _action_route(action: str, summary: str) -> None:
    """``POST /api/sessions/{id}/<action>``: run the manager's action, answer the session."""

    async def handler(request: web.Request) -> web.Response:
        manager = _manager(request)
        await getattr(manager, action)(request.match_info["session_id"])
        return _session(request, manager)

    handler.__name__ = f"{action}_session"
    ROUTES.route("POST", f"{SESSION}/{action}", summary, response=SessionEnvelope,
                 errors=(404, 409, 500, 503), tags=TAGS)(handler)  # fmt: skip


_action_route("archive", "Archive: remove the container, keep everything else")
_action_route("unarchive", "Unarchive: a new container on the same worktree")
_action_route("start", "Start a stopped container")
_action_route("refresh", "Re-resolve the image (pull if a registry answers), then recreate")


@ROUTES.route(
    "POST",
    f"{SESSION}/recreate",
    "New container, same worktree and conversation",
    body=RecreateRequest,
    body_optional=True,
    response=SessionEnvelope,
    errors=(400, 404, 409, 500, 503),
    tags=TAGS,
)
async def recreate_session(request: web.Request) -> web.Response:
    body = await read_body(request, RecreateRequest, optional=True)
    manager = _manager(request)
    await manager.recreate(request.match_info["session_id"], fresh=body.fresh)
    return _session(request, manager)


@ROUTES.route(
    "POST",
    f"{SESSION}/recreate-fresh",
    "New worktree from the base branch and a new container; loses uncommitted work",
    response=SessionEnvelope,
    errors=(404, 409, 500, 503),
    tags=TAGS,
    description="Commits on the session branch that exist on no other branch are "
    "kept on a renamed branch '<branch>-prev-<time>'.",
)
async def recreate_fresh_session(request: web.Request) -> web.Response:
    manager = _manager(request)
    await manager.recreate(request.match_info["session_id"], fresh=True)
    return _session(request, manager)


@ROUTES.route(
    "POST",
    f"{SESSION}/cleanup",
    "Remove container, worktree and record of a broken session",
    response=SessionEnvelope,
    status=202,
    errors=(404, 409, 503),
    tags=TAGS,
)
async def cleanup_session(request: web.Request) -> web.Response:
    manager = _manager(request)
    record = await manager.cleanup(request.match_info["session_id"])
    return dump(SessionEnvelope(session=manager.to_api(record)), status=202)


@ROUTES.route(
    "GET",
    f"{SESSION}/health",
    "Health report: state, offered actions, what each keeps",
    response=HealthReport,
    errors=(404, 503),
    tags=TAGS,
)
async def session_health(request: web.Request) -> web.Response:
    manager = _manager(request)
    record = manager.get(request.match_info["session_id"])
    return dump(await manager.health_or_stored(record))


class MessagesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: int = Field(0, ge=0, description="Only events with a higher seq.")
    limit: int = Field(100, ge=1, le=1000)


@ROUTES.route(
    "GET",
    f"{SESSION}/messages",
    "Chat events (messages, tool calls, tool results) after a seq, oldest first",
    query=MessagesQuery,
    response=ChatMessages,
    errors=(400, 404),
    tags=TAGS,
)
async def list_messages(request: web.Request) -> web.Response:
    query = read_query(request, MessagesQuery)
    manager = _manager(request)
    events = await manager.chat_events(request.match_info["session_id"], query.after, query.limit)
    return dump(
        ChatMessages(
            messages=[ChatEvent.model_validate(e) for e in events],
            next_after=events[-1]["seq"] if events else query.after,
        )
    )


@ROUTES.route(
    "POST",
    f"{SESSION}/message",
    "Send the agent the user's next message",
    body=MessageRequest,
    status=202,
    errors=(400, 404, 409),
    tags=TAGS,
    description="Typed into the agent's terminal as a bracketed paste, then Enter; 409 when "
    "the session is not running.",
)
async def send_message(request: web.Request) -> web.Response:
    body = await read_body(request, MessageRequest)
    await _manager(request).send_message(request.match_info["session_id"], body.content)
    return web.json_response({"status": "accepted"}, status=202)
