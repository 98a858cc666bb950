"""A container's TTY over a hijacked Engine API connection, read by a small asyncio protocol.

The attach endpoint upgrades the HTTP connection to a raw byte stream. Reading it directly
(instead of through aiodocker's message queue) lets each read take everything that has
arrived, up to 256 KiB. Under a flood the engine hands over small pieces (2-7 KiB), so after
a large read the next one waits a couple of milliseconds for more to gather: the daemon and
its viewers then wake up once per large chunk, not once per small one, while a quiet
terminal (a keystroke echo) is never delayed. Only plain ``unix://`` and ``tcp://`` engines
are handled here; the caller falls back to aiodocker for anything else (TLS).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from backends.base import BackendError, TerminalStream
from backends.flow import Backlog

READ_BYTES = 256 * 1024
GATHER_AFTER = 2 * 1024  # output is flowing (an echo is a few bytes; a rest delays it <= 4 ms)
GATHER_SECONDS = 0.004
PAUSE_BYTES = 1024 * 1024  # unread output at which the socket stops being read
RESUME_BYTES = PAUSE_BYTES // 2  # and at which it is read again
HEAD_LIMIT = 64 * 1024


def supports(engine_url: str) -> bool:
    return engine_url.startswith(("unix://", "tcp://", "http://"))


class _TtyProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.backlog = Backlog(
            high=PAUSE_BYTES, low=RESUME_BYTES, pause=self._pause, resume=self._resume
        )
        self.eof = False
        self.transport: asyncio.Transport | None = None
        self._resting = False  # a short pause after a large read, to gather the next one
        self._can_write = asyncio.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.backlog.put(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.backlog.wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.backlog.wake()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def rest(self, seconds: float) -> None:
        """Stop reading for ``seconds`` so that what the engine writes meanwhile is one read."""
        if self.transport is None or self._resting or self.backlog.paused or self.eof:
            return
        self._resting = True
        self.transport.pause_reading()
        asyncio.get_running_loop().call_later(seconds, self._end_rest)

    def _end_rest(self) -> None:
        self._resting = False
        if not self.backlog.paused:
            self._resume()

    def _pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing() and not self._resting:
            self.transport.resume_reading()

    async def wait_writable(self) -> None:
        await self._can_write.wait()


async def _connect(engine_url: str) -> tuple[asyncio.Transport, _TtyProtocol]:
    loop = asyncio.get_running_loop()
    if engine_url.startswith("unix://"):
        transport, protocol = await loop.create_unix_connection(
            _TtyProtocol, engine_url[len("unix://") :]
        )
    else:
        parts = urlsplit(engine_url)
        transport, protocol = await loop.create_connection(
            _TtyProtocol, parts.hostname or "127.0.0.1", parts.port or 2375
        )
    assert isinstance(transport, asyncio.Transport)
    return transport, protocol


async def open_attach(engine_url: str, container_id: str) -> RawTerminal:
    """Attach to stdin, stdout and stderr of a TTY container; raises BackendError if refused."""
    transport, protocol = await _connect(engine_url)
    try:
        transport.write(
            f"POST /containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
            "HTTP/1.1\r\nHost: docker\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        received = bytearray()
        while b"\r\n\r\n" not in received:
            if len(received) > HEAD_LIMIT or (protocol.eof and not protocol.backlog.buffered):
                raise BackendError(f"attach to container {container_id}: no answer")
            if not protocol.backlog.buffered:
                await protocol.backlog.wait()
                continue
            received += protocol.backlog.take(READ_BYTES)
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        # What the engine sent after its answer is the terminal's first output.
        protocol.backlog.unread(rest)
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        status = int(status_line.split(" ", 2)[1])
        if status != 101:
            raise BackendError(
                f"attach to container {container_id} refused: {status_line}",
                details={"status": status, "message": rest.decode(errors="replace").strip()},
            )
    except BaseException:
        transport.close()
        raise
    return RawTerminal(transport, protocol)


class RawTerminal(TerminalStream):
    def __init__(self, transport: asyncio.Transport, protocol: _TtyProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self) -> bytes:
        protocol = self._protocol
        while not protocol.backlog.buffered:
            if protocol.eof:
                return b""
            await protocol.backlog.wait()
        data = protocol.backlog.take(READ_BYTES)
        if len(data) >= GATHER_AFTER:
            protocol.rest(GATHER_SECONDS)
        return data

    async def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise BackendError("the terminal is closed")
        self._transport.write(data)
        await self._protocol.wait_writable()

    async def close(self) -> None:
        self._transport.close()
