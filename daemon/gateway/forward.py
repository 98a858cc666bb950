"""One request through the gateway to the provider and its answer back, streamed both ways.

The agent's request body is passed to the upstream as it arrives (``request.content``, never
read whole) and each piece of the answer is written to the agent's socket as soon as the
HTTP parser decodes it (:class:`_Relay`, from inside the upstream connection's
``data_received``), so the gateway adds no buffering to the time to first token and little
CPU per piece. Headers are
copied minus the hop-by-hop ones and the agent's placeholder; the caller adds the real
credential. ``Accept-Encoding: identity`` asks for an answer the usage tap can read; the
client does not decompress (``auto_decompress=False``) so that whatever the upstream sends
reaches the agent byte for byte.

Errors the gateway itself answers are in the provider's own shape, so the agent CLI shows
their message: Anthropic ``{"type": "error", "error": {"type", "message"}}``, OpenAI
``{"error": {"type", "code", "message"}}``.

Over 400 lines for the relay (:class:`_Relay`), whose hold-back, watchdog and hand-back
to aiohttp are one piece of state; the rest is the plain path it falls back to.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Literal

import aiohttp
import structlog
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict
from yarl import URL

from daemon.gateway.usage_tap import UsageTap

log = structlog.get_logger(__name__)

Family = Literal["anthropic", "openai"]

# RFC 9110 7.6.1 plus the ones proxies must not pass on; Host is the upstream's own.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
# The agent's stand-in credentials: never sent on; the real one is set instead.
CREDENTIAL_HEADERS = frozenset(("authorization", "x-api-key", "chatgpt-account-id"))
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

CONNECT_TIMEOUT = 15.0
# A model may think for minutes between bytes (the providers send pings, but not all of
# them, and not always); a dead upstream is still noticed eventually.
READ_TIMEOUT = 600.0
_MODEL_SNIFF = 64 * 1024  # the request's model is looked for in its first bytes
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def error_body(family: Family, kind: str, message: str, code: str | None = None) -> bytes:
    """An error in the provider's shape (``kind``: the provider's error type)."""
    if family == "anthropic":
        body: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"type": kind, "code": code, "message": message}}
    return json.dumps(body).encode()


def error_response(
    family: Family, status: int, kind: str, message: str, code: str | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(family, kind, message, code),
        content_type="application/json",
    )


def request_headers(incoming: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The agent's headers to send on: no hop-by-hop ones, no credential, identity
    encoding (the usage tap reads the answer)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in CREDENTIAL_HEADERS:
            continue
        if lowered == "accept-encoding":
            continue
        headers.add(name, value)
    headers["Accept-Encoding"] = "identity"
    return headers


@dataclass
class Outcome:
    """What happened to one forwarded request, for the log and the meter."""

    status: int = 0
    sent: int = 0  # answer bytes written to the agent
    model: str = ""  # from the request's body (the answer's wins when it names one)
    error: bool = False  # upstream failed, or the stream broke


class _BodyTap:
    """The agent's request body as an async iterator for the upstream, watched for the
    model it names (only its first bytes, only until found)."""

    def __init__(self, content: aiohttp.StreamReader, outcome: Outcome) -> None:
        self._content = content
        self._outcome = outcome
        self._head = bytearray()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._content.iter_any():
            if not self._outcome.model and len(self._head) < _MODEL_SNIFF:
                self._head += chunk
                found = _MODEL.search(self._head)
                if found:
                    self._outcome.model = found.group(1).decode(errors="replace")
            yield chunk


class Forwarder:
    """Holds the one shared client session and sends requests upstream through it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # No total timeout: an answer streams for as long as the model writes.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
                # Every session's streams at once: no pool limit queues one behind another.
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                # Bigger reads of a fast answer: fewer chunks, each still passed on at once.
                read_bufsize=256 * 1024,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        request: web.Request,
        url: URL,
        headers: CIMultiDict[str],
        family: Family,
        provider: str,
        tap: UsageTap | None,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """Send ``request`` to ``url`` with ``headers`` and stream the answer back."""
        body: _BodyTap | None = None
        if request.body_exists:
            body = _BodyTap(request.content, outcome)
            if "Content-Length" not in request.headers:
                headers.popall("Content-Length", None)
        try:
            upstream = await self.session().request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome.status, outcome.error = 502, True
            reason = _reason(exc)
            log.warning("gateway_upstream_unreachable", provider=provider, reason=reason)
            return error_response(
                family,
                502,
                "api_error" if family == "anthropic" else "server_error",
                f"corral gateway: {provider} unreachable: {reason}",
            )
        try:
            outcome.status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in RESPONSE_DROP:
                    response.headers.add(name, value)
            if tap is not None:
                tap.streamed = upstream.content_type == "text/event-stream"
            writer = await response.prepare(request)
            try:
                if writer is None or not await _Relay.relay(
                    request, response, writer, upstream, tap, outcome
                ):
                    await _copy(response, upstream.content, tap, outcome)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The upstream broke mid-answer. The status is sent; the agent must see a
                # cut stream (which the CLIs retry), not an answer that merely ends: its
                # connection is aborted, so the chunked body never gets its last chunk.
                outcome.error = True
                log.warning("gateway_upstream_broke", provider=provider, reason=_reason(exc))
                upstream.close()
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("the provider's answer broke off") from exc
            await response.write_eof()
            return response
        except ConnectionResetError:
            # The agent went away mid-answer: stop reading the model's answer too.
            outcome.error = True
            upstream.close()
            raise
        except asyncio.CancelledError:
            upstream.close()
            raise
        finally:
            upstream.release()


async def _copy(
    response: web.StreamResponse,
    content: aiohttp.StreamReader,
    tap: UsageTap | None,
    outcome: Outcome,
) -> None:
    """The answer read and written chunk by chunk, for what :class:`_Relay` does not take."""
    while True:
        # Whatever has arrived, at once: no waiting to fill a buffer.
        chunk = await content.readany()
        if not chunk:
            return
        # Raises ConnectionResetError when the agent has gone away.
        await response.write(chunk)
        outcome.sent += len(chunk)
        if tap is not None:
            tap.feed(chunk)


class _RelayReader(aiohttp.StreamReader):
    """The upstream answer's reader while a :class:`_Relay` holds it (its class is swapped
    for this one, which adds no state): each piece the HTTP parser decodes goes to the
    relay (which writes what one read of the socket brought at once, when the parser is
    done with it) instead of the buffer, unless the relay is holding back.

    Relayed pieces are not counted in ``total_bytes``: the reader's own chunk bookkeeping
    (``end_http_chunk_receiving``) then sees no new bytes and keeps nothing for them.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        relay = _RELAYS.get(self)
        if relay is None or relay.buffering:
            return super().feed_data(data, size)
        relay.fed += 1
        relay.pending.append(data)
        return False


_RELAYS: dict[aiohttp.StreamReader, _Relay] = {}


class _Relay:
    """Passes each piece of an answer to the agent's socket from inside the upstream
    connection's ``data_received``, as the parser decodes it.

    The parser (aiohttp's, in C) holds the answer's reader and calls its ``feed_data``; the
    reader has ``__slots__``, so its class is swapped for :class:`_RelayReader` (same
    layout) while the relay runs and put back after. That leans on aiohttp's reader as
    pinned (3.14.5); tests/test_gateway_relay.py fails if an upgrade changes it. An answer
    already complete when its headers are read, or a reader of another kind, goes through
    :func:`_copy` instead.

    Measured (bench/gateway.py, 50 streams x 80 deltas/s): reading each chunk with
    ``readany`` and writing it with ``StreamResponse.write`` cost about 40 us of gateway CPU
    per chunk (a future, a task wake-up, two coroutine chains, and aiohttp's reader calling
    back into the protocol on each read); this costs about 20. What one read of the
    upstream socket brings goes out in one write (the parser's pieces joined), so a fast
    answer costs one system call per read, not per event. The bytes, their order and the
    first-byte latency are unchanged: nothing waits for more data before writing.

    Flow control: when the agent's socket buffer passes its high-water mark, the relay
    holds back: the parser's output goes to the reader's buffer as before (whose own limit
    pauses the upstream socket) and a task waits for the agent to drain, then passes the
    buffer on and lets the parser's output flow straight through again.

    aiohttp's per-chunk read timer (a timer handle rescheduled on every read) is replaced
    for the answer's body by a watchdog that looks every ``READ_TIMEOUT / 4`` seconds for
    pieces fed since its last look; an upstream silent for ``READ_TIMEOUT`` (up to a
    quarter more) times out as before.
    """

    def __init__(
        self,
        response_transport: asyncio.Transport,
        writer: AbstractStreamWriter,
        chunked: bool,
        upstream: aiohttp.ClientResponse,
        tap: UsageTap | None,
        outcome: Outcome,
    ) -> None:
        self._transport = response_transport
        self._high = response_transport.get_write_buffer_limits()[1]
        self._writer = writer
        self._chunked = chunked
        self._upstream = upstream
        self._content = upstream.content
        self._tap = tap
        self._outcome = outcome
        self.buffering = False  # parser output goes to the reader's buffer, not on
        self._holding = False  # the agent's socket is full: wait for it to drain
        self.pending: list[bytes] = []  # pieces of the socket read being parsed
        self._stop: BaseException | None = None  # why the answer cannot go on
        self._resumer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.fed = 0  # pieces fed, for the watchdog
        self._seen = 0
        self._quiet = 0

    @classmethod
    async def relay(
        cls,
        request: web.Request,
        response: web.StreamResponse,
        writer: AbstractStreamWriter,
        upstream: aiohttp.ClientResponse,
        tap: UsageTap | None,
        outcome: Outcome,
    ) -> bool:
        """Relay the answer; False (nothing done) when it is not a plain reader's."""
        transport = request.transport
        connection = upstream.connection
        if (
            type(upstream.content) is not aiohttp.StreamReader
            or not isinstance(transport, asyncio.Transport)
            or transport.is_closing()
            or connection is None
            or connection.protocol is None
        ):
            return False
        chunked = response.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        relay = cls(transport, writer, chunked, upstream, tap, outcome)
        await relay._run(connection.protocol)
        return True

    async def _run(self, protocol: ResponseHandler) -> None:
        content = self._content
        read_timeout = protocol.read_timeout
        protocol.read_timeout = None  # the watchdog's job from here
        self._watchdog = asyncio.get_running_loop().call_later(READ_TIMEOUT / 4, self._watch)
        original = protocol.data_received

        def data_received(data: bytes) -> None:
            original(data)
            if self.pending:
                self._flush()

        _RELAYS[content] = self
        content.__class__ = _RelayReader
        protocol.data_received = data_received  # type: ignore[method-assign]
        try:
            self._pass_buffer()  # what came with the headers
            try:
                await content.wait_eof()
                if self._resumer is not None:
                    await self._resumer
            except (aiohttp.ClientError, TimeoutError):
                if self._stop is not None:
                    raise self._stop from None
                raise
            if self._stop is not None:
                raise self._stop
            if self.pending:
                self._flush()
            self._pass_buffer()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            protocol.__dict__.pop("data_received", None)
            content.__class__ = aiohttp.StreamReader
            del _RELAYS[content]
            protocol.read_timeout = read_timeout
            if self._resumer is not None and not self._resumer.done():
                self._resumer.cancel()

    def pass_on(self, chunk: bytes) -> None:
        """One piece of the answer to the agent (and the usage tap)."""
        transport = self._transport
        try:
            if transport.is_closing():
                raise ConnectionResetError("the agent went away")
            if self._chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            self._outcome.sent += len(chunk)
            if self._tap is not None:
                self._tap.feed(chunk)
        except BaseException as exc:
            # The relay's task raises this one (woken by the reader's exception).
            self._stop = exc
            self.buffering = True
            raise
        if transport.get_write_buffer_size() > self._high:
            self.buffering = self._holding = True
            if self._resumer is None or self._resumer.done():
                self._resumer = asyncio.ensure_future(self._resume())

    def _flush(self) -> None:
        """What the parser made of one socket read, in one write (a fast answer's many
        small events cost one system call, not one each)."""
        pieces = self.pending
        chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        try:
            self.pass_on(chunk)
        except BaseException as exc:
            # Not into the transport's read callback (which would log a fatal error): the
            # relay's task wakes on the reader's exception and raises it.
            self._content.set_exception(exc)

    def _pass_buffer(self) -> None:
        """What the reader holds, passed on (the parser's output buffered meanwhile: reading
        lets the reader resume the parser, which feeds it again)."""
        self.buffering = True
        try:
            while not self._holding:
                chunk = self._content.read_nowait()
                if not chunk:
                    break
                self.pass_on(chunk)
        finally:
            self.buffering = self._holding or self._stop is not None

    async def _resume(self) -> None:
        try:
            while self._holding:
                await self._writer.drain()
                self._holding = False
                self._pass_buffer()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._stop is None:
                self._stop = exc
            self._content.set_exception(exc)

    def _watch(self) -> None:
        if self.fed != self._seen or self._holding:
            self._seen, self._quiet = self.fed, 0
        else:
            self._quiet += 1
            if self._quiet >= 4:
                self._content.set_exception(
                    aiohttp.SocketTimeoutError("Timeout on reading data from socket")
                )
                return
        self._watchdog = asyncio.get_running_loop().call_later(READ_TIMEOUT / 4, self._watch)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc})"
    text = str(exc) or type(exc).__name__
    return text[:200]


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
