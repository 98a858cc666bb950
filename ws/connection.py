"""One WebSocket connection's outbound side: a bounded queue drained by its own writer task.

Producers (the console fan-out, the event hub) call :meth:`Connection.send_bytes` or
:meth:`Connection.send_json`, which never wait: a slow client can only ever hold itself
back. Consecutive binary frames are coalesced into frames of at most ``frame_bytes``
(small slices keep one busy socket from starving the others on the shared loop). A client
whose queue stays above ``peak_bytes`` for ``peak_seconds``, or ever passes ``max_bytes``,
is closed with 1013 (try again later); it reconnects and is brought up to date then.
Home Assistant's ``websocket_api/http.py`` works the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import structlog
from aiohttp import WSCloseCode, web

from daemon.core.errors import ApiError

log = structlog.get_logger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
FINISH_SECONDS = 5.0  # how long an orderly close waits for queued output to go
CLOSE_SECONDS = 2.0  # how long a close waits for the client before the connection is cut


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        max_bytes: int = 32 * 1024 * 1024,
        peak_bytes: int = 4 * 1024 * 1024,
        peak_seconds: float = 5.0,
        frame_bytes: int = 64 * 1024,
        name: str = "",
        transport: asyncio.Transport | None = None,
        max_messages: int | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.max_messages = max_messages
        self._room = asyncio.Event()
        self.max_bytes = max_bytes
        self.peak_bytes = peak_bytes
        self.peak_seconds = peak_seconds
        self.frame_bytes = frame_bytes
        self.name = name
        self._queue: deque[bytes | str] = deque()
        self.queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._paused = False
        self._closing = False
        self._peak_since: float | None = None
        self._writer: asyncio.Task[None] | None = None
        self._finish: tuple[int, str] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer:{self.name}")

    def send_bytes(self, data: bytes) -> None:
        if self._closing or not data:
            return
        self._queue.append(data)
        self.queued_bytes += len(data)
        self._check_peak()
        self._wakeup.set()

    def send_json(self, message: dict[str, Any]) -> None:
        if not self._closing:
            self.send_text(json.dumps(message))

    def send_text(self, text: str) -> None:
        """A text frame already encoded (one event's JSON shared by every subscriber)."""
        if self._closing:
            return
        self._queue.append(text)
        self.queued_bytes += len(text)
        self._check_peak()
        self._wakeup.set()

    def pause(self) -> None:
        """Hold binary output for this client only (text control frames still go)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wakeup.set()

    async def wait_for_room(self, messages: int) -> None:
        """Wait until at most ``messages`` are queued (to pace a replay), or the end."""
        while len(self._queue) > messages and not self._closing:
            self._room.clear()
            await self._room.wait()

    def _check_peak(self) -> None:
        if self.queued_bytes > self.max_bytes:
            self._overflow("queue over its hard limit")
            return
        if self.max_messages is not None and len(self._queue) > self.max_messages:
            self._overflow("too many messages queued")
            return
        loop_time = asyncio.get_running_loop().time()
        if self.queued_bytes <= self.peak_bytes:
            self._peak_since = None
        elif self._peak_since is None:
            self._peak_since = loop_time
        elif loop_time - self._peak_since > self.peak_seconds:
            self._overflow("queue above its peak for too long")

    def _overflow(self, reason: str) -> None:
        log.warning("slow_client_closed", connection=self.name, reason=reason,
                    queued_bytes=self.queued_bytes)  # fmt: skip
        self.close(CLOSE_TRY_AGAIN_LATER, "client too slow; reconnect")

    def close(self, code: int = WSCloseCode.OK, message: str = "") -> None:
        """Drop what is queued and close the socket soon; never waits."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        self.queued_bytes = 0
        task = asyncio.create_task(self._close(code, message), name=f"ws-close:{self.name}")
        _CLOSERS.add(task)
        task.add_done_callback(_CLOSERS.discard)

    async def _close(self, code: int, message: str) -> None:
        try:
            # A client that reads nothing never takes the close frame either: give it a
            # moment, then drop the connection.
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()),
                                   CLOSE_SECONDS)  # fmt: skip
        except (TimeoutError, ConnectionError, RuntimeError):
            if self.transport is not None:
                self.transport.abort()
        self._room.set()
        if self._writer is not None:
            self._writer.cancel()

    def end(self, code: int = WSCloseCode.OK, message: str = "") -> None:
        """Close after what is queued has gone out (bounded in time); never waits."""
        task = asyncio.create_task(self.finish(code, message), name=f"ws-end:{self.name}")
        _CLOSERS.add(task)
        task.add_done_callback(_CLOSERS.discard)

    async def finish(self, code: int = WSCloseCode.OK, message: str = "") -> None:
        """Send what is queued, then close (for an orderly end such as ``exit``)."""
        if not self._closing and self._writer is not None:
            self._finish = (code, message)
            self._wakeup.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), FINISH_SECONDS)
        self.close(code, message)
        await self.stop()

    async def stop(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def _next_frame(self) -> bytes | str | None:
        """The next frame to send: a text frame, or binary chunks joined up to frame_bytes."""
        if not self._queue:
            return None
        head = self._queue[0]
        if isinstance(head, str):
            self._queue.popleft()
            self.queued_bytes -= len(head)
            return head
        if self._paused:
            # Text frames behind held binary still go out; binary keeps its order.
            for index, item in enumerate(self._queue):
                if isinstance(item, str):
                    del self._queue[index]
                    self.queued_bytes -= len(item)
                    return item
            return None
        parts: list[bytes] = []
        size = 0
        while self._queue and isinstance(self._queue[0], bytes):
            chunk = self._queue[0]
            assert isinstance(chunk, bytes)
            room = self.frame_bytes - size
            if len(chunk) > room:
                if room > 0:
                    parts.append(chunk[:room])
                    self._queue[0] = chunk[room:]
                    size += room
                    self.queued_bytes -= room
                break
            parts.append(chunk)
            size += len(chunk)
            self.queued_bytes -= len(chunk)
            self._queue.popleft()
        return b"".join(parts)

    async def _write_loop(self) -> None:
        try:
            while not self._closing:
                frame = self._next_frame()
                if frame is None and self._finish is not None:
                    return  # drained: finish() closes
                if frame is None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if isinstance(frame, str):
                    await self.ws.send_str(frame)
                else:
                    await self.ws.send_bytes(frame)
                if self.queued_bytes <= self.peak_bytes:
                    self._peak_since = None
                self._room.set()
        except (ConnectionError, RuntimeError) as exc:
            log.info("ws_write_failed", connection=self.name, error=str(exc))
            self._closing = True


_CLOSERS: set[asyncio.Task[Any]] = set()


class TooManySockets(ApiError):
    """A WebSocket refused before its upgrade: one client, or all, hold too many."""

    retry_after = 5  # seconds; sockets free up as their clients close them

    def __init__(self, message: str, *, everyone: bool) -> None:
        super().__init__(message)
        # 429 names the client as the cause; 503 says the daemon is full for everyone.
        self.code, self.status = ("SERVER_BUSY", 503) if everyone else ("RATE_LIMITED", 429)


class OpenSockets:
    """Every open WebSocket, so shutdown can tell each one the daemon is going away.

    It also bounds them, per client address and in all, across ``/ws/events`` and
    ``/ws/console``: a handler takes a :meth:`slot` before its upgrade and holds it while
    the socket is open, so a flood of sockets is refused with a JSON error, not served.
    """

    def __init__(self, per_client: int = 32, total: int = 256) -> None:
        self.per_client = per_client
        self.total = total
        self._open: set[web.WebSocketResponse] = set()
        self._held: Counter[str] = Counter()

    @contextlib.contextmanager
    def slot(self, client: str | None) -> Iterator[None]:
        """Hold one socket's place for ``client`` (its address); raise when there is none."""
        key = client or "unknown"
        if sum(self._held.values()) >= self.total:
            log.warning("websocket_refused", client=key, reason="total", limit=self.total)
            raise TooManySockets(f"too many open WebSockets ({self.total})", everyone=True)
        if self._held[key] >= self.per_client:
            log.warning("websocket_refused", client=key, reason="client", limit=self.per_client)
            raise TooManySockets(
                f"too many open WebSockets from this client ({self.per_client})", everyone=False
            )
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def add(self, ws: web.WebSocketResponse) -> None:
        self._open.add(ws)

    def discard(self, ws: web.WebSocketResponse) -> None:
        self._open.discard(ws)

    def all(self) -> list[web.WebSocketResponse]:
        return list(self._open)
