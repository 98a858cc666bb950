"""A container's TTY over a hijacked Engine API connection, read with plain asyncio streams.

The attach endpoint upgrades the HTTP connection to a raw byte stream. Reading it directly
(instead of through aiodocker's message queue) lets each read take everything the socket
holds, up to 256 KiB, so the slower the daemon is at a moment, the larger its next chunk:
the per-chunk cost stops mattering under a flood. Only plain ``unix://`` and ``tcp://``
engines are handled here; the caller falls back to aiodocker for anything else (TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from backends.base import BackendError, TerminalStream

READ_BYTES = 256 * 1024


def supports(engine_url: str) -> bool:
    return engine_url.startswith(("unix://", "tcp://", "http://"))


async def _connect(engine_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if engine_url.startswith("unix://"):
        return await asyncio.open_unix_connection(engine_url[len("unix://") :], limit=READ_BYTES)
    parts = urlsplit(engine_url)
    return await asyncio.open_connection(parts.hostname, parts.port or 2375, limit=READ_BYTES)


async def open_attach(engine_url: str, container_id: str) -> RawTerminal:
    """Attach to stdin, stdout and stderr of a TTY container; raises BackendError if refused."""
    reader, writer = await _connect(engine_url)
    try:
        writer.write(
            f"POST /containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
            "HTTP/1.1\r\nHost: docker\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        status = int(status_line.split(" ", 2)[1])
        if status != 101:
            body = await asyncio.wait_for(reader.read(4096), 5)
            raise BackendError(
                f"attach to container {container_id} refused: {status_line}",
                details={"status": status, "message": body.decode(errors="replace").strip()},
            )
    except BaseException:
        writer.close()
        raise
    return RawTerminal(reader, writer)


class RawTerminal(TerminalStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_BYTES)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise BackendError("the terminal is closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise BackendError("the terminal is closed", details={"error": str(exc)}) from exc

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
