"""Terminal attachments: one per running session, owned by the daemon, fanned out to viewers.

An :class:`Attachment` reads the session's TTY for as long as the session runs, whether or
not anyone watches, so the agent never waits for a browser. Output goes into a byte-bounded
:class:`RingBuffer` (so a new viewer can redraw the screen) and onto every viewer's own
queue, in slices of at most 64 KiB: one event loop serves every console, and small slices
keep a flooding terminal from delaying a neighbour's keystroke echo.

Resizes from several viewers: the latest one wins, as in tmux's "latest" window-size mode.

A person typing comes first: while someone types into one terminal, another that floods
(large reads, back to back) is read at a modest pace, so its output waits a little and
the keystrokes' echo does not queue behind it for CPU. The flooding program is slowed by
the terminal's own back-pressure, loses nothing, and runs at full speed again a second
after the typing stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from backends.base import BackendError, TerminalHost, TerminalStream

log = structlog.get_logger(__name__)

SLICE_BYTES = 64 * 1024
FLOOD_READ_BYTES = 16 * 1024  # a read this large: the terminal is pouring out output
TYPING_SECONDS = 1.0  # how long after a keystroke a terminal counts as being typed into
FLOOD_PACE = 2_000_000  # bytes/s a flooding terminal is read at while another is typed into
SMALL_PIECE = 4096
MIN_COLS, MAX_COLS = 2, 1000
MIN_ROWS, MAX_ROWS = 2, 500

ExitCallback = Callable[[str, int | None], Awaitable[None]]


class Viewer(Protocol):
    """Whoever watches a terminal (a WebSocket, in ``ws/``). Every call returns at once:
    a viewer queues what it is sent, and drops itself when it falls too far behind."""

    def send_bytes(self, data: bytes) -> None: ...

    def send_json(self, message: dict[str, Any]) -> None: ...

    def end(self, code: int = ..., message: str = "") -> None:
        """Close once what was queued has gone out."""


class RingBuffer:
    """The last ``capacity`` bytes of output, with the running offset of its end."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.end = 0  # bytes ever appended
        self.truncated = False  # the buffer does not start at the terminal's first byte

    def append(self, data: bytes) -> None:
        # Tiny writes (a TUI redrawing a cursor) would cost far more in chunk objects than in
        # bytes: they join the last chunk until it is a few KiB.
        if len(data) < SMALL_PIECE and self._chunks and len(self._chunks[-1]) < SMALL_PIECE:
            self._chunks[-1] += data
        else:
            self._chunks.append(data)
        self._size += len(data)
        self.end += len(data)
        # Whole chunks leave from the left; the first may still overhang the capacity.
        while self._chunks and self._size - len(self._chunks[0]) >= self.capacity:
            self._size -= len(self._chunks.popleft())
            self.truncated = True
        if self._size > self.capacity:
            self.truncated = True

    @property
    def start(self) -> int:
        return self.end - min(self._size, self.capacity)

    def __len__(self) -> int:
        return min(self._size, self.capacity)

    def snapshot(self) -> bytes:
        data = b"".join(self._chunks)
        return data[-self.capacity :] if len(data) > self.capacity else data

    def replay(self) -> bytes:
        """What a new viewer gets first: the buffer, cut where a terminal can start reading.

        When older output was dropped, the cut lands after a newline or on an ESC, so the
        viewer never starts inside an escape sequence or a UTF-8 character.
        """
        data = self.snapshot()
        if not self.truncated:
            return data
        return data[safe_start(data) :]


def safe_start(data: bytes, window: int = 64 * 1024) -> int:
    """The first index in ``data`` after a newline or at an ESC; 0 if none is near."""
    limit = min(len(data), window)
    for index in range(limit):
        byte = data[index]
        if byte == 0x1B:
            return index
        if byte == 0x0A:
            return index + 1
    return 0


class Typing:
    """Which terminal a person typed into last, and when (shared by every attachment)."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.at = -math.inf

    def typed(self, session_id: str) -> None:
        self.session_id, self.at = session_id, time.monotonic()

    def elsewhere(self, session_id: str) -> bool:
        """Whether someone is typing into another terminal right now."""
        recent = time.monotonic() - self.at < TYPING_SECONDS
        return recent and self.session_id != session_id


def clamp_size(cols: int, rows: int) -> tuple[int, int] | None:
    """A terminal size the PTY can take, or None when it is out of any sane range."""
    if not (MIN_COLS <= cols <= MAX_COLS and MIN_ROWS <= rows <= MAX_ROWS):
        return None
    return cols, rows


class Attachment:
    """The daemon's one attachment to a running session's terminal."""

    def __init__(
        self,
        session_id: str,
        backend: TerminalHost,
        container_id: str,
        *,
        buffer_bytes: int,
        on_exit: ExitCallback | None = None,
        typing: Typing | None = None,
    ) -> None:
        self.session_id = session_id
        self.typing = typing or Typing()
        self.backend = backend
        self.container_id = container_id
        self.buffer = RingBuffer(buffer_bytes)
        self.viewers: set[Viewer] = set()
        self.size: tuple[int, int] | None = None
        self.needs_redraw = False
        self.ended = asyncio.Event()
        self.exit_code: int | None = None
        self._on_exit = on_exit
        self._stream: TerminalStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._input_lock = asyncio.Lock()
        self._log = log.bind(session_id=session_id)

    async def open(self, *, replay_log: bool = False) -> None:
        """Attach; with ``replay_log`` seed the buffer from the TTY log (after a restart)."""
        if replay_log:
            recent = await self.backend.recent_output(self.container_id, self.buffer.capacity)
            if recent:
                self.buffer.append(recent)
                self.buffer.truncated = True  # a log tail may start anywhere
            self.needs_redraw = True
        self._stream = await self.backend.attach(self.container_id)
        self._reader = asyncio.create_task(self._read_loop(), name=f"console:{self.session_id}")

    async def _read_loop(self) -> None:
        assert self._stream is not None
        try:
            while chunk := await self._stream.read():
                for offset in range(0, len(chunk), SLICE_BYTES):
                    piece = chunk[offset : offset + SLICE_BYTES]
                    self.buffer.append(piece)
                    for viewer in self.viewers:
                        viewer.send_bytes(piece)
                    if len(chunk) > SLICE_BYTES:
                        await asyncio.sleep(0)  # let other consoles and sockets have a turn
                if len(chunk) >= FLOOD_READ_BYTES and self.typing.elsewhere(self.session_id):
                    await asyncio.sleep(len(chunk) / FLOOD_PACE)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("console_read_failed")
        await self._ended()

    async def _ended(self) -> None:
        try:
            info = await self.backend.inspect(self.container_id)
            self.exit_code = info.exit_code if info is not None else None
        except BackendError:
            self.exit_code = None
        self._log.info("agent_exited", exit_code=self.exit_code)
        self.ended.set()
        for viewer in list(self.viewers):
            viewer.send_json({"type": "exit", "code": self.exit_code})
            viewer.end(message="session ended")
        self.viewers.clear()
        if self._on_exit is not None:
            await self._on_exit(self.session_id, self.exit_code)

    def add_viewer(self, viewer: Viewer) -> None:
        viewer.send_bytes(self.buffer.replay())
        self.viewers.add(viewer)

    def remove_viewer(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    async def write(self, data: bytes) -> None:
        """Keystrokes from any viewer, in the order they arrive."""
        if self._stream is None or self.ended.is_set():
            raise BackendError("the session's terminal has ended")
        self.typing.typed(self.session_id)
        async with self._input_lock:
            await self._stream.write(data)

    async def resize(self, cols: int, rows: int) -> None:
        if self.needs_redraw:
            # A full-screen program redraws on SIGWINCH, which only a real change sends.
            self.needs_redraw = False
            nudge_rows = rows - 1 if rows > MIN_ROWS else rows + 1
            await self.backend.resize(self.container_id, cols, nudge_rows)
        self.size = (cols, rows)
        await self.backend.resize(self.container_id, cols, rows)

    async def close(self) -> None:
        """Detach: stop reading; the agent keeps running."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.close()
        for viewer in list(self.viewers):
            viewer.send_json({"type": "error", "message": "the session's terminal was detached"})
            viewer.end(message="detached")
        self.viewers.clear()


class Consoles:
    """Every session's attachment, keyed by session id."""

    def __init__(self, buffer_bytes: int, on_exit: ExitCallback | None = None) -> None:
        self.buffer_bytes = buffer_bytes
        self.on_exit = on_exit
        self._attachments: dict[str, Attachment] = {}
        self.typing = Typing()
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, session_id: str) -> Attachment | None:
        attachment = self._attachments.get(session_id)
        if attachment is None or attachment.ended.is_set():
            return None
        return attachment

    async def attach(
        self, session_id: str, backend: TerminalHost, container_id: str, *, replay_log: bool = False
    ) -> Attachment:
        """The live attachment for this container, made if there is none."""
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            current = self._attachments.get(session_id)
            if current is not None:
                if current.container_id == container_id and not current.ended.is_set():
                    return current
                await current.close()
            attachment = Attachment(
                session_id,
                backend,
                container_id,
                buffer_bytes=self.buffer_bytes,
                on_exit=self.on_exit,
                typing=self.typing,
            )
            await attachment.open(replay_log=replay_log)
            self._attachments[session_id] = attachment
            return attachment

    async def detach(self, session_id: str) -> None:
        attachment = self._attachments.pop(session_id, None)
        self._locks.pop(session_id, None)
        if attachment is not None:
            await attachment.close()

    async def close(self) -> None:
        for session_id in list(self._attachments):
            await self.detach(session_id)
