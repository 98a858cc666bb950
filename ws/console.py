"""``/ws/console/{session_id}``: a browser's (or ``corral attach``'s) view of a session's terminal.

Binary frames are terminal bytes both ways; text frames are JSON control messages
(PROTOCOL.md, "/ws/console"). Closing the socket only detaches this viewer: the daemon's
attachment, and the agent, go on.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import WSMsgType, web

from backends.base import BackendError
from daemon.core.console import Attachment, clamp_size
from daemon.core.jsonbound import JsonTooDeep
from daemon.core.models import SessionStatus
from daemon.http.routes import loads_json
from daemon.keys import CONSOLES, MANAGER, SETTINGS, SOCKETS
from ws.connection import Connection

log = structlog.get_logger(__name__)

CLOSE_NOT_FOUND = 4404
CLOSE_NOT_RUNNING = 4409
MAX_INPUT_FRAME = 1024 * 1024


async def _refuse(ws: web.WebSocketResponse, message: str, code: int) -> web.WebSocketResponse:
    await ws.send_json({"type": "error", "message": message})
    await ws.close(code=code, message=message.encode()[:120])
    return ws


def _size_from_query(request: web.Request) -> tuple[int, int] | None:
    try:
        cols = int(request.query.get("cols", "0"))
        rows = int(request.query.get("rows", "0"))
    except ValueError:
        return None
    return clamp_size(cols, rows)


async def _attachment_for(request: web.Request, session_id: str) -> Attachment | None:
    consoles = request.app[CONSOLES]
    attachment = consoles.get(session_id)
    if attachment is not None:
        return attachment
    record = request.app[MANAGER].records[session_id]
    if record.container_id is None:
        return None
    # Not attached yet (the engine was away at start-up, say): attach now, screen from the log.
    backend = request.app[MANAGER].backend_for(record)
    try:
        return await consoles.attach(session_id, backend, record.container_id, replay_log=True)
    except BackendError as exc:
        log.warning("console_attach_failed", session_id=session_id, error=exc.message)
        return None


async def console_socket(request: web.Request) -> web.WebSocketResponse:
    # The slot is taken before the upgrade, so a client over its bound gets a JSON 429.
    with request.app[SOCKETS].slot(request.remote):
        return await _console(request)


async def _console(request: web.Request) -> web.WebSocketResponse:
    session_id = request.match_info["session_id"]
    settings = request.app[SETTINGS].console
    # No compression: terminal output is high-volume and latency-sensitive.
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_seconds, compress=False, max_msg_size=MAX_INPUT_FRAME
    )
    await ws.prepare(request)
    record = request.app[MANAGER].records.get(session_id)
    if record is None:
        return await _refuse(ws, "Session not found", CLOSE_NOT_FOUND)
    if record.archived or record.status is not SessionStatus.RUNNING:
        return await _refuse(ws, f"Session is not running ({record.status.value})",
                             CLOSE_NOT_RUNNING)  # fmt: skip
    attachment = await _attachment_for(request, session_id)
    if attachment is None:
        return await _refuse(ws, "Session's terminal is not available", CLOSE_NOT_RUNNING)

    viewer = Connection(
        ws,
        max_bytes=settings.viewer_max_bytes,
        peak_bytes=settings.viewer_peak_bytes,
        peak_seconds=settings.viewer_peak_seconds,
        name=f"console:{session_id}",
        transport=request.transport,
    )
    viewer.start()
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    bound = log.bind(session_id=session_id)
    bound.info("console_viewer_joined", viewers=len(attachment.viewers) + 1)
    try:
        size = _size_from_query(request)
        if size is not None:
            try:
                await attachment.resize(*size)
            except BackendError as exc:
                viewer.send_json({"type": "error", "message": f"resize failed: {exc.message}"})
        attachment.add_viewer(viewer)
        async for message in ws:
            if message.type is WSMsgType.BINARY:
                await _keystrokes(attachment, viewer, message.data)
            elif message.type is WSMsgType.TEXT:
                await _control(attachment, viewer, message.data)
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        attachment.remove_viewer(viewer)
        sockets.discard(ws)
        await viewer.stop()
        bound.info("console_viewer_left", viewers=len(attachment.viewers))
    return ws


async def _keystrokes(attachment: Attachment, viewer: Connection, data: bytes) -> None:
    try:
        await attachment.write(data)
    except BackendError as exc:
        viewer.send_json({"type": "error", "message": f"input not delivered: {exc.message}"})


async def _control(attachment: Attachment, viewer: Connection, text: str) -> None:
    try:
        message: Any = loads_json(text)
    except JsonTooDeep as exc:
        viewer.send_json({"type": "error", "message": str(exc)})  # the socket stays open
        return
    except ValueError:
        viewer.send_json({"type": "error", "message": "control frames must be JSON"})
        return
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "resize":
        cols, rows = message.get("cols"), message.get("rows")
        valid = type(cols) is int and type(rows) is int
        size = clamp_size(cols, rows) if valid else None
        if size is None:
            viewer.send_json({"type": "error", "message": "resize needs integer cols 2-1000 "
                              "and rows 2-500"})  # fmt: skip
            return
        try:
            await attachment.resize(*size)
        except BackendError as exc:
            viewer.send_json({"type": "error", "message": f"resize failed: {exc.message}"})
    elif kind == "pause":
        viewer.pause()
    elif kind == "resume":
        viewer.resume()
    else:
        viewer.send_json({"type": "error", "message": f"unknown control type: {kind!r}"})
