"""A scripted model server, so the real agent CLIs run end to end with no internet.

One aiohttp app on 127.0.0.1 (random port) speaks the two wire protocols the agents use.
Where a Docker engine runs, it also listens on the default bridge's gateway address
(``container_url``): session containers reach it there on the default ``bridge`` network,
so no test needs the host's network namespace (which corral refuses by default).

* Anthropic Messages API for Claude Code: ``POST /v1/messages`` (Claude Code adds
  ``?beta=true``), answered as SSE when the body says ``stream: true`` and as one JSON
  message otherwise; ``POST /v1/messages/count_tokens`` (part of the API, not seen from
  the CLI) gets a rough count.
* OpenAI Responses API for Codex: ``POST /v1/responses``, always SSE; the same at
  ``POST /backend-api/codex/responses``, where Codex signed in with ChatGPT sends it (its
  other ChatGPT calls, ``wham/usage``, ``wham/settings/user``, ``ps/mcp``, get 404s it
  tolerates; its TUI does not tolerate one on ``wham/accounts/check``, which corral's
  gateway answers itself).

* ``GET /v1/models``, the cheap call corral's credential check makes (Anthropic and
  OpenAI alike): 200 for any key or bearer token except :data:`BAD_KEY`, which gets 401.

Everything else (Claude Code's ``HEAD /`` connectivity check included) gets 404.

A test queues *steps*; each conversation request takes the next one::

    server.script(ToolUse("Bash", {"command": "echo hi > /workspace/x"}), Text("done"))

``Text`` and ``ToolUse`` are one-block replies, ``Reply(Text(..), ToolUse(..))`` puts
several blocks in one answer, ``Hold()`` makes the request wait until the test calls
``hold.release()`` (``await hold.reached.wait()`` tells the agent is "thinking"), and
``Error(status, message)`` answers with an API error. With the script empty, a request gets
``Text(server.default_text)`` and is counted in ``server.unscripted``.

``ToolUse("Bash", {"command": c})`` is mapped for Codex to its shell tool
``exec_command {"cmd": c}``; any other tool name goes through unchanged as a
``function_call``, so ``ToolUse("exec_command", {"cmd": c})`` works as well.

Side requests are Claude Code's helper calls beside the conversation; the one seen with
2.1.197 is the session-title request, which the interactive TUI makes at the first prompt
even with non-essential traffic disabled (headless ``-p`` makes it only without that
setting). ``is_side_request`` recognises them; they get a harmless answer (JSON when they ask
for a schema) without consuming the script and are kept in ``server.side_requests``, apart
from ``server.requests``.

Codex's interactive TUI (0.169.0) makes one side request too: a thread title at the first
prompt, a Responses request whose ``x-codex-turn-metadata`` says ``thread_source:
"thread_title"`` and whose ``text.format`` asks for JSON ``{"title": string}``.
``is_codex_side_request`` recognises it; it is answered and kept apart the same way.

The ``model_server`` fixture is ``model_server_fixture`` here (named apart so that importing
it into a test module, ``from tests.model_server import model_server_fixture``, does not
clash with the test's ``model_server`` argument); or ``async with ModelServer() as server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import pytest
from aiohttp import web
from pydantic import SecretStr

from daemon.settings import Settings

__all__ = [
    "FAKE_API_KEY",
    "Error",
    "Hold",
    "ModelServer",
    "RecordedRequest",
    "Reply",
    "Step",
    "Text",
    "ToolUse",
    "claude_env",
    "codex_config_toml",
    "codex_side_answer",
    "is_codex_side_request",
    "is_side_request",
    "model_server_fixture",
    "point_agents_at",
    "side_answer",
    "sse_events",
]

Json = dict[str, Any]

# --- script steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """An assistant text block (Claude: ``text``; Codex: a ``message`` with ``output_text``)."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """A tool call (Claude: ``tool_use`` block; Codex: ``function_call`` item).

    ``id`` is generated when not given; the follow-up request carries it back
    (``tool_use_id`` for Claude, ``call_id`` for Codex).
    """

    name: str
    input: Json = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """Several blocks in one model answer, e.g. a sentence then a tool call."""

    blocks: tuple[Text | ToolUse, ...]

    def __init__(self, *blocks: Text | ToolUse) -> None:
        object.__setattr__(self, "blocks", blocks)


@dataclass(frozen=True)
class Error:
    """An API error answer (HTTP ``status`` with the provider's error JSON).

    Claude Code retries 429 and 5xx up to 10 times with back-off (Codex too, unless its
    provider says ``request_max_retries = 0`` as ``codex_config_toml`` does): use another
    4xx for a quick failure.
    """

    status: int = 400
    message: str = "scripted error"


class Hold:
    """Blocks the request that reaches it until ``release()``; then the next step answers.

    ``reached`` is set when a request arrives here, so a test can observe an agent that
    is waiting for the model.
    """

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait_released(self) -> None:
        await self._released.wait()


Step = Text | ToolUse | Reply | Error | Hold


@dataclass
class RecordedRequest:
    """One request the server received, for assertions and debugging."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Json | None
    # "claude", "codex", "side" (a side request), or "other" (404s, HEAD /).
    kind: str


# --- side requests ---------------------------------------------------------------------

# Measured with Claude Code 2.1.197 (see tests/test_model_server.py and the report):
# * headless ``-p`` with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1: no side request at all;
# * headless without it, and the interactive TUI with or without it: one title request at
#   the first prompt, concurrent with the first turn: no ``tools``, ``thinking`` disabled,
#   a system prompt "Generate a concise, sentence-case title (3-7 words) ..." and
#   ``output_config.format`` = JSON schema ``{"title": string}``;
# * no quota probe (``max_tokens: 1``) was seen with an API key; it is matched anyway.
# Codex 0.169.0: ``codex exec`` made no side request; the TUI asks for a thread title at the
# first prompt of a thread (see ``is_codex_side_request``).
_SIDE_SYSTEM_MARKERS = (
    "generate a concise, sentence-case title",
    # Helper prompts of earlier Claude Code versions (not seen with 2.1.197).
    "summarize this coding conversation",
    "analyze if this message indicates a new conversation topic",
)


def _system_text(body: Json) -> str:
    system = body.get("system")
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(str(part.get("text", "")) for part in system if isinstance(part, dict))
    return ""


def is_side_request(body: Json) -> bool:
    """True for a Claude Code request that is not a turn of the scripted conversation.

    The conversation always offers ``tools``; the helpers (title, summary, topic) offer none
    or carry a helper system prompt; the quota probe asks for ``max_tokens: 1``.
    """
    if body.get("max_tokens") == 1 or not body.get("tools"):
        return True
    system = _system_text(body).lower()
    return any(marker in system for marker in _SIDE_SYSTEM_MARKERS)


_CODEX_TITLE_MARKER = "generate a concise, single-line task title"


def is_codex_side_request(body: Json) -> bool:
    """True for a Codex request that is not a turn of the scripted conversation.

    Codex says what started each request in ``client_metadata["x-codex-turn-metadata"]``
    (a JSON string): ``thread_source`` is ``"user"`` for the conversation and
    ``"thread_title"`` for the title helper. The helper's prompt is matched as well, in case
    a version drops the metadata.
    """
    metadata = body.get("client_metadata")
    turn: Any = None
    if isinstance(metadata, dict) and isinstance(metadata.get("x-codex-turn-metadata"), str):
        with contextlib.suppress(ValueError):
            turn = json.loads(metadata["x-codex-turn-metadata"])
    if isinstance(turn, dict) and turn.get("thread_source") == "thread_title":
        return True
    items = body.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list):
        text = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return text.lower().startswith(_CODEX_TITLE_MARKER)
    return False


def codex_side_answer(body: Json, text: str) -> Text:
    """A harmless answer to a Codex side request: JSON when ``text.format`` asks for a schema."""
    text_options = body.get("text")
    output_format = text_options.get("format") if isinstance(text_options, dict) else None
    if (
        isinstance(output_format, dict)
        and output_format.get("type") == "json_schema"
        and isinstance(output_format.get("schema"), dict)
    ):
        return Text(json.dumps(_fill_schema(output_format["schema"], text)))
    return Text(text)


def _fill_schema(schema: Json, text: str) -> Any:
    """The smallest value that satisfies a simple JSON schema, strings set to ``text``."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        properties: Json = schema.get("properties", {})
        required = schema.get("required", list(properties))
        return {key: _fill_schema(properties.get(key, {}), text) for key in required}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return text


def side_answer(body: Json, text: str) -> Text:
    """A harmless answer to a side request: JSON when the request asks for a schema."""
    output_format = (body.get("output_config") or {}).get("format") or {}
    if output_format.get("type") == "json_schema" and isinstance(output_format.get("schema"), dict):
        return Text(json.dumps(_fill_schema(output_format["schema"], text)))
    return Text(text)


# --- wire formats ----------------------------------------------------------------------


def _sse(event: str, data: Json) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_events(raw: str) -> list[tuple[str, Json]]:
    """Parse an SSE stream into ``(event, data)`` pairs (for tests of the framing)."""
    events: list[tuple[str, Json]] = []
    for frame in raw.split("\n\n"):
        name, data = "", ""
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data += line[len("data:") :].strip()
        if name or data:
            events.append((name, json.loads(data) if data else {}))
    return events


def _chunks(text: str, size: int = 24) -> list[str]:
    # Several deltas per block so the CLIs' streaming accumulation is exercised.
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _blocks(step: Text | ToolUse | Reply) -> tuple[Text | ToolUse, ...]:
    return step.blocks if isinstance(step, Reply) else (step,)


def _estimate_tokens(body: Json | None) -> int:
    # Plausible, not exact: the CLIs only display and sum these.
    return max(1, len(json.dumps(body or {})) // 4)


class _Ids:
    """Ids in the providers' shapes; a counter keeps them unique and readable in fixtures."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._salt = secrets.token_hex(4)

    def make(self, prefix: str) -> str:
        return f"{prefix}_{self._salt}{next(self._counter):08d}"


def anthropic_message(
    blocks: Iterable[Text | ToolUse], model: str, ids: _Ids, input_tokens: int
) -> Json:
    """The complete message JSON (tool ids filled in), as a non-streaming answer gives it."""
    content: list[Json] = []
    for block in blocks:
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
        else:
            content.append(
                {
                    "type": "tool_use",
                    "id": block.id or ids.make("toolu"),
                    "name": block.name,
                    "input": block.input,
                }
            )
    stop = "tool_use" if any(c["type"] == "tool_use" for c in content) else "end_turn"
    output_tokens = max(1, len(json.dumps(content)) // 4)
    message = {
        "id": ids.make("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        },
    }
    return message


def anthropic_sse(message: Json) -> list[bytes]:
    """The SSE frames the Messages API sends for ``message`` (same order as the real API)."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    frames = [_sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        opening: Json
        deltas: list[Json]
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": part} for part in _chunks(block["text"])]
        else:
            opening = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in ["", *_chunks(json.dumps(block["input"]))]
            ]
        frames.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        if index == 0:
            frames.append(_sse("ping", {"type": "ping"}))
        frames.extend(
            _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        frames.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    frames.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    frames.append(_sse("message_stop", {"type": "message_stop"}))
    return frames


def codex_items(blocks: Iterable[Text | ToolUse], ids: _Ids) -> list[Json]:
    """Responses API output items for ``blocks``; ``Bash`` becomes Codex's ``exec_command``."""
    items: list[Json] = []
    for block in blocks:
        if isinstance(block, Text):
            items.append(
                {
                    "id": ids.make("msg"),
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": block.text, "annotations": []}],
                }
            )
            continue
        name, arguments = block.name, dict(block.input)
        if name == "Bash":
            # Claude's Bash tool and Codex's unified exec tool do the same thing.
            name, arguments = "exec_command", {"cmd": arguments["command"]}
        items.append(
            {
                "id": ids.make("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": block.id or ids.make("call"),
                "name": name,
                "arguments": json.dumps(arguments),
            }
        )
    return items


def codex_sse(items: list[Json], model: str, ids: _Ids, input_tokens: int) -> list[bytes]:
    """The SSE frames of one streamed Responses API answer carrying ``items``."""
    response: Json = {
        "id": ids.make("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": model,
        "output": [],
    }
    seq = itertools.count()
    frames = [
        _sse(
            "response.created",
            {"type": "response.created", "sequence_number": next(seq), "response": response},
        )
    ]
    for index, item in enumerate(items):
        added = {**item, "status": "in_progress"}
        if item["type"] == "message":
            added["content"] = []
        frames.append(
            _sse(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": added,
                },
            )
        )
        if item["type"] == "message":
            # Codex streams these into its UI; the item.done below is what it records.
            text = item["content"][0]["text"]
            frames.extend(
                _sse(
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": part,
                    },
                )
                for part in _chunks(text)
            )
        frames.append(
            _sse(
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": item,
                },
            )
        )
    output_tokens = max(1, len(json.dumps(items)) // 4)
    completed = {
        **response,
        "status": "completed",
        "output": items,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }
    frames.append(
        _sse(
            "response.completed",
            {"type": "response.completed", "sequence_number": next(seq), "response": completed},
        )
    )
    return frames


# --- agent configuration ---------------------------------------------------------------

# The one key GET /v1/models refuses (401): a credential check says "invalid".
BAD_KEY = "sk-bad-0123456789abcdefghijklmn"
FAKE_API_KEY = "test-key-0123456789abcdefghij"  # fake; its last 20 characters are what
# Claude Code's ~/.claude.json ``customApiKeyResponses.approved`` lists for the TUI.


def claude_env(url: str, api_key: str = FAKE_API_KEY) -> dict[str, str]:
    """Environment that points Claude Code at ``url`` and keeps it off every other host.

    Measured with 2.1.197 in a sink network namespace: with these, headless and TUI runs
    make no DNS lookup at all. Without ``CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL``
    the TUI looks up downloads.claude.ai and github.com (plugin marketplace).
    """
    return {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
    }


def point_agents_at(settings: Settings, server: ModelServer) -> None:
    """Daemon settings whose session agents run for real and talk only to ``server``.

    The containers stay on the default bridge and reach the server at its gateway address;
    an agent on the host (the local backend) reaches that address too.
    """
    settings.sessions.start_agent = True
    settings.docker.network_mode = "bridge"
    settings.agents.anthropic_base_url = server.container_url
    settings.agents.anthropic_api_key = SecretStr(FAKE_API_KEY)
    settings.agents.openai_base_url = f"{server.container_url}/v1"
    settings.agents.openai_api_key = SecretStr(FAKE_API_KEY)


def codex_config_toml(url: str, env_key: str = "FAKE_KEY", model: str = "gpt-5.5") -> str:
    """``$CODEX_HOME/config.toml`` that points Codex at ``url`` and nowhere else.

    Measured with 0.169.0: without ``[features] plugins = false`` it runs
    ``git ls-remote https://github.com/openai/plugins.git``; without ``[analytics]
    enabled = false`` it tries to send metrics at exit (and waits ~5 s doing so). No
    retries, so a broken script fails fast instead of backing off.

    ``model`` is pinned to one in Codex's bundled catalog that uses plain function tools
    (``exec_command`` in the request's ``tools``). The 0.169.0 default, ``gpt-6.1-sol``,
    uses "code mode" instead: tools move into an ``additional_tools`` input item and the
    model gets only a JavaScript ``exec`` tool. A model missing from the catalog works but
    adds an ``error`` item ("Model metadata ... not found") to ``codex exec --json``.
    """
    return f"""model = "{model}"
model_provider = "fake"
check_for_update_on_startup = false

[features]
plugins = false

[analytics]
enabled = false

[model_providers.fake]
name = "fake"
base_url = "{url}/v1"
env_key = "{env_key}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


# --- the server ------------------------------------------------------------------------


_gateway: list[str] = []  # the address once found; a failed lookup is tried again


def bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge (typically 172.17.0.1), or None.

    The engine reports it as the bridge's IPAM gateway; where that is left empty (the
    default ``docker0``), the bridge takes the first address of its subnet. Only a found
    address is kept: tests not marked ``docker`` see no engine, and must not make the
    later ones believe there is none.
    """
    if _gateway:
        return _gateway[0]
    try:
        found = subprocess.run(
            ["docker", "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if found.returncode != 0:
        return None
    for entry in json.loads(found.stdout or "[]") or []:
        address = entry.get("Gateway")
        if not address:
            subnet = ipaddress.ip_network(entry.get("Subnet") or "0.0.0.0/32")
            if subnet.version != 4 or subnet.num_addresses <= 2:
                continue
            address = str(next(subnet.hosts()))
        _gateway.append(str(address))
        return _gateway[0]
    return None


class ModelServer:
    """The scripted server. ``await start()``/``close()`` or use it as an async context."""

    def __init__(
        self,
        default_text: str = "(nothing scripted)",
        side_request: Callable[[Json], bool] = is_side_request,
        codex_side_request: Callable[[Json], bool] = is_codex_side_request,
    ) -> None:
        self.default_text = default_text
        # Strings in side answers; for the title request this becomes the session title.
        self.side_text = "Scripted session"
        self._is_side = side_request
        self._is_codex_side = codex_side_request
        self.url = ""
        self.port = 0
        # Where session containers on the default bridge reach this server; ``url`` when no
        # engine runs here.
        self.container_url = ""
        # Bodies of the conversation requests (side requests and 404s excluded), in order.
        self.requests: list[Json] = []
        self.side_requests: list[Json] = []
        # Every request, side requests and 404s included.
        self.log: list[RecordedRequest] = []
        self.unscripted = 0
        self._steps: list[Step] = []
        self._holds: list[Hold] = []
        self._ids = _Ids()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # -- scripting and assertions

    def script(self, *steps: Step) -> None:
        """Queue steps; each conversation request consumes one (``Hold`` adds a wait)."""
        self._steps.extend(steps)
        self._holds.extend(step for step in steps if isinstance(step, Hold))

    @property
    def pending(self) -> list[Step]:
        """Steps not consumed yet (a test can assert the agent used them all)."""
        return list(self._steps)

    async def wait_for_requests(self, count: int, timeout: float = 30) -> list[Json]:
        """Wait until ``count`` conversation requests have arrived; returns them."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.requests) >= count), timeout
            )
        return self.requests[:count]

    # -- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post("/v1/responses", self._codex)
        # Codex signed in with ChatGPT: its provider is <chatgpt backend>/codex.
        app.router.add_post("/backend-api/codex/responses", self._codex)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.container_url = self.url
        gateway = bridge_gateway()
        if gateway is not None:
            # The same app on the bridge's side of the host, on the same port when it is free.
            bridged = web.TCPSite(self._runner, gateway, self.port)
            try:
                await bridged.start()
            except OSError:
                bridged = web.TCPSite(self._runner, gateway, 0)
                await bridged.start()
            port = next(a[1] for a in self._runner.addresses if a[0] == gateway)
            self.container_url = f"http://{gateway}:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            # Release held requests (reached or not) so shutdown does not wait for them.
            for hold in self._holds:
                hold.release()
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers

    async def _record(self, request: web.Request, kind: str) -> Json | None:
        body: Json | None = None
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                loaded = await request.json()
                body = loaded if isinstance(loaded, dict) else {"_": loaded}
        self.log.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                kind=kind,
            )
        )
        return body

    async def _next_step(self, body: Json) -> Step:
        """Take the step for a conversation request, waiting out any ``Hold`` first."""
        async with self._arrived:
            self.requests.append(body)
            self._arrived.notify_all()
        while self._steps:
            step = self._steps.pop(0)
            if not isinstance(step, Hold):
                return step
            step.reached.set()
            await step.wait_released()
        self.unscripted += 1
        return Text(self.default_text)

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request, "other")
        keys = {request.headers.get("x-api-key", "")}
        keys.add(request.headers.get("authorization", "").removeprefix("Bearer "))
        if BAD_KEY in keys:
            return web.json_response(
                {"type": "error", "error": {"type": "authentication_error", "message": "bad"}},
                status=401,
            )
        return web.json_response({"object": "list", "data": [{"id": "scripted-model"}]})

    async def _not_found(self, request: web.Request) -> web.Response:
        await self._record(request, "other")
        return web.json_response(
            {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}},
            status=404,
        )

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body = await self._record(request, "side")
        return web.json_response({"input_tokens": _estimate_tokens(body)})

    async def _stream(self, request: web.Request, frames: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request, "claude")
        if body is None:
            return _anthropic_error(400, "body is not JSON")
        step: Step
        if self._is_side(body):
            self.log[-1].kind = "side"
            self.side_requests.append(body)
            step = side_answer(body, self.side_text)
        else:
            step = await self._next_step(body)
        if isinstance(step, Error):
            return _anthropic_error(step.status, step.message)
        assert not isinstance(step, Hold)
        message = anthropic_message(
            _blocks(step), str(body.get("model", "claude")), self._ids, _estimate_tokens(body)
        )
        if body.get("stream"):
            return await self._stream(request, anthropic_sse(message))
        return web.json_response(message)

    async def _codex(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request, "codex")
        if body is None:
            return _codex_error(400, "body is not JSON")
        step: Step
        if self._is_codex_side(body):
            self.log[-1].kind = "side"
            self.side_requests.append(body)
            step = codex_side_answer(body, self.side_text)
        else:
            step = await self._next_step(body)
        if isinstance(step, Error):
            return _codex_error(step.status, step.message)
        assert not isinstance(step, Hold)
        items = codex_items(_blocks(step), self._ids)
        frames = codex_sse(items, str(body.get("model", "gpt")), self._ids, _estimate_tokens(body))
        return await self._stream(request, frames)


def _anthropic_error(status: int, message: str) -> web.Response:
    kind: Literal["invalid_request_error", "api_error"] = (
        "invalid_request_error" if status < 500 else "api_error"
    )
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


def _codex_error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"type": "invalid_request_error", "message": message, "code": None}},
        status=status,
    )


@pytest.fixture(name="model_server")
async def model_server_fixture() -> AsyncIterator[ModelServer]:
    """A started ``ModelServer`` on 127.0.0.1 (and the bridge's gateway); closed after."""
    async with ModelServer() as server:
        yield server
