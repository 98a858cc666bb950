"""The unread output of a terminal, bounded by flow control: one queue both terminals use.

A terminal (the local PTY master, the Docker attach socket) is read as the event loop sees
output ready, into a :class:`Backlog`, and the daemon takes from it at its own pace. When
``high`` bytes wait unread, reading pauses (the fd leaves the loop, the socket stops being
read) until the daemon brings the backlog down to ``low``: the agent then blocks on its
own writes, as on a slow terminal, and neither the loop nor memory pays for a consumer
that is behind (terminado and ttyd pause the same way). Takes join the small pieces a
terminal hands over (a PTY read gives about 4 KiB) into one larger slice, so a flood wakes
the daemon once per slice rather than once per piece.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class Backlog:
    """Bytes read from a terminal and not yet taken, in the order they came."""

    def __init__(
        self, *, high: int, low: int, pause: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self.high = high
        self.low = low
        self._pause = pause
        self._resume = resume
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False  # reading is paused until the consumer catches up
        self._arrived = asyncio.Event()

    def put(self, data: bytes) -> None:
        """Queue what the terminal gave; at ``high`` unread bytes, pause reading."""
        self._chunks.append(data)
        self.buffered += len(data)
        self._arrived.set()
        if not self.paused and self.buffered >= self.high:
            self.paused = True
            self._pause()

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front (what followed a protocol header in the same read)."""
        if data:
            self._chunks.appendleft(data)
            self.buffered += len(data)
            self._arrived.set()

    def take(self, limit: int) -> bytes:
        """The oldest pieces, joined up to ``limit`` bytes (a larger first piece whole);
        ``b""`` when nothing waits. At ``low`` unread bytes, reading resumes."""
        if not self._chunks:
            return b""
        parts = [self._chunks.popleft()]
        size = len(parts[0])
        while self._chunks and size + len(self._chunks[0]) <= limit:
            parts.append(self._chunks.popleft())
            size += len(parts[-1])
        self.buffered -= size
        if self.paused and self.buffered <= self.low:
            self.paused = False
            self._resume()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def clear(self) -> None:
        """Drop what waits (the stream was detached); reading stays as it is."""
        self._chunks.clear()
        self.buffered = 0

    def wake(self) -> None:
        """Wake a waiting reader: output came, or the stream ended (the caller's state)."""
        self._arrived.set()

    async def wait(self) -> None:
        """Until the next :meth:`put` or :meth:`wake`."""
        self._arrived.clear()
        await self._arrived.wait()
