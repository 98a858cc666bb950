"""What ``/ws/console`` means to the client (PROTOCOL.md): its URL, close codes and size
range, and the :class:`Outcome` a bridge ends with, whose ``status`` is the exit status.

Exit statuses: 0 detached; the agent's own code when it exits; 1 connection failure or
any other error; 2 the session does not exist; 3 the session is not running; 128 + N
when signal N ended the client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from yarl import URL

from daemon.core.console import MAX_COLS, MAX_ROWS, MIN_COLS, MIN_ROWS

EXIT_DETACHED = 0
EXIT_FAILED = 1
EXIT_NOT_FOUND = 2
EXIT_NOT_RUNNING = 3

# Close codes of /ws/console (PROTOCOL.md); ws.console is not imported, it drags in the app.
CLOSE_NOT_FOUND = 4404
CLOSE_NOT_RUNNING = 4409
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

Size = tuple[int, int]  # cols, rows


def console_url(base_url: str, session_id: str) -> URL:
    """The console socket of ``session_id`` on the daemon at ``base_url`` (http or ws)."""
    base = URL(base_url)
    if base.scheme not in ("http", "https", "ws", "wss") or not base.host:
        raise ValueError(f"daemon URL {base_url!r} must look like http://127.0.0.1:3030")
    # One opaque segment: a "/" or ".." in an id must not reach another route.
    segment = quote(session_id, safe="").replace(".", "%2E")
    return (
        base.with_query(None).with_fragment(None).joinpath("ws", "console", segment, encoded=True)
    )


def clamp(size: Size) -> Size:
    """Into the range the daemon accepts; a 1-row or 2000-column terminal still attaches."""
    cols, rows = size
    return min(max(cols, MIN_COLS), MAX_COLS), min(max(rows, MIN_ROWS), MAX_ROWS)


@dataclass(frozen=True)
class Outcome:
    """How a bridge ended: ``status`` is the client's exit status."""

    status: int
    reason: str  # detached, exited, not_found, not_running, failed, signal
    message: str
    exit_code: int | None = None


def handshake_message(exc: aiohttp.WSServerHandshakeError, url: URL) -> str:
    """Why the daemon refused the socket, with what to do about it."""
    if exc.status == 401:
        if os.environ.get("CORRAL_TOKEN", "").strip():
            return "the daemon refused the API token in CORRAL_TOKEN (401): revoked or mistyped?"
        return (
            "the daemon requires authentication (401): set CORRAL_TOKEN to an API token "
            "(create one while signed in: POST /api/auth/tokens)"
        )
    if exc.status == 403:
        return f"the daemon refused the console connection (403): {exc.message}"
    if exc.status == 404:
        return f"no corral console at {url} (404); is --url a corral daemon?"
    return f"console connection refused ({exc.status}): {exc.message}"
