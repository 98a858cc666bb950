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

READ_BYTES = 256 * 1024
GATHER_AFTER = 2 * 1024  # output is flowing (an echo is a few bytes; a rest delays it <= 4 ms)
GATHER_SECONDS = 0.004
PAUSE_BYTES = 1024 * 1024  # unread output at which the socket stops being read
HEAD_LIMIT = 64 * 1024


def supports(engine_url: str) -> bool:
    return engine_url.startswith(("unix://", "tcp://", "http://"))


class _TtyProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.eof = False
        self.transport: asyncio.Transport | None = None
        self._paused = False  # the reader is behind by PAUSE_BYTES
        self._resting = False  # a short pause after a large read, to gather the next one
        self._can_write = asyncio.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.arrived.set()
        if len(self.buffer) >= PAUSE_BYTES and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.arrived.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.arrived.set()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def take(self, limit: int) -> bytes:
        data = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        if not self.buffer:
            self.arrived.clear()
        if self._paused and len(self.buffer) < PAUSE_BYTES // 2:
            self._paused = False
            self._resume()
        return data

    def rest(self, seconds: float) -> None:
        """Stop reading for ``seconds`` so that what the engine writes meanwhile is one read."""
        if self.transport is None or self._resting or self._paused or self.eof:
            return
        self._resting = True
        self.transport.pause_reading()
        asyncio.get_running_loop().call_later(seconds, self._end_rest)

    def _end_rest(self) -> None:
        self._resting = False
        if not self._paused:
            self._resume()

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
        while b"\r\n\r\n" not in protocol.buffer:
            if protocol.eof or len(protocol.buffer) > HEAD_LIMIT:
                raise BackendError(f"attach to container {container_id}: no answer")
            protocol.arrived.clear()
            await protocol.arrived.wait()
        head, _, rest = bytes(protocol.buffer).partition(b"\r\n\r\n")
        protocol.buffer = bytearray(rest)
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
        while not protocol.buffer:
            if protocol.eof:
                return b""
            protocol.arrived.clear()
            await protocol.arrived.wait()
        data = protocol.take(READ_BYTES)
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
