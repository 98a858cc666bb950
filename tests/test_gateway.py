"""The model gateway with real parts: the scripted model server (or a small streaming
upstream of the test's own) behind it, an aiohttp client in front, and, marked ``docker``,
the real Claude Code CLI in a container whose only credential is a placeholder.

The guard, the credential source and the meter are small fakes here: the gateway's job is
what it does with their answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from daemon.core.access import AccessDenied, Credential, GatewayClient, Usage
from daemon.gateway.ports import PORTS_FILE, remember_port, remembered_port
from daemon.gateway.server import ModelGateway
from daemon.gateway.usage_tap import MAX_LINE, UsageTap
from daemon.settings import Settings
from tests.conftest import TEST_LABEL
from tests.model_server import ModelServer, Text, bridge_gateway, model_server_fixture

__all__ = ["model_server_fixture"]

REAL_ANTHROPIC_KEY = "sk-ant-api03-REAL-" + "k" * 40
REAL_OAUTH = "sk-ant-oat01-REAL-" + "o" * 40
REAL_OPENAI_KEY = "sk-proj-REAL-" + "p" * 40
REAL_CHATGPT = "eyJREAL.access." + "c" * 40
CLAUDE_TOKEN = "sk-ant-api03-corral-placeholder-claude"
CLAUDE_OAUTH_TOKEN = "sk-ant-oat01-corral-placeholder-claude-oauth"
CODEX_TOKEN = "corral-placeholder-codex"
CHATGPT_TOKEN = "corral-placeholder-chatgpt"
REALS = (REAL_ANTHROPIC_KEY, REAL_OAUTH, REAL_OPENAI_KEY, REAL_CHATGPT)


# --- fakes of the parts the gateway is given ---------------------------------------------


class FakeGuard:
    """Knows a few placeholders; ``remotes`` (when set) are the only allowed peers."""

    def __init__(self) -> None:
        self.clients: dict[str, GatewayClient] = {
            CLAUDE_TOKEN: GatewayClient("s-claude", "claude", "api_key", "none"),
            CLAUDE_OAUTH_TOKEN: GatewayClient("s-claude-oauth", "claude", "oauth_token", "none"),
            CODEX_TOKEN: GatewayClient("s-codex", "codex", "api_key", "none"),
            CHATGPT_TOKEN: GatewayClient("s-chatgpt", "codex", "chatgpt", "none"),
        }
        self.remotes: set[str] | None = None
        self.seen: list[str] = []

    async def authorize(self, token: str, remote: str) -> GatewayClient:
        self.seen.append(remote)
        client = self.clients.get(token)
        if client is None:
            raise AccessDenied("corral gateway: not a live session's placeholder")
        if self.remotes is not None and remote not in self.remotes:
            raise AccessDenied("corral gateway: this placeholder is not for this address")
        return client

    async def session_at(self, remote: str) -> GatewayClient | None:
        return None


class FakeCredentials:
    def __init__(self) -> None:
        self.by_agent: dict[str, Credential] = {
            "claude": Credential("claude", "api_key", REAL_ANTHROPIC_KEY, "config"),
            "codex": Credential("codex", "api_key", REAL_OPENAI_KEY, "config"),
        }

    async def credential(self, agent: str) -> Credential | None:
        return self.by_agent.get(agent)


@dataclass
class FakeMeter:
    refusals: dict[str, str] = field(default_factory=dict)
    records: list[tuple[str, str, Usage, bool]] = field(default_factory=list)
    refused_sessions: list[str] = field(default_factory=list)

    def refusal(self, session_id: str) -> str | None:
        return self.refusals.get(session_id)

    async def record(
        self, session_id: str, model: str, usage: Usage, *, error: bool = False
    ) -> None:
        self.records.append((session_id, model, usage, error))

    async def refused(self, session_id: str) -> None:
        self.refused_sessions.append(session_id)


# --- a deterministic streaming upstream ---------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


ANTHROPIC_FRAMES = [
    _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": "claude-test-1",
                "usage": {
                    "input_tokens": 120,
                    "cache_creation_input_tokens": 30,
                    "cache_read_input_tokens": 400,
                    "output_tokens": 1,
                },
            },
        },
    ),
    *[
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in ("Hel", "lo ", "wor", "ld")
    ],
    _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 9},
        },
    ),
    _sse(
        "message_delta",
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 57}},
    ),
    _sse("message_stop", {"type": "message_stop"}),
]
OPENAI_FRAMES = [
    _sse(
        "response.created",
        {"type": "response.created", "response": {"id": "r1", "model": "gpt-test-5"}},
    ),
    _sse("response.output_text.delta", {"type": "response.output_text.delta", "delta": "hi"}),
    _sse(
        "response.completed",
        {
            "type": "response.completed",
            "response": {
                "id": "r1",
                "model": "gpt-test-5",
                "usage": {
                    "input_tokens": 1000,
                    "input_tokens_details": {"cached_tokens": 600},
                    "output_tokens": 80,
                },
            },
        },
    ),
]


class Upstream:
    """Streams fixed frames; the last one waits for ``release`` when ``hold`` is set."""

    def __init__(self) -> None:
        self.url = ""
        self.hold = False
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        self.bodies.append(await request.read())
        frames = ANTHROPIC_FRAMES if "messages" in request.path else OPENAI_FRAMES
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for frame in frames[:-1]:
                await response.write(frame)
            if self.hold:
                await self.release.wait()
            await response.write(frames[-1])
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._answer)
        app.router.add_post("/v1/responses", self._answer)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


# --- fixtures ------------------------------------------------------------------------------


def _settings(tmp_path: Path, upstream: str) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "agents": {
                "anthropic_base_url": upstream,
                "openai_base_url": f"{upstream}/v1",
                "chatgpt_base_url": f"{upstream}/backend-api",
            },
        }
    )


@dataclass
class Rig:
    gateway: ModelGateway
    guard: FakeGuard
    credentials: FakeCredentials
    meter: FakeMeter
    http: aiohttp.ClientSession
    url: str

    async def post(
        self, path: str, token: str | None, body: dict[str, Any], **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        sent = dict(headers)
        if token is not None and "authorization" not in {k.lower() for k in sent}:
            sent["x-api-key"] = token
        async with self.http.post(self.url + path, json=body, headers=sent) as response:
            return response.status, dict(response.headers), await response.read()


async def _rig(tmp_path: Path, upstream: str) -> Rig:
    guard, credentials, meter = FakeGuard(), FakeCredentials(), FakeMeter()
    gateway = ModelGateway(_settings(tmp_path, upstream), guard, credentials, meter)
    await gateway.start()
    return Rig(
        gateway,
        guard,
        credentials,
        meter,
        aiohttp.ClientSession(),
        f"http://127.0.0.1:{gateway.port}",
    )


@pytest.fixture
async def rig(tmp_path: Path, model_server: ModelServer) -> AsyncIterator[Rig]:
    made = await _rig(tmp_path, model_server.url)
    yield made
    await made.http.close()
    await made.gateway.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def rig_up(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Rig]:
    made = await _rig(tmp_path, upstream.url)
    yield made
    await made.http.close()
    await made.gateway.close()


MESSAGE = {
    "model": "claude-test-1",
    "max_tokens": 100,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
}
RESPONSE = {"model": "gpt-test-5", "stream": True, "input": [{"role": "user", "content": "hi"}]}


def _no_secret(*texts: object) -> None:
    for text in texts:
        for real in REALS:
            assert real not in str(text)


# --- credentials: swapped in on the way out, never seen by the agent ----------------------


async def test_api_key_reaches_upstream_and_never_the_agent(
    rig: Rig, model_server: ModelServer
) -> None:
    model_server.script(Text("hello"))
    status, headers, body = await rig.post(
        "/anthropic/v1/messages?beta=true",
        CLAUDE_TOKEN,
        MESSAGE,
        **{"anthropic-beta": "claude-code-20250219"},
    )
    assert status == 200, body
    assert b"hello" in body
    seen = model_server.log[-1]
    assert seen.path == "/v1/messages"
    assert seen.query == {"beta": "true"}
    assert seen.headers["x-api-key"] == REAL_ANTHROPIC_KEY
    assert "Authorization" not in seen.headers
    assert seen.headers["anthropic-beta"] == "claude-code-20250219"
    assert seen.headers["Accept-Encoding"] == "identity"
    assert seen.body == MESSAGE  # the body went through unchanged
    _no_secret(headers, body)


async def test_oauth_token_goes_as_bearer_with_the_oauth_beta(
    rig: Rig, model_server: ModelServer
) -> None:
    rig.credentials.by_agent["claude"] = Credential("claude", "oauth_token", REAL_OAUTH, "env")
    model_server.script(Text("hi"), Text("again"))
    # The agent signed in with an OAuth placeholder: Bearer and Claude Code's betas.
    status, headers, body = await rig.post(
        "/anthropic/v1/messages?beta=true",
        None,
        MESSAGE,
        Authorization=f"Bearer {CLAUDE_OAUTH_TOKEN}",
        **{"anthropic-beta": "claude-code-20250219,oauth-2025-04-20"},
    )
    assert status == 200, body
    seen = model_server.log[-1].headers
    assert seen["Authorization"] == f"Bearer {REAL_OAUTH}"
    assert "x-api-key" not in seen
    assert seen["anthropic-beta"] == "claude-code-20250219,oauth-2025-04-20"
    _no_secret(headers, body)
    # A key placeholder with an OAuth credential: the beta is added.
    status, _, _ = await rig.post("/anthropic/v1/messages", CLAUDE_TOKEN, MESSAGE)
    assert status == 200
    seen = model_server.log[-1].headers
    assert seen["Authorization"] == f"Bearer {REAL_OAUTH}"
    assert seen["anthropic-beta"] == "oauth-2025-04-20"


async def test_api_key_credential_behind_an_oauth_placeholder_drops_the_oauth_beta(
    rig: Rig, model_server: ModelServer
) -> None:
    status, _, _ = await rig.post(
        "/anthropic/v1/messages",
        None,
        MESSAGE,
        Authorization=f"Bearer {CLAUDE_OAUTH_TOKEN}",
        **{"anthropic-beta": "claude-code-20250219,oauth-2025-04-20"},
    )
    assert status == 200
    seen = model_server.log[-1].headers
    assert seen["x-api-key"] == REAL_ANTHROPIC_KEY
    assert "Authorization" not in seen
    assert seen["anthropic-beta"] == "claude-code-20250219"


async def test_codex_api_key_and_chatgpt_sign_in_headers(
    rig: Rig, model_server: ModelServer
) -> None:
    model_server.script(Text("one"), Text("two"))
    status, _, body = await rig.post(
        "/openai/responses", None, RESPONSE, Authorization=f"Bearer {CODEX_TOKEN}"
    )
    assert status == 200, body
    seen = model_server.log[-1]
    assert seen.path == "/v1/responses"
    assert seen.headers["Authorization"] == f"Bearer {REAL_OPENAI_KEY}"
    assert "chatgpt-account-id" not in seen.headers

    rig.credentials.by_agent["codex"] = Credential(
        "codex", "chatgpt", REAL_CHATGPT, "file", account_id="acct-123"
    )
    status, headers, body = await rig.post(
        "/chatgpt/codex/responses",
        None,
        RESPONSE,
        Authorization=f"Bearer {CHATGPT_TOKEN}",
        **{"chatgpt-account-id": "acct-placeholder"},
    )
    assert status == 200, body
    seen = model_server.log[-1]
    assert seen.headers["Authorization"] == f"Bearer {REAL_CHATGPT}"
    assert seen.headers["chatgpt-account-id"] == "acct-123"
    _no_secret(headers, body)


# --- streaming ---------------------------------------------------------------------------


async def test_sse_bytes_through_the_gateway_equal_the_direct_ones(
    rig_up: Rig, upstream: Upstream
) -> None:
    async with (
        aiohttp.ClientSession() as direct,
        direct.post(f"{upstream.url}/v1/messages", json=MESSAGE) as response,
    ):
        straight = await response.read()
    status, headers, through = await rig_up.post("/anthropic/v1/messages", CLAUDE_TOKEN, MESSAGE)
    assert status == 200
    assert through == straight == b"".join(ANTHROPIC_FRAMES)
    assert headers["Content-Type"] == "text/event-stream"
    assert upstream.bodies[-1] == json.dumps(MESSAGE).encode()


async def test_first_bytes_arrive_before_the_upstream_finishes(
    rig_up: Rig, upstream: Upstream
) -> None:
    upstream.hold = True
    async with rig_up.http.post(
        rig_up.url + "/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": CLAUDE_TOKEN}
    ) as response:
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == ANTHROPIC_FRAMES[0]
        assert not upstream.release.is_set()  # the upstream is still holding its answer
        upstream.release.set()
        rest = await asyncio.wait_for(response.read(), 5)
    assert first + rest == b"".join(ANTHROPIC_FRAMES)


async def test_agent_gone_mid_stream_closes_the_upstream(rig_up: Rig, upstream: Upstream) -> None:
    upstream.hold = True
    response = await rig_up.http.post(
        rig_up.url + "/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": CLAUDE_TOKEN}
    )
    await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    response.close()  # the agent hangs up while the model is still writing
    await asyncio.wait_for(upstream.cancelled.wait(), 5)
    # What it had cost so far is still counted, as an error.
    await asyncio.sleep(0.05)
    (record,) = rig_up.meter.records
    assert record[0] == "s-claude"
    assert record[2].input_tokens == 120
    assert record[3] is True


# --- refusals, each in the provider's shape ----------------------------------------------


async def test_no_placeholder_is_401(rig: Rig, model_server: ModelServer) -> None:
    status, _, body = await rig.post("/anthropic/v1/messages", None, MESSAGE)
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    status, _, body = await rig.post("/openai/responses", None, RESPONSE)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    # Codex's credential-less ps/mcp call on the ChatGPT route: a plain 404, as upstream.
    status, _, _ = await rig.post("/chatgpt/ps/mcp", None, {})
    assert status == 404
    assert model_server.log == []


async def test_access_denied_is_403_with_its_message(rig: Rig, model_server: ModelServer) -> None:
    status, _, body = await rig.post("/anthropic/v1/messages", "sk-ant-api03-unknown", MESSAGE)
    assert status == 403
    assert json.loads(body) == {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": "corral gateway: not a live session's placeholder",
        },
    }
    rig.guard.remotes = {"172.17.0.99"}  # the placeholder's own container only
    status, _, body = await rig.post("/anthropic/v1/messages", CLAUDE_TOKEN, MESSAGE)
    assert status == 403
    assert "not for this address" in json.loads(body)["error"]["message"]
    assert rig.guard.seen[-1] == "127.0.0.1"
    assert model_server.log == []


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/openai/responses", CLAUDE_TOKEN),  # claude on codex's route
        ("/anthropic/v1/messages", CODEX_TOKEN),  # codex on claude's
        ("/chatgpt/codex/responses", CODEX_TOKEN),  # an API-key codex on the ChatGPT route
        ("/openai/responses", CHATGPT_TOKEN),  # a ChatGPT codex on the API-key route
    ],
)
async def test_a_prefix_not_for_the_agent_is_403(
    rig: Rig, model_server: ModelServer, path: str, token: str
) -> None:
    status, _, body = await rig.post(path, token, MESSAGE)
    assert status == 403
    assert "is not for this session's agent" in body.decode()
    assert model_server.log == []


async def test_a_spent_budget_refuses_model_calls_in_the_provider_shape(
    rig: Rig, model_server: ModelServer
) -> None:
    reason = "corral: budget reached: session max_cost_usd 1.00, spent 1.02"
    rig.meter.refusals = {"s-claude": reason, "s-codex": reason}
    status, _, body = await rig.post("/anthropic/v1/messages?beta=true", CLAUDE_TOKEN, MESSAGE)
    assert status == 400
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": reason},
    }
    status, _, body = await rig.post("/openai/responses", CODEX_TOKEN, RESPONSE)
    assert status == 400
    assert json.loads(body) == {
        "error": {"type": "invalid_request_error", "code": "budget_exhausted", "message": reason}
    }
    assert model_server.log == []
    assert rig.meter.records == []
    assert rig.meter.refused_sessions == ["s-claude", "s-codex"]
    # Calls that cost nothing still pass (count_tokens is not a model call).
    status, _, _ = await rig.post("/anthropic/v1/messages/count_tokens", CLAUDE_TOKEN, MESSAGE)
    assert status == 200


async def test_no_credential_and_a_changed_kind_say_what_to_do(
    rig: Rig, model_server: ModelServer
) -> None:
    del rig.credentials.by_agent["claude"]
    status, _, body = await rig.post("/anthropic/v1/messages", CLAUDE_TOKEN, MESSAGE)
    assert status == 400
    message = json.loads(body)["error"]["message"]
    assert "no credential for claude" in message
    assert "corral login claude" in message
    rig.credentials.by_agent["codex"] = Credential("codex", "chatgpt", REAL_CHATGPT, "file")
    status, _, body = await rig.post("/openai/responses", CODEX_TOKEN, RESPONSE)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["code"] == "credential_changed"
    assert "recreate the session" in error["message"]
    assert model_server.log == []


async def test_upstream_down_is_502_in_the_provider_shape(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    made = await _rig(tmp_path, dead)
    try:
        status, _, body = await made.post("/anthropic/v1/messages", CLAUDE_TOKEN, MESSAGE)
        assert status == 502
        error = json.loads(body)["error"]
        assert error["type"] == "api_error"
        assert error["message"].startswith("corral gateway: Anthropic unreachable: ")
        status, _, body = await made.post("/openai/responses", CODEX_TOKEN, RESPONSE)
        assert status == 502
        assert json.loads(body)["error"]["message"].startswith("corral gateway: OpenAI unreachable")
        assert [r[3] for r in made.meter.records] == [True, True]
    finally:
        await made.http.close()
        await made.gateway.close()


async def test_head_is_answered_locally_and_unknown_routes_are_404(
    rig: Rig, model_server: ModelServer
) -> None:
    for path in ("/anthropic", "/anthropic/"):
        async with rig.http.head(rig.url + path) as response:
            assert response.status == 200
    async with rig.http.get(rig.url + "/v1/messages") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "NOT_FOUND"
    assert model_server.log == []


# --- usage -------------------------------------------------------------------------------


async def test_usage_is_recorded_for_both_providers(rig_up: Rig) -> None:
    status, _, _ = await rig_up.post("/anthropic/v1/messages?beta=true", CLAUDE_TOKEN, MESSAGE)
    assert status == 200
    status, _, _ = await rig_up.post("/openai/responses", CODEX_TOKEN, RESPONSE)
    assert status == 200
    assert rig_up.meter.records == [
        ("s-claude", "claude-test-1", Usage(120, 57, 400, 30), False),
        ("s-codex", "gpt-test-5", Usage(400, 80, 600, 0), False),
    ]


async def test_usage_of_a_json_answer_and_of_an_error(rig: Rig, model_server: ModelServer) -> None:
    model_server.script(Text("not streamed"))
    status, _, body = await rig.post(
        "/anthropic/v1/messages", CLAUDE_TOKEN, {**MESSAGE, "stream": False}
    )
    assert status == 200
    usage = json.loads(body)["usage"]
    assert rig.meter.records == [
        (
            "s-claude",
            "claude-test-1",
            Usage(usage["input_tokens"], usage["output_tokens"], 0, 0),
            False,
        )
    ]
    # Not a model call: not counted.
    await rig.post("/anthropic/v1/messages/count_tokens", CLAUDE_TOKEN, MESSAGE)
    assert len(rig.meter.records) == 1
    # An upstream error is a request and an error; the model comes from the request.
    from tests.model_server import Error

    model_server.script(Error(400, "bad"))
    status, _, _ = await rig.post("/anthropic/v1/messages", CLAUDE_TOKEN, MESSAGE)
    assert status == 400
    assert rig.meter.records[-1] == ("s-claude", "claude-test-1", Usage(), True)


def test_usage_tap_splits_anywhere_and_skips_over_long_lines() -> None:
    stream = b"".join(OPENAI_FRAMES)
    whole = UsageTap("openai", streamed=True)
    whole.feed(stream)
    bytewise = UsageTap("openai", streamed=True)
    for i in range(len(stream)):
        bytewise.feed(stream[i : i + 1])
    assert whole.result() == bytewise.result() == ("gpt-test-5", Usage(400, 80, 600, 0))

    # A delta line over the bound is skipped without being held; the rest still counts.
    huge = (
        b"data: " + b'{"type":"response.output_text.delta","delta":"' + b"x" * MAX_LINE + b'"}\n\n'
    )
    tap = UsageTap("openai", streamed=True)
    tap.feed(OPENAI_FRAMES[0])
    for i in range(0, len(huge), 65536):
        tap.feed(huge[i : i + 65536])
    assert len(tap._line) == 0
    tap.feed(OPENAI_FRAMES[2])
    assert tap.result() == ("gpt-test-5", Usage(400, 80, 600, 0))

    # A huge response.completed (a big output echoed back): its usage is still found.
    completed = {
        "type": "response.completed",
        "response": {
            "id": "r2",
            "model": "gpt-big",
            "output": [{"type": "message", "content": "y" * (MAX_LINE + 10)}],
            "usage": {
                "input_tokens": 50,
                "input_tokens_details": {"cached_tokens": 20},
                "output_tokens": 7,
            },
        },
    }
    tap = UsageTap("openai", streamed=True)
    tap.feed(f"event: response.completed\ndata: {json.dumps(completed)}\n\n".encode())
    assert tap.result() == ("gpt-big", Usage(30, 7, 20, 0))


# --- ports -------------------------------------------------------------------------------


async def test_port_is_remembered_across_a_restart(tmp_path: Path) -> None:
    made = await _rig(tmp_path, "http://127.0.0.1:9")
    first = made.gateway.port
    assert first
    assert await made.gateway.gateway_url("127.0.0.1") == f"http://127.0.0.1:{first}"
    await made.http.close()
    await made.gateway.close()
    ports = tmp_path / "data" / PORTS_FILE
    assert json.loads(ports.read_text()) == {"gateway": first}
    assert stat.S_IMODE(ports.stat().st_mode) == 0o600

    again = await _rig(tmp_path, "http://127.0.0.1:9")
    try:
        assert again.gateway.port == first
    finally:
        await again.http.close()
        await again.gateway.close()

    # Taken by someone else meanwhile: a new port, remembered in its place.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        moved = await _rig(tmp_path, "http://127.0.0.1:9")
        try:
            assert moved.gateway.port != first
            assert json.loads(ports.read_text()) == {"gateway": moved.gateway.port}
        finally:
            await moved.http.close()
            await moved.gateway.close()


def test_ports_file_keeps_other_keys_and_configured_wins(tmp_path: Path) -> None:
    assert remembered_port(tmp_path, "gateway", 0) == 0
    remember_port(tmp_path, "gateway", 41001)
    remember_port(tmp_path, "proxy", 41002)
    assert remembered_port(tmp_path, "gateway", 0) == 41001
    assert remembered_port(tmp_path, "proxy", 0) == 41002
    assert remembered_port(tmp_path, "gateway", 5000) == 5000
    (tmp_path / PORTS_FILE).write_text("not json")
    assert remembered_port(tmp_path, "gateway", 0) == 0


# --- the real Claude Code CLI in a container --------------------------------------------


async def _docker(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["api_key", "oauth_token"])
async def test_real_claude_in_a_container_reaches_its_model_only_through_the_gateway(
    tmp_path: Path, model_server: ModelServer, agent_image: str, mode: str
) -> None:
    address = bridge_gateway()
    assert address, "no default bridge"
    made = await _rig(tmp_path, model_server.url)
    name = f"corral-gw-test-{uuid.uuid4().hex[:8]}"
    try:
        if mode == "oauth_token":
            made.credentials.by_agent["claude"] = Credential(
                "claude", "oauth_token", REAL_OAUTH, "env"
            )
            credential_env = ["-e", f"CLAUDE_CODE_OAUTH_TOKEN={CLAUDE_OAUTH_TOKEN}"]
        else:
            credential_env = ["-e", f"ANTHROPIC_API_KEY={CLAUDE_TOKEN}"]
        url = await made.gateway.gateway_url(address)
        assert url == await made.gateway.gateway_url(address)  # idempotent
        model_server.script(Text("hello through corral"))
        made.guard.remotes = set()  # nobody, until the container's address is known
        code, _, err = await _docker(
            "create", "--name", name, "--label", TEST_LABEL, "--network", "bridge",
            "-u", "1000", "-w", "/tmp",
            "-e", f"ANTHROPIC_BASE_URL={url}/anthropic", *credential_env,
            "-e", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "-e", "DISABLE_TELEMETRY=1",
            "-e", "DISABLE_ERROR_REPORTING=1", "-e", "DISABLE_AUTOUPDATER=1",
            "-e", "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL=1",
            # A second's pause: the test learns the address and authorises only it.
            agent_image, "sh", "-c", "sleep 1 && exec claude -p 'say hello' "
            "--output-format stream-json --verbose",
        )  # fmt: skip
        assert code == 0, err
        code, _, err = await _docker("start", name)
        assert code == 0, err
        _, ip, _ = await _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)
        made.guard.remotes = {ip.strip()}
        code, out, err = await _docker("wait", name, timeout=60)
        _, logs, logs_err = await _docker("logs", name)
        assert out.strip() == "0", logs + logs_err
        result = json.loads(logs.strip().splitlines()[-1])
        assert result["type"] == "result"
        assert result["result"] == "hello through corral", result
        # The real credential reached the model server, and only it.
        (call,) = [r for r in model_server.log if r.kind == "claude"]
        if mode == "oauth_token":
            assert call.headers["Authorization"] == f"Bearer {REAL_OAUTH}"
            assert "oauth-2025-04-20" in call.headers["anthropic-beta"]
        else:
            assert call.headers["x-api-key"] == REAL_ANTHROPIC_KEY
        assert made.guard.seen
        assert set(made.guard.seen) == {ip.strip()}
        _, inspected, _ = await _docker("inspect", name)
        _no_secret(inspected, logs, logs_err)
        (record,) = made.meter.records
        assert record[0] == ("s-claude-oauth" if mode == "oauth_token" else "s-claude")
        assert record[2].output_tokens > 0
    finally:
        await _docker("rm", "-f", name)
        await made.http.close()
        await made.gateway.close()


@pytest.mark.parametrize(
    ("method", "path", "token"),
    [
        ("POST", "/anthropic/v1/messages/batches", CLAUDE_TOKEN),  # spend the meter never sees
        ("GET", "/anthropic/v1/files", CLAUDE_TOKEN),
        ("POST", "/anthropic/v1/../v1/messages/batches", CLAUDE_TOKEN),
        ("POST", "/anthropic/v1/messages%2f..%2fbatches", CLAUDE_TOKEN),
        ("GET", "/anthropic/v1/messages", CLAUDE_TOKEN),  # right path, wrong method
        ("POST", "/openai/files", CODEX_TOKEN),
        ("GET", "/chatgpt/conversations", CHATGPT_TOKEN),  # the user's ChatGPT history
        ("GET", "/chatgpt/codex/../conversations", CHATGPT_TOKEN),
    ],
)
async def test_only_the_endpoints_an_agent_needs_are_forwarded(
    rig: Rig, model_server: ModelServer, method: str, path: str, token: str
) -> None:
    rig.credentials.by_agent["codex"] = Credential(
        "codex", "chatgpt" if token == CHATGPT_TOKEN else "api_key", REAL_CHATGPT, "file"
    )
    before = len(model_server.log)
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            URL(rig.url + path, encoded=True),
            json={},
            headers={"x-api-key": token, "Authorization": f"Bearer {token}"},
        ) as answer,
    ):
        body = await answer.text()
    assert answer.status == 403, body
    assert "not an endpoint an agent needs" in body
    assert len(model_server.log) == before  # nothing reached the provider
