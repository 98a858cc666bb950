"""Codex as the session agent: its TUI in the container, against the scripted model.

The same flow as the Claude Code test in ``test_agents.py``: a prompt that makes the model
run a shell command, the chat on ``/ws/events`` exactly as the rollout file holds it, a
follow-up through ``send_message``, and the conversation resumed in a new container.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daemon.agents.codex import CodexRunner
from daemon.agents.codex_rollout import ROLLOUT_GLOB, CodexRolloutParser
from daemon.app import create_app
from daemon.core.session import SessionRecord
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import create_running, sweep_containers
from tests.model_server import (
    Hold,
    ModelServer,
    Text,
    ToolUse,
    is_codex_side_request,
    model_server_fixture,
    point_agents_at,
    sse_events,
)
from tests.test_agents import recreate_and_ask
from tests.test_events import Events, connect
from tests.test_model_server import post

__all__ = ["model_server_fixture"]  # the fixture is used by name

CHAT_TYPES = ("chat_message", "tool_call", "tool_result")
# In Codex's bundled catalog with plain function tools (``exec_command``) and an upgrade
# offer, so the test also covers the "Try new model" screen being kept away.
MODEL = "gpt-5.5"


def _record(**fields: Any) -> SessionRecord:
    base: dict[str, Any] = {
        "id": "0f0e0d0c-0000-4000-8000-000000000002",
        "name": "n",
        "backend": "docker",
        "agent": "codex",
        "status": "creating",
        "prompt": "say $HOME",
        "created_at": "2026-01-28T12:30:00Z",
        "updated_at": "2026-01-28T12:30:00Z",
        "repositories": [],
    }
    return SessionRecord.model_validate({**base, **fields})


def test_codex_home_trusts_the_workspace_and_runs_hooks(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"agents": {"openai_base_url": "http://127.0.0.1:9/v1", "openai_api_key": "sk-o"}}
    )
    runner = CodexRunner(settings, environ={})
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "hooks.json").write_text(json.dumps({"mine": 1}))
    runner.prepare_home(tmp_path, _record(model=MODEL), "/workspace/sub")
    config = tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())
    assert config["projects"]["/workspace/sub"] == {"trust_level": "trusted"}
    assert config["sandbox_mode"] == "danger-full-access"
    assert config["notice"]["model_migrations"][MODEL] == "gpt-6-sol"
    assert config["check_for_update_on_startup"] is False
    assert config["analytics"]["enabled"] is False
    hooks = json.loads((tmp_path / ".codex" / "hooks.json").read_text())
    assert hooks["mine"] == 1  # keys the daemon does not own are kept
    assert set(hooks["hooks"]) == {"UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"}
    assert (tmp_path / ".corral").is_dir()

    odd = 'a "model"\\\n\x7f'
    assert tomllib.loads(runner.config_toml(_record(model=odd), '/w/"x"'))["model"] == odd

    script = runner.launch(_record(), "/workspace").command[2]
    assert "exec codex --no-daemon --dangerously-bypass-hook-trust resume --last;" in script
    assert 'exec codex --no-daemon --dangerously-bypass-hook-trust "$CORRAL_PROMPT"' in script


def test_tui_rollout_parses_to_the_chat_once() -> None:
    # The TUI's rollout (three turns, the last after a resume) as the daemon saw it.
    fixture = Path(__file__).parent / "fixtures" / "codex_tui_rollout.jsonl"
    records = [json.loads(line) for line in fixture.read_text().splitlines() if line]
    parser = CodexRolloutParser()
    events = parser.feed(records)
    summary = [
        (e.type, e.payload.get("message", {}).get("role"),
         e.payload.get("message", {}).get("content") or e.payload.get("call", {}).get("name"))
        for e in events
    ]  # fmt: skip
    assert summary == [
        ("chat_message", "user", "write the file"),
        ("tool_call", None, "exec_command"),
        ("tool_result", None, None),
        ("chat_message", "assistant", "done"),
        ("chat_message", "user", "and now?"),
        ("chat_message", "assistant", "second-answer"),
        ("chat_message", "user", "still there?"),
        ("chat_message", "assistant", "after recreate"),
    ]
    assert events[2].payload["result"]["is_error"] is False
    messages = [e.payload["message"] for e in events if e.type == "chat_message"]
    replies = [message for message in messages if message["role"] == "assistant"]
    assert [reply["model"] for reply in replies] == [MODEL] * 3
    assert all(reply["tokens_input"] > 0 for reply in replies)
    assert CodexRolloutParser.from_state(parser.state()).feed(records) == []


async def test_codex_title_request_is_answered_apart(model_server: ModelServer) -> None:
    # The shape the 0.169.0 TUI sends at a thread's first prompt.
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 36}},
        "required": ["title"],
        "additionalProperties": False,
    }
    title = {
        "model": MODEL,
        "stream": True,
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Generate a concise, ..."}],
            }
        ],
        "text": {"format": {"type": "json_schema", "schema": schema, "name": "x"}},
        "client_metadata": {"x-codex-turn-metadata": json.dumps({"thread_source": "thread_title"})},
    }
    model_server.script(Text("the real answer"))
    status, raw = await post(f"{model_server.url}/v1/responses", title)
    assert status == 200
    deltas = [d["delta"] for n, d in sse_events(raw) if n == "response.output_text.delta"]
    assert json.loads("".join(deltas)) == {"title": model_server.side_text}
    assert len(model_server.side_requests) == 1
    assert model_server.requests == []
    assert model_server.pending == [Text("the real answer")]
    turn = {**title, "client_metadata": {"x-codex-turn-metadata": '{"thread_source":"user"}'}}
    assert not is_codex_side_request({**turn, "input": [{"type": "message", "content": []}]})


def _rollout_events(home: Path) -> list[tuple[str, dict[str, Any]]]:
    rollouts = sorted((home / ".codex").glob(ROLLOUT_GLOB))
    assert len(rollouts) == 1, rollouts
    records = [json.loads(line) for line in rollouts[0].read_text().splitlines() if line]
    return [(event.type, event.payload) for event in CodexRolloutParser().feed(records)]


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    """A chat event as received, without what the hub adds (seq, session, time)."""
    return {key: event[key] for key in ("message", "call", "result") if key in event}


async def _chat_events(events: Events, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The next ``count`` chat events in arrival order; other events stay for ``next``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received: list[dict[str, Any]] = []
    while len(received) < count:
        pending = [e for e in events.received if e["type"] in CHAT_TYPES]
        if pending:
            events.received.remove(pending[0])
            received.append(pending[0])
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"{len(received)} of {count} chat events; got {received}")
        await events.pull(remaining)
    return received


@pytest.mark.docker
@pytest.mark.timeout(180)
async def test_codex_runs_as_the_session_agent(
    aiohttp_client: Any,
    settings: Settings,
    git_repo: Path,
    agent_image: str,
    model_server: ModelServer,
) -> None:
    point_agents_at(settings, model_server)
    thinking = Hold()  # the first request waits, so the test sees the agent at work
    model_server.script(
        thinking,
        ToolUse("Bash", {"command": "echo hello > /workspace/out.txt"}, id="call_corral_write"),
        Text("done"),
        Text("second-answer"),
        Text("after recreate"),
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    try:
        session = await create_running(
            client, git_repo, image=agent_image, agent="codex", model=MODEL,
            prompt="write the file",
        )  # fmt: skip
        assert session["status"] == "running", session
        sid = session["id"]
        home = settings.data_dir / "sessions" / sid / "home"
        events = await connect(client)
        await events.send(type="subscribe", session_id=sid, since_seq=0)

        # The prompt given on the command line is submitted with no screen in its way, and
        # Codex's hooks tell the daemon it is working on it.
        first = (await model_server.wait_for_requests(1, timeout=90))[0]
        await events.next("session_status", agent_state="working", timeout=30)
        thinking.release()
        assert first["model"] == MODEL
        assert "write the file" in json.dumps(first["input"])
        assert any(tool.get("name") == "exec_command" for tool in first["tools"])
        second = (await model_server.wait_for_requests(2, timeout=60))[1]
        outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
        assert [o["call_id"] for o in outputs] == ["call_corral_write"]
        worktree = Path(session["worktree_path"])
        assert (worktree / "out.txt").read_text() == "hello\n"

        # The chat arrives on /ws/events exactly as the rollout holds it, in seq order.
        prompt, call, result, answer = await _chat_events(events, 4)
        assert prompt["message"]["role"] == "user"
        assert prompt["message"]["content"] == "write the file"
        assert call["call"]["id"] == "call_corral_write"
        assert call["call"]["name"] == "exec_command"
        assert call["call"]["input"] == {"cmd": "echo hello > /workspace/out.txt"}
        assert result["result"]["call_id"] == "call_corral_write"
        assert result["result"]["is_error"] is False
        assert answer["message"]["role"] == "assistant"
        assert answer["message"]["content"] == "done"
        assert answer["message"]["model"] == MODEL
        assert prompt["seq"] < call["seq"] < result["seq"] < answer["seq"]
        first_turn = [(e["type"], _payload(e)) for e in (prompt, call, result, answer)]
        assert first_turn == _rollout_events(home)
        await events.next("session_status", agent_state="waiting_input", timeout=30)

        # send_message is the user's next message; the model sees the whole conversation.
        await events.send(type="send_message", session_id=sid, content="and now?")
        third = (await model_server.wait_for_requests(3, timeout=60))[2]
        history = json.dumps(third["input"])
        assert "write the file" in history
        assert "and now?" in history
        question, reply = await _chat_events(events, 2)
        assert question["message"] == {**question["message"], "role": "user", "content": "and now?"}
        assert reply["message"]["content"] == "second-answer"

        # A new container resumes the same conversation from its rollout; the resumed TUI
        # redraws the conversation (words apart, hence a one-word answer).
        fourth = await recreate_and_ask(client, events, model_server, sid, ready=b"second-answer")
        history = json.dumps(fourth["input"])
        assert "write the file" in history
        assert "and now?" in history
        assert "still there?" in history
        again, last = await _chat_events(events, 2)
        assert again["message"]["content"] == "still there?"
        assert last["message"]["content"] == "after recreate"

        # Over both containers, every chat event of the rollout arrived once, in its order.
        chat = [prompt, call, result, answer, question, reply, again, last]
        assert [(e["type"], _payload(e)) for e in chat] == _rollout_events(home)
        assert [e["seq"] for e in chat] == sorted(e["seq"] for e in chat)

        # Nothing but the scripted turns reached the model, besides the thread title Codex
        # asks for at the first prompt (answered apart).
        assert len(model_server.side_requests) == 1
        assert model_server.pending == []
        assert model_server.unscripted == 0
        assert {(e.method, e.path) for e in model_server.log} == {("POST", "/v1/responses")}
    finally:
        await app[TASKS].wait(timeout=30)
        sweep_containers(settings.data_dir)
