"""``/ws/events``: lifecycle and chat events to clients, ``send_message`` from them.

A client subscribes to ``"*"`` (every session's lifecycle events) or to one session (all
of its events, chat included), optionally with ``since_seq`` to replay what it missed
from the store. Replay and live delivery meet without a gap or a duplicate: while the
stored events are read, live ones for that session are held back, then only those with a
higher seq are let through. Each client has its own bounded queue and writer task; one
that cannot keep up is closed with 1013 and resumes with ``since_seq``.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from daemon.core.errors import ApiError
from daemon.core.hub import Event
from daemon.core.jsonbound import JsonTooDeep
from daemon.core.manager import SessionManager
from daemon.http.routes import loads_json
from daemon.keys import HUB, MANAGER, SETTINGS, SOCKETS, STORE
from ws.connection import Connection

log = structlog.get_logger(__name__)

LIFECYCLE = frozenset(
    {"session_created", "session_status", "session_progress", "session_deleted",
     "session_updated", "usage", "pull_request", "session_changes"}
)  # fmt: skip
MAX_CLIENT_FRAME = 64 * 1024
REPLAY_PAGE = 1000
# Lifecycle seqs a socket remembers per session it is not subscribed to (sessions change
# state a handful of times, so this is far more than a replay can meet).
LIFECYCLE_MEMORY = 1024


_last_encoded: tuple[Event | None, str] = (None, "")


def _encoded(event: Event) -> str:
    """The event's JSON, encoded once however many sockets it goes to.

    The hub hands one event object to every subscriber in turn, so remembering the last one
    spares all but the first ``json.dumps``. The object itself is kept (not its ``id``), so
    a later event can never be mistaken for it.
    """
    global _last_encoded
    if _last_encoded[0] is not event:
        _last_encoded = (event, json.dumps(event))
    return _last_encoded[1]


class EventClient:
    """One socket's subscriptions, and what it has been sent of each session.

    ``sent`` is how far a session's own stream (every event type) has gone to this socket;
    lifecycle events that reached it only through ``"*"`` are remembered apart, by seq, so
    a later subscription to that session with ``since_seq`` replays everything the socket
    has not had (chat events between them included) and nothing twice.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.everything = False
        self.sessions: set[str] = set()
        self.sent: dict[str, int] = {}
        self.lifecycle_sent: dict[str, deque[int]] = {}
        self.held: dict[str, list[Event]] = {}  # live events held during a replay

    def __call__(self, event: Event) -> None:
        session_id = event["session_id"]
        if session_id in self.held:
            self.held[session_id].append(event)
        elif session_id in self.sessions:
            self.deliver(event)
        elif self.everything and event["type"] in LIFECYCLE:
            seen = self.lifecycle_sent.setdefault(session_id, deque(maxlen=LIFECYCLE_MEMORY))
            seen.append(event["seq"])
            self.connection.send_text(_encoded(event))

    def deliver(self, event: Event) -> None:
        """An event of a subscribed session's stream, unless this socket has had it."""
        session_id, seq = event["session_id"], event["seq"]
        if seq <= self.sent.get(session_id, 0) or seq in self.lifecycle_sent.get(session_id, ()):
            return
        self.sent[session_id] = seq
        self.connection.send_text(_encoded(event))

    def error(self, code: str, message: str, **details: Any) -> None:
        payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if details:
            payload["details"] = details
        self.connection.send_json(payload)


async def events_socket(request: web.Request) -> web.WebSocketResponse:
    # The slot is taken before the upgrade, so a client over its bound gets a JSON 429.
    with request.app[SOCKETS].slot(request.remote):
        return await _events(request)


async def _events(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    # No compression: events are small and the client is on this machine, so deflating
    # every frame for every socket would cost CPU and save nothing.
    ws = web.WebSocketResponse(
        heartbeat=settings.console.heartbeat_seconds,
        max_msg_size=MAX_CLIENT_FRAME,
        compress=False,
    )
    await ws.prepare(request)
    connection = Connection(
        ws,
        max_bytes=settings.events.client_max_bytes,
        peak_bytes=settings.events.client_peak_bytes,
        peak_seconds=settings.events.client_peak_seconds,
        name="events",
        transport=request.transport,
        max_messages=settings.events.client_max_messages,
    )
    connection.start()
    client = EventClient(connection)
    hub = request.app[HUB]
    hub.listen(client)
    request.app[SOCKETS].add(ws)
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await _handle(request, client, message.data)
            elif message.type is WSMsgType.BINARY:
                client.error("INVALID_REQUEST", "binary frames are not accepted here")
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        hub.unlisten(client)
        request.app[SOCKETS].discard(ws)
        await connection.stop()
    return ws


async def _handle(request: web.Request, client: EventClient, text: str) -> None:
    try:
        message: Any = loads_json(text)
    except JsonTooDeep as exc:
        client.error("INVALID_REQUEST", str(exc))  # the socket stays open
        return
    except ValueError:
        client.error("INVALID_REQUEST", "messages must be JSON objects")
        return
    if not isinstance(message, dict):
        client.error("INVALID_REQUEST", "messages must be JSON objects")
        return
    kind = message.get("type")
    manager = request.app[MANAGER]
    if kind == "ping":
        client.connection.send_json({"type": "pong"})
    elif kind == "subscribe":
        await _subscribe(request, client, manager, message)
    elif kind == "unsubscribe":
        target = message.get("session_id")
        if target == "*":
            client.everything = False
        else:
            client.sessions.discard(str(target))
        client.connection.send_json({"type": "unsubscribed", "session_id": target})
    elif kind == "send_message":
        session_id, content = message.get("session_id"), message.get("content")
        if not isinstance(session_id, str) or not isinstance(content, str):
            client.error("INVALID_REQUEST", "send_message needs session_id and content strings")
            return
        try:
            await manager.send_message(session_id, content)
        except ApiError as exc:
            client.error(exc.code, exc.message)
    else:
        client.error("INVALID_REQUEST", f"unknown message type: {kind!r}")


async def _subscribe(
    request: web.Request, client: EventClient, manager: SessionManager, message: dict[str, Any]
) -> None:
    target = message.get("session_id")
    since = message.get("since_seq")
    if since is not None and (type(since) is not int or since < 0):
        client.error("INVALID_REQUEST", "since_seq must be a whole number")
        return
    if target == "*":
        client.everything = True
        client.connection.send_json({"type": "subscribed", "session_id": "*"})
        return
    if not isinstance(target, str) or target not in manager.records:
        client.error("SESSION_NOT_FOUND", f"Session with ID '{target}' not found")
        return
    latest = request.app[HUB].last_seq(target)
    if since is not None and since > latest:
        client.error("INVALID_REQUEST", f"since_seq {since} is beyond the latest event "
                     f"({latest})", latest_seq=latest)  # fmt: skip
        return
    client.sessions.add(target)
    client.connection.send_json({"type": "subscribed", "session_id": target, "latest_seq": latest})
    if since is None:
        client.sent[target] = max(client.sent.get(target, 0), latest)
        return
    await _replay(request, client, target, since)


async def _replay(request: web.Request, client: EventClient, session_id: str, since: int) -> None:
    store = request.app[STORE]
    client.held[session_id] = []
    try:
        after = max(since, client.sent.get(session_id, 0))
        while not client.connection.closing:
            page = await store.events_after(session_id, after, REPLAY_PAGE)
            for event in page:
                client.deliver(event)
            # A replay must not look like a client falling behind: send it page by page.
            await client.connection.wait_for_room(REPLAY_PAGE)
            if len(page) < REPLAY_PAGE:
                break
            after = page[-1]["seq"]
    finally:
        for event in client.held.pop(session_id, []):
            client.deliver(event)
