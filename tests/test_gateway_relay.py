"""The gateway's relay (daemon/gateway/forward.py, ``_Relay``) against a real streaming
upstream and a real client: the paths the per-chunk fast path does not take on a fast
agent. A slow agent makes it hold back (bounded memory, every byte still in order, usage
still counted), an agent gone while it holds closes the upstream, a silent upstream times
out by the watchdog that replaces aiohttp's per-chunk read timer, and a plain answer is
relayed at all, a socket read at a time (so an aiohttp upgrade that changes its reader is
noticed here).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from daemon.gateway import forward
from daemon.gateway.server import ModelGateway
from daemon.settings import Settings
from tests.test_gateway import CLAUDE_TOKEN, FakeCredentials, FakeGuard, FakeMeter

MESSAGE = {"model": "claude-relay", "max_tokens": 10, "stream": True, "messages": []}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


START = _sse(
    "message_start",
    {
        "type": "message_start",
        "message": {"model": "claude-relay", "usage": {"input_tokens": 7, "output_tokens": 1}},
    },
)
DELTA = _sse(
    "content_block_delta",
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x" * 900}},
)
END = _sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 33}})


class Upstream:
    """A big answer written as fast as the socket takes it (``deltas`` frames, after
    ``pause`` seconds), or a first frame and then silence (``silent``)."""

    def __init__(self, deltas: int = 0, silent: bool = False, pause: float = 0.0) -> None:
        self.deltas = deltas
        self.silent = silent
        self.pause = pause
        self.written = 0  # deltas written so far
        self.finished = asyncio.Event()
        self.broken = asyncio.Event()  # the gateway went away mid-answer
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(START)
            if self.silent:  # a delta once the relay holds the answer, then nothing
                await asyncio.sleep(0.1)
                await response.write(DELTA)
                await asyncio.sleep(30)
            await asyncio.sleep(self.pause)
            for _ in range(self.deltas):
                await response.write(DELTA)
                self.written += 1
            await response.write(END)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.broken.set()
            raise
        self.finished.set()
        return response

    async def __aenter__(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/messages", self._answer)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _gateway(tmp_path: Path, upstream: str, meter: FakeMeter) -> ModelGateway:
    settings = Settings.model_validate(
        {"data_dir": str(tmp_path / "data"), "agents": {"anthropic_base_url": upstream}}
    )
    gateway = ModelGateway(settings, FakeGuard(), FakeCredentials(), meter)
    await gateway.start()
    return gateway


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # A small read buffer so that a client that stops reading stops the socket soon.
    async with aiohttp.ClientSession(read_bufsize=2**14) as session:
        yield session


async def _post(client: aiohttp.ClientSession, gateway: ModelGateway) -> aiohttp.ClientResponse:
    return await client.post(
        f"http://127.0.0.1:{gateway.port}/anthropic/v1/messages",
        json=MESSAGE,
        headers={"x-api-key": CLAUDE_TOKEN},
    )


async def test_a_slow_agent_holds_the_upstream_back_and_gets_every_byte(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    deltas = 40_000  # ~37 MB: more than the sockets, the reader and the transport hold
    meter = FakeMeter()
    async with Upstream(deltas) as upstream:
        gateway = await _gateway(tmp_path, upstream.url, meter)
        response = await _post(client, gateway)
        try:
            got = bytearray(await asyncio.wait_for(response.content.readany(), 5))
            await asyncio.sleep(0.5)  # the agent stalls: the upstream must stall too
            assert not upstream.finished.is_set()
            stalled_at = upstream.written
            assert stalled_at < deltas * 0.6
            await asyncio.sleep(0.2)
            assert upstream.written == stalled_at
            async with asyncio.timeout(30):
                async for chunk in response.content.iter_any():
                    got += chunk
        finally:
            response.close()
            await gateway.close()
    assert bytes(got) == START + DELTA * deltas + END
    (record,) = meter.records
    assert record[1] == "claude-relay"
    assert (record[2].input_tokens, record[2].output_tokens) == (7, 33)
    assert record[3] is False
    assert not forward._RELAYS  # nothing left behind


async def test_an_agent_gone_while_held_back_closes_the_upstream(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    meter = FakeMeter()
    async with Upstream(40_000) as upstream:
        gateway = await _gateway(tmp_path, upstream.url, meter)
        try:
            response = await _post(client, gateway)
            await asyncio.wait_for(response.content.readany(), 5)
            await asyncio.sleep(0.3)  # held back now
            assert not upstream.finished.is_set()
            response.close()
            await asyncio.wait_for(upstream.broken.wait(), 5)
            await asyncio.sleep(0.05)
        finally:
            await gateway.close()
    (record,) = meter.records
    assert record[3] is True  # counted, as an error
    assert not forward._RELAYS


async def _read_into(response: aiohttp.ClientResponse, got: bytearray) -> None:
    async for chunk in response.content.iter_any():
        got += chunk


async def test_a_silent_upstream_times_out_by_the_watchdog(
    tmp_path: Path, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forward, "READ_TIMEOUT", 0.4)
    meter = FakeMeter()
    async with Upstream(silent=True) as upstream:
        gateway = await _gateway(tmp_path, upstream.url, meter)
        response = await _post(client, gateway)
        try:
            # Cut within READ_TIMEOUT and a quarter more (plus slack), not after 30 s, and
            # seen as cut: the chunked body never ends, so the agent retries, never taking
            # half an answer for a whole one.
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(_read_into(response, got), 3)
            assert bytes(got) == START + DELTA
            await asyncio.wait_for(upstream.broken.wait(), 5)
        finally:
            response.close()
            await gateway.close()
    (record,) = meter.records
    assert record[2].input_tokens == 7
    assert record[3] is True


async def test_a_plain_answer_goes_through_the_relay_a_read_at_a_time(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    seen: list[int] = []
    original = forward._Relay.pass_on

    def spy(self: forward._Relay, chunk: bytes) -> None:
        seen.append(len(chunk))
        original(self, chunk)

    meter = FakeMeter()
    # The pause: an answer complete before the gateway looks is read whole (nothing to relay).
    async with Upstream(200, pause=0.1) as upstream:
        gateway = await _gateway(tmp_path, upstream.url, meter)
        try:
            forward._Relay.pass_on = spy  # type: ignore[method-assign]
            response = await _post(client, gateway)
            body = await asyncio.wait_for(response.read(), 5)
        finally:
            forward._Relay.pass_on = original  # type: ignore[method-assign]
            await gateway.close()
    assert body == START + DELTA * 200 + END
    assert sum(seen) == len(body)
    # The upstream wrote 200 events without pausing: what one socket read brings goes out
    # in one write, not one write per event (a fast answer's throughput).
    assert len(seen) <= 20
