"""The scripted model server: its wire format, then the real agent CLIs against it.

The Docker tests run Claude Code and Codex headless in the agent image, on the default
bridge, where they reach the server at the bridge's gateway address (and, configured by
``claude_env`` and ``codex_config_toml``, nothing else). They also refresh the sample transcripts in
``tests/fixtures/`` for the transcript parsers: written when missing or when
``CORRALTEST_UPDATE_FIXTURES=1``; otherwise only checked to still be representative.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_repo
from tests.model_server import (
    Error,
    Hold,
    ModelServer,
    Reply,
    Text,
    ToolUse,
    claude_env,
    codex_config_toml,
    model_server_fixture,  # noqa: F401  (the `model_server` fixture)
    sse_events,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
AGENT_UID = 1000  # the image's `agent` user: --dangerously-skip-permissions refuses root
AGENT_HOME = "/home/agent"
AGENT_TIMEOUT = 45.0

# A minimal tool-offering request body, as Claude Code's conversation requests look.
CONVERSATION = {
    "model": "claude-test",
    "max_tokens": 64000,
    "stream": True,
    "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


async def post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status, await response.text()


# --- wire format, no Docker ------------------------------------------------------------


async def test_anthropic_stream_framing(model_server: ModelServer) -> None:
    model_server.script(
        Reply(Text("Let me write it, then report back."), ToolUse("Bash", {"command": "ls"}))
    )
    status, raw = await post(f"{model_server.url}/v1/messages?beta=true", CONVERSATION)
    assert status == 200
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    # Every frame names its event twice, as the real API does: SSE field and JSON type.
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["model"] == "claude-test"
    assert start["id"].startswith("msg_")
    assert start["usage"]["input_tokens"] > 0

    text = "".join(
        d["delta"]["text"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )
    assert text == "Let me write it, then report back."
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == {"command": "ls"}
    tool_block = next(
        d["content_block"]
        for n, d in events
        if n == "content_block_start" and d["content_block"]["type"] == "tool_use"
    )
    assert tool_block["name"] == "Bash"
    assert tool_block["id"].startswith("toolu_")
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] > 0
    assert model_server.requests == [CONVERSATION]


async def test_anthropic_non_streaming_and_unscripted(model_server: ModelServer) -> None:
    model_server.script(Text("done"))
    status, raw = await post(f"{model_server.url}/v1/messages", {**CONVERSATION, "stream": False})
    assert status == 200
    message = json.loads(raw)
    assert message["content"] == [{"type": "text", "text": "done"}]
    assert message["stop_reason"] == "end_turn"
    # An empty script still answers, so a stray turn shows up as a count, not a hang.
    _, raw = await post(f"{model_server.url}/v1/messages", {**CONVERSATION, "stream": False})
    assert json.loads(raw)["content"][0]["text"] == model_server.default_text
    assert model_server.unscripted == 1


async def test_side_requests_do_not_consume_the_script(model_server: ModelServer) -> None:
    model_server.script(Text("the real answer"))
    title = {  # the shape Claude Code 2.1.197 sends for the session title
        "model": "claude-test",
        "max_tokens": 64000,
        "stream": True,
        "system": [{"type": "text", "text": "Generate a concise, sentence-case title (3-7 words)"}],
        "messages": [{"role": "user", "content": "<session>make a file</session>"}],
        "output_config": {
            "format": {
                "type": "json_schema",
                "schema": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}},
                    "required": ["title"],
                },
            }
        },
    }
    _, raw = await post(f"{model_server.url}/v1/messages?beta=true", title)
    text = "".join(
        d["delta"].get("text", "") for n, d in sse_events(raw) if n == "content_block_delta"
    )
    assert json.loads(text) == {"title": model_server.side_text}
    quota = {**CONVERSATION, "max_tokens": 1, "stream": False}
    _, raw = await post(f"{model_server.url}/v1/messages", quota)
    assert json.loads(raw)["content"][0]["text"] == model_server.side_text

    assert len(model_server.side_requests) == 2
    assert model_server.requests == []
    assert len(model_server.pending) == 1


async def test_codex_stream_framing(model_server: ModelServer) -> None:
    model_server.script(
        ToolUse("Bash", {"command": "echo hi"}, id="call_1"), Text("all done"), Error(400, "nope")
    )
    body = {"model": "gpt-test", "stream": True, "input": [], "tools": []}
    _, raw = await post(f"{model_server.url}/v1/responses", body)
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "response.created",
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    item = events[2][1]["item"]
    assert item["type"] == "function_call"
    assert item["name"] == "exec_command"
    assert item["call_id"] == "call_1"
    assert json.loads(item["arguments"]) == {"cmd": "echo hi"}
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["output"] == [item]
    assert completed["usage"]["total_tokens"] > 0

    _, raw = await post(f"{model_server.url}/v1/responses", body)
    items = [d["item"] for n, d in sse_events(raw) if n == "response.output_item.done"]
    assert items[0]["content"][0] == {"type": "output_text", "text": "all done", "annotations": []}
    deltas = [d["delta"] for n, d in sse_events(raw) if n == "response.output_text.delta"]
    assert "".join(deltas) == "all done"

    status, raw = await post(f"{model_server.url}/v1/responses", body)
    assert status == 400
    assert json.loads(raw)["error"]["message"] == "nope"


async def test_hold_and_not_found(model_server: ModelServer) -> None:
    hold = Hold()
    model_server.script(hold, Text("after the hold"))
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{model_server.url}/") as response:
            assert response.status == 404
        pending = asyncio.create_task(post(f"{model_server.url}/v1/messages", CONVERSATION))
        await asyncio.wait_for(hold.reached.wait(), 5)
        await model_server.wait_for_requests(1, timeout=5)
        assert not pending.done()
        hold.release()
        status, raw = await asyncio.wait_for(pending, 5)
    assert status == 200
    assert "after the hold" in raw
    assert [entry.kind for entry in model_server.log] == ["other", "claude"]


async def test_close_releases_a_reached_hold() -> None:
    # A test that forgets to release must not hang its teardown on the held request.
    hold = Hold()
    server = await ModelServer().start()
    server.script(hold)
    request = asyncio.create_task(post(f"{server.url}/v1/messages", CONVERSATION))
    await asyncio.wait_for(hold.reached.wait(), 5)
    await asyncio.wait_for(server.close(), 5)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await request


# --- the real CLIs, in the agent image -------------------------------------------------


def agent_dirs(tmp_path: Path) -> tuple[Path, Path, str]:
    """A git workspace and an empty home the container user can write; its ``-u`` value."""
    workspace = make_repo(tmp_path / "workspace")
    home = tmp_path / "home"
    home.mkdir()
    if os.geteuid() == 0:
        for path in (workspace, home):
            for entry in [path, *path.rglob("*")]:
                os.chown(entry, AGENT_UID, AGENT_UID, follow_symlinks=False)
        user = f"{AGENT_UID}:{AGENT_UID}"
    else:  # not root: the dirs are ours already; run as ourselves (still not root)
        user = f"{os.getuid()}:{os.getgid()}"
    return workspace, home, user


async def run_in_agent_image(
    image: str, user: str, env: dict[str, str], mounts: dict[Path, str], argv: list[str]
) -> str:
    """``docker run`` the CLI on the default bridge with a hard timeout; returns stdout."""
    name = f"corral-test-model-{secrets.token_hex(4)}"
    command = ["docker", "run", "--rm", "--name", name, "--label", "corral.test=model_server"]
    command += ["--network", "bridge", "-u", user, "-e", f"HOME={AGENT_HOME}"]
    for key, value in env.items():
        command += ["-e", f"{key}={value}"]
    for host_path, container_path in mounts.items():
        command += ["-v", f"{host_path}:{container_path}"]
    command += [image, *argv]
    # A subprocess, not subprocess.run: the server lives on this event loop.
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), AGENT_TIMEOUT)
    except TimeoutError:
        # Killing the client leaves the container running: remove it by name.
        remover = await asyncio.create_subprocess_exec(
            "docker", "rm", "-f", name, stdout=asyncio.subprocess.DEVNULL
        )
        await remover.wait()
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish in {AGENT_TIMEOUT} s") from None
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def keep_fixture(source: Path, name: str) -> None:
    """Save ``source`` as a sample for the parsers, or check the saved one still fits."""
    target = FIXTURES / name
    if os.environ.get("CORRALTEST_UPDATE_FIXTURES") == "1" or not target.exists():
        FIXTURES.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)
        return
    # Record kinds come and go with CLI versions; a stale sample is one whose kinds the
    # current CLI no longer writes.
    fresh = {line.get("type") for line in json_lines(source.read_text())}
    saved = {line.get("type") for line in json_lines(target.read_text())}
    assert saved <= fresh, f"{name} has record types {saved - fresh} the CLI no longer writes"


@pytest.mark.docker
@pytest.mark.timeout(90)
async def test_claude_code_headless_tool_turn(
    model_server: ModelServer, agent_image: str, tmp_path: Path
) -> None:
    workspace, home, user = agent_dirs(tmp_path)
    # Text and a tool call in one answer, as models do: the transcript then shows how
    # Claude Code splits one message's blocks into records.
    model_server.script(
        Reply(
            Text("I will write the file."),
            ToolUse(
                "Bash",
                {"command": "echo hello > /workspace/out.txt", "description": "Write out.txt"},
                id="toolu_01corraltest",
            ),
        ),
        Text("done"),
    )
    out = await run_in_agent_image(
        agent_image,
        user,
        claude_env(model_server.container_url),
        {workspace: "/workspace", home: AGENT_HOME},
        [
            "claude",
            "-p",
            "make a file",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
        ],
    )

    assert (workspace / "out.txt").read_text() == "hello\n"
    events = json_lines(out)
    init = events[0]
    assert init["type"] == "system"
    assert init["subtype"] == "init"
    tool_uses = [
        block
        for event in events
        if event["type"] == "assistant"
        for block in event["message"]["content"]
        if block["type"] == "tool_use"
    ]
    assert tool_uses == [
        {
            "type": "tool_use",
            "id": "toolu_01corraltest",
            "name": "Bash",
            "input": {"command": "echo hello > /workspace/out.txt", "description": "Write out.txt"},
        }
    ]
    texts = [
        block["text"]
        for event in events
        if event["type"] == "assistant"
        for block in event["message"]["content"]
        if block["type"] == "text"
    ]
    assert texts == ["I will write the file.", "done"]
    tool_results = [
        block
        for event in events
        if event["type"] == "user"
        for block in event["message"]["content"]
        if block["type"] == "tool_result"
    ]
    assert [r["tool_use_id"] for r in tool_results] == ["toolu_01corraltest"]
    assert tool_results[0]["is_error"] is False
    result = events[-1]
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["result"] == "done"

    # The model saw: the prompt, then the tool result of its own call.
    first, second = model_server.requests
    assert first["stream"] is True
    assert any(t["name"] == "Bash" for t in first["tools"])
    last = second["messages"][-1]
    assert last["role"] == "user"
    assert [b["tool_use_id"] for b in last["content"] if b["type"] == "tool_result"] == [
        "toolu_01corraltest"
    ]
    assert model_server.pending == []
    assert model_server.unscripted == 0
    assert model_server.side_requests == []  # headless with non-essential traffic off
    assert {(e.method, e.path) for e in model_server.log} == {
        ("HEAD", "/"),
        ("POST", "/v1/messages"),
    }
    assert all(e.query == {"beta": "true"} for e in model_server.log if e.method == "POST")

    transcript = home / ".claude" / "projects" / "-workspace" / f"{init['session_id']}.jsonl"
    records = json_lines(transcript.read_text())
    kinds = {record["type"] for record in records}
    assert {"user", "assistant"} <= kinds
    assert any(
        block.get("type") == "tool_result"
        for record in records
        if record["type"] == "user" and isinstance(record["message"]["content"], list)
        for block in record["message"]["content"]
    )
    keep_fixture(transcript, "claude_transcript.jsonl")


@pytest.mark.docker
@pytest.mark.timeout(90)
async def test_codex_exec_tool_turn(
    model_server: ModelServer, agent_image: str, tmp_path: Path
) -> None:
    workspace, home, user = agent_dirs(tmp_path)
    codex_home = home / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config_toml(model_server.container_url))
    if os.geteuid() == 0:
        for path in (codex_home, codex_home / "config.toml"):
            os.chown(path, AGENT_UID, AGENT_UID)
    model_server.script(
        Reply(
            Text("I will write the file."),
            ToolUse("Bash", {"command": "echo hello > /workspace/out.txt"}, id="call_corraltest"),
        ),
        Text("done"),
    )
    out = await run_in_agent_image(
        agent_image,
        user,
        {"FAKE_KEY": "fake-key-for-tests"},
        {workspace: "/workspace", home: AGENT_HOME},
        [
            "codex",
            "exec",
            "--json",
            "--dangerously-bypass-approvals-and-sandbox",
            "--skip-git-repo-check",
            "make a file",
        ],
    )

    assert (workspace / "out.txt").read_text() == "hello\n"
    events = json_lines(out)
    assert events[0]["type"] == "thread.started"
    assert events[-1]["type"] == "turn.completed"
    completed = [e["item"] for e in events if e["type"] == "item.completed"]
    commands = [i for i in completed if i["type"] == "command_execution"]
    assert len(commands) == 1
    assert commands[0]["exit_code"] == 0
    assert "echo hello > /workspace/out.txt" in commands[0]["command"]
    messages = [i["text"] for i in completed if i["type"] == "agent_message"]
    assert messages == ["I will write the file.", "done"]
    assert not [i for i in completed if i["type"] == "error"], completed

    first, second = model_server.requests
    assert any(t.get("name") == "exec_command" for t in first["tools"])
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert [o["call_id"] for o in outputs] == ["call_corraltest"]
    assert "exited with code 0" in outputs[0]["output"]
    assert model_server.pending == []
    assert model_server.unscripted == 0
    assert {(e.method, e.path) for e in model_server.log} == {("POST", "/v1/responses")}

    rollouts = sorted((codex_home / "sessions").rglob("rollout-*.jsonl"))
    assert len(rollouts) == 1
    records = json_lines(rollouts[0].read_text())
    assert records[0]["type"] == "session_meta"
    assert {"session_meta", "response_item", "event_msg"} <= {r["type"] for r in records}
    keep_fixture(rollouts[0], "codex_rollout.jsonl")
