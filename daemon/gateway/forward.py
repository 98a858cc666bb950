"""One request through the gateway to the provider and its answer back, streamed both ways.

The agent's request body is passed to the upstream as it arrives (``request.content``, never
read whole) and each chunk of the answer is written to the agent as soon as it comes
(``iter_any``), so the gateway adds no buffering to the time to first token. Headers are
copied minus the hop-by-hop ones and the agent's placeholder; the caller adds the real
credential. ``Accept-Encoding: identity`` asks for an answer the usage tap can read; the
client does not decompress (``auto_decompress=False``) so that whatever the upstream sends
reaches the agent byte for byte.

Errors the gateway itself answers are in the provider's own shape, so the agent CLI shows
their message: Anthropic ``{"type": "error", "error": {"type", "message"}}``, OpenAI
``{"error": {"type", "code", "message"}}``.
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
from aiohttp import web
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
            await response.prepare(request)
            content = upstream.content
            while True:
                try:
                    # Whatever has arrived, at once: no waiting to fill a buffer.
                    chunk = await content.readany()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # The upstream broke mid-answer: the status is sent, so the agent sees
                    # a cut stream (which the CLIs retry); the log says why.
                    outcome.error = True
                    log.warning("gateway_upstream_broke", provider=provider, reason=_reason(exc))
                    upstream.close()
                    return response
                if not chunk:
                    break
                # Raises ConnectionResetError when the agent has gone away.
                await response.write(chunk)
                outcome.sent += len(chunk)
                if tap is not None:
                    tap.feed(chunk)
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc})"
    text = str(exc) or type(exc).__name__
    return text[:200]


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
