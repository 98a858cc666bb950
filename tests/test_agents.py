"""The real agent CLIs as session agents: started, seeded, resumed, against the scripted model."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.agents.claude import ClaudeRunner, transcript_path
from daemon.agents.codex import CodexRunner
from daemon.agents.runner import ATTACHMENTS_DIR, copy_attachments
from daemon.app import create_app
from daemon.core.access import AgentAccess
from daemon.core.session import SessionRecord
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import create_running, sweep_containers
from tests.model_server import (
    ModelServer,
    Text,
    ToolUse,
    model_server_fixture,
    point_agents_at,
)
from tests.test_console import open_console
from tests.test_events import Events, connect


async def _next_assistant(events: Events, content: str) -> dict[str, Any]:
    while True:
        message = await events.next("chat_message", timeout=60)
        if message["message"]["role"] == "assistant" and message["message"]["content"] == content:
            return message


async def _events_until_assistant(
    events: Events, session_id: str, content: str
) -> list[dict[str, Any]]:
    """Every event of the session, in arrival order, up to the assistant's ``content``."""
    seen: list[dict[str, Any]] = []
    while True:
        message = await events.ws.receive(timeout=60)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        event = json.loads(message.data)
        if event.get("session_id") != session_id or "seq" not in event:
            continue
        seen.append(event)
        chat = event.get("message") or {}
        if event["type"] == "chat_message" and chat.get("content") == content:
            return seen


async def recreate_and_ask(
    client: Any, events: Events, model_server: ModelServer, session_id: str, *, ready: bytes
) -> dict[str, Any]:
    """Recreate the session, wait for its resumed TUI to show ``ready`` and go quiet, send
    "still there?", and return the model request it makes (the fourth of the test)."""
    recreated = await client.post(f"/api/sessions/{session_id}/recreate")
    assert recreated.status == 200, await recreated.text()
    viewer = await open_console(client, session_id, "cols=120&rows=40")
    try:
        await viewer.until(ready, timeout=60)
        await viewer.settle()
        await events.send(type="send_message", session_id=session_id, content="still there?")
        return (await model_server.wait_for_requests(4, timeout=90))[3]
    finally:
        await viewer.ws.close()


__all__ = ["model_server_fixture"]  # the fixture is used by name

API_ACCESS = AgentAccess(
    kind="api_key",
    placeholder="sk-ant-api03-corral-placeholder-0123456789",
    base_url="http://172.17.0.1:7/anthropic",
)
OAUTH_ACCESS = replace(API_ACCESS, kind="oauth_token", placeholder="sk-ant-oat01-corral-x")
PROXIED_ACCESS = replace(
    API_ACCESS, proxy_url="http://172.18.0.1:7", no_proxy="172.18.0.1,localhost,127.0.0.1"
)


def record(**fields: Any) -> SessionRecord:
    base: dict[str, Any] = {
        "id": "0f0e0d0c-0000-4000-8000-000000000001",
        "name": "n",
        "backend": "docker",
        "agent": "claude",
        "status": "creating",
        "prompt": 'Fix it; don\'t break "quotes" or $VARS',
        "created_at": "2026-01-28T12:30:00Z",
        "updated_at": "2026-01-28T12:30:00Z",
        "repositories": [],
    }
    return SessionRecord.model_validate({**base, **fields})


def test_attached_files_are_copied_into_the_home_and_named_in_the_first_prompt(
    tmp_path: Path,
) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "screen shot.png").write_bytes(b"\x89PNG one")
    (tmp_path / "screen shot.png").write_bytes(b"\x89PNG two")
    paths = [str(shots / "screen shot.png"), str(tmp_path / "screen shot.png")]
    home = tmp_path / "home"
    copy_attachments(home, paths)
    copy_attachments(home, paths)  # again, on a later start: kept, not duplicated
    names = sorted(p.name for p in (home / ATTACHMENTS_DIR).iterdir())
    assert names == ["1-screen_shot.png", "2-screen_shot.png"]
    assert (home / ATTACHMENTS_DIR / "2-screen_shot.png").read_bytes() == b"\x89PNG two"
    settings = Settings.model_validate({})
    for runner in (ClaudeRunner(settings, environ={}), CodexRunner(settings, environ={})):
        prompt = runner.launch(record(image_paths=paths), "/workspace").env["CORRAL_PROMPT"]
        assert prompt.startswith(record().prompt)
        assert f"/home/agent/{ATTACHMENTS_DIR}/1-screen_shot.png" in prompt
        assert f"/home/agent/{ATTACHMENTS_DIR}/2-screen_shot.png" in prompt
        plain = runner.launch(record(), "/workspace").env["CORRAL_PROMPT"]
        assert plain == record().prompt


def test_claude_launch_first_start_then_resume(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"agents": {"anthropic_api_key": "sk-ant-test-0123456789abcdefghij"}}
    )
    runner = ClaudeRunner(settings, environ={})
    launch = runner.launch(record(model="claude-x"), "/workspace")
    assert launch.command[:2] == ("/bin/sh", "-c")
    script = launch.command[2]
    assert "--session-id 0f0e0d0c-0000-4000-8000-000000000001" in script
    assert "--resume 0f0e0d0c-0000-4000-8000-000000000001" in script
    assert "--permission-mode plan" in script
    assert "--model claude-x" in script
    assert '"$CORRAL_PROMPT"' in script
    assert "$VARS" not in script  # the prompt travels in the environment, never quoted
    assert launch.env["CORRAL_PROMPT"] == record().prompt
    # Without the gateway's access the agent gets no credential at all, never the real key.
    assert "sk-ant-test-0123456789abcdefghij" not in json.dumps(launch.env)
    assert "ANTHROPIC_API_KEY" not in launch.env
    assert launch.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    keyed = runner.launch(record(), "/workspace", access=API_ACCESS)
    assert keyed.env["ANTHROPIC_API_KEY"] == API_ACCESS.placeholder
    assert keyed.env["ANTHROPIC_BASE_URL"] == API_ACCESS.base_url
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in keyed.env
    signed_in = runner.launch(record(), "/workspace", access=OAUTH_ACCESS)
    # A subscription token alone: an API key beside it would turn OAuth off.
    assert signed_in.env["CLAUDE_CODE_OAUTH_TOKEN"] == OAUTH_ACCESS.placeholder
    assert "ANTHROPIC_API_KEY" not in signed_in.env
    proxied = runner.launch(record(), "/workspace", access=PROXIED_ACCESS)
    assert proxied.env["HTTPS_PROXY"] == proxied.env["http_proxy"] == "http://172.18.0.1:7"
    assert proxied.env["NO_PROXY"] == "172.18.0.1,localhost,127.0.0.1"
    assert "HTTPS_PROXY" not in keyed.env
    unplanned = runner.launch(record(no_plan_mode=True), "/workspace")
    assert "--permission-mode" not in unplanned.command[2]

    home = tmp_path / "home"
    (home).mkdir()
    (home / ".claude.json").write_text(json.dumps({"numStartups": 7}))
    runner.prepare_home(home, record(), "/workspace/sub", API_ACCESS)
    seeded = json.loads((home / ".claude.json").read_text())
    assert seeded["numStartups"] == 7  # the agent's own keys are kept
    assert seeded["hasCompletedOnboarding"] is True
    # The TUI is told the placeholder is approved; the real key is nowhere in the home.
    assert seeded["customApiKeyResponses"]["approved"] == [API_ACCESS.placeholder[-20:]]
    assert "0123456789abcdefghij" not in (home / ".claude.json").read_text()
    assert seeded["projects"]["/workspace/sub"]["hasTrustDialogAccepted"] is True
    hooks = json.loads((home / ".claude" / "settings.json").read_text())["hooks"]
    assert set(hooks) == {"UserPromptSubmit", "PreToolUse", "PostToolUse", "Notification", "Stop"}
    assert transcript_path(home, "abc", "/workspace/sub").name == "abc.jsonl"
    assert transcript_path(home, "abc", "/workspace/sub").parent.name == "-workspace-sub"


def test_codex_config_points_at_the_gateway(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"agents": {"openai_base_url": "http://127.0.0.1:9/v1", "openai_api_key": "sk-o-real"}}
    )
    runner = CodexRunner(settings, environ={})
    access = replace(API_ACCESS, base_url="http://172.17.0.1:7/openai")
    runner.prepare_home(tmp_path, record(agent="codex", model='gpt "5"'), "/workspace", access)
    config = (tmp_path / ".codex" / "config.toml").read_text()
    import tomllib

    parsed = tomllib.loads(config)
    assert parsed["model"] == 'gpt "5"'
    assert parsed["model_provider"] == "corral"
    assert parsed["model_providers"]["corral"]["base_url"] == "http://172.17.0.1:7/openai"
    assert parsed["model_providers"]["corral"]["env_key"] == "OPENAI_API_KEY"
    assert parsed["features"]["plugins"] is False
    assert not (tmp_path / ".codex" / "auth.json").exists()
    launch = runner.launch(record(agent="codex"), "/workspace", access=access)
    assert "resume --last" in launch.command[2]
    assert launch.env["OPENAI_API_KEY"] == access.placeholder
    assert "sk-o-real" not in json.dumps(launch.env) + config


def test_codex_chatgpt_sign_in_is_a_placeholder_auth_file(tmp_path: Path) -> None:
    runner = CodexRunner(Settings.model_validate({}), environ={})
    access = AgentAccess(
        kind="chatgpt",
        placeholder="eyJ.eyJ.placeholder",
        base_url="http://172.17.0.1:7/chatgpt/codex",
        chatgpt_url="http://172.17.0.1:7/chatgpt/",
        account_id="acct-real",
        claims={"plan": "pro", "email": "me@example.com"},
    )
    (tmp_path / ".codex").mkdir()
    runner.prepare_home(tmp_path, record(agent="codex"), "/workspace", access)
    import tomllib

    parsed = tomllib.loads((tmp_path / ".codex" / "config.toml").read_text())
    assert parsed["chatgpt_base_url"] == "http://172.17.0.1:7/chatgpt/"
    provider = parsed["model_providers"]["corral"]
    assert provider["requires_openai_auth"] is True
    assert "env_key" not in provider
    auth = json.loads((tmp_path / ".codex" / "auth.json").read_text())
    assert auth["tokens"]["access_token"] == "eyJ.eyJ.placeholder"
    assert "acct-real" not in json.dumps(auth)  # the gateway sends the real account
    claims = json.loads(base64.urlsafe_b64decode(auth["tokens"]["id_token"].split(".")[1] + "=="))
    assert claims["https://api.openai.com/auth"]["chatgpt_plan_type"] == "pro"
    launch = runner.launch(record(agent="codex"), "/workspace", access=access)
    assert "OPENAI_API_KEY" not in launch.env
    # A later launch with an API key leaves no sign-in file behind.
    runner.prepare_home(tmp_path, record(agent="codex"), "/workspace", API_ACCESS)
    assert not (tmp_path / ".codex" / "auth.json").exists()


@pytest.mark.docker
@pytest.mark.timeout(180)
async def test_claude_code_runs_as_the_session_agent(
    aiohttp_client: Any,
    settings: Settings,
    git_repo: Path,
    agent_image: str,
    model_server: ModelServer,
) -> None:
    point_agents_at(settings, model_server)
    model_server.script(
        ToolUse("Bash", {"command": "echo hello > /workspace/out.txt", "description": "write"}),
        Text("done"),
        Text("second answer"),
        Text("after recreate"),
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    try:
        picture = git_repo.parent / "picture.png"
        picture.write_bytes(b"\x89PNG attached")
        session = await create_running(
            client,
            git_repo,
            image=agent_image,
            no_plan_mode=True,
            prompt="write the file",
            image_paths=[str(picture)],
        )
        assert session["status"] == "running", session
        sid = session["id"]
        events = await connect(client)
        await events.send(type="subscribe", session_id=sid, since_seq=0)
        viewer = await open_console(client, sid, "cols=120&rows=40")
        first = (await model_server.wait_for_requests(1, timeout=90))[0]
        assert "write the file" in json.dumps(first["messages"])
        # The attached file travels into the agent home, and the prompt says where.
        assert f"/home/agent/{ATTACHMENTS_DIR}/1-picture.png" in json.dumps(first["messages"])
        # Without skipped permissions the TUI asks before running Bash; Enter approves.
        await viewer.until(b"proceed", timeout=60)
        waiting = await events.next("session_status", agent_state="waiting_approval")
        assert waiting["status"] == "running"
        await viewer.ws.send_bytes(b"\r")
        second = (await model_server.wait_for_requests(2, timeout=60))[1]
        assert "tool_result" in json.dumps(second["messages"])
        worktree = Path(session["worktree_path"])
        assert (worktree / "out.txt").read_text() == "hello\n"
        home = settings.data_dir / "sessions" / session["id"] / "home"
        transcript = transcript_path(home, session["id"], "/workspace")
        for _ in range(100):
            if transcript.exists() and b'"done"' in transcript.read_bytes():
                break
            await asyncio.sleep(0.1)
        assert b'"done"' in transcript.read_bytes()
        hooks = (home / ".corral" / "hooks.jsonl").read_text()
        assert "PreToolUse" in hooks

        # The chat arrives on /ws/events exactly as the transcript holds it.
        prompt = await events.next("chat_message", timeout=30)
        assert prompt["message"]["role"] == "user"
        assert prompt["message"]["content"].startswith("write the file\n\nAttached files")
        call = await events.next("tool_call", timeout=30)
        assert call["call"]["name"] == "Bash"
        assert call["call"]["input"]["command"] == "echo hello > /workspace/out.txt"
        result = await events.next("tool_result", timeout=30)
        assert result["result"]["call_id"] == call["call"]["id"]
        assert result["result"]["is_error"] is False
        answer = await events.next("chat_message", timeout=30)
        assert answer["message"] == {**answer["message"], "role": "assistant", "content": "done"}
        assert prompt["seq"] < call["seq"] < result["seq"] < answer["seq"]
        await events.next("session_status", agent_state="waiting_input", timeout=30)

        # The client goes away mid-conversation; the next turn runs while nobody listens
        # (the message arrives over REST), and a new socket resumes from the last seq seen
        # with nothing missed and nothing twice.
        last_seen = max(e["seq"] for e in [*events.received, answer] if e.get("seq"))
        await events.ws.close()
        sent = await client.post(f"/api/sessions/{sid}/message", json={"content": "and now?"})
        assert sent.status == 202, await sent.text()
        third = (await model_server.wait_for_requests(3, timeout=60))[2]
        assert "write the file" in json.dumps(third["messages"])
        assert "and now?" in json.dumps(third["messages"])
        events = await connect(client)
        await events.send(type="subscribe", session_id=sid, since_seq=last_seen)
        resumed = await _events_until_assistant(events, sid, "second answer")
        seqs = [e["seq"] for e in resumed]
        assert seqs == list(range(last_seen + 1, last_seen + 1 + len(seqs))), seqs
        chat = [e["message"] for e in resumed if e["type"] == "chat_message"]
        assert [(m["role"], m["content"]) for m in chat] == [
            ("user", "and now?"),
            ("assistant", "second answer"),
        ]

        # A new container resumes the same conversation from its transcript; the resumed
        # TUI shows its input hint, then is ready once it stops drawing.
        fourth = await recreate_and_ask(client, events, model_server, sid, ready=b"shortcuts")
        history = json.dumps(fourth["messages"])
        assert "write the file" in history
        assert "and now?" in history
        assert "still there?" in history
        await viewer.ws.close()
    finally:
        await app[TASKS].wait(timeout=30)
        sweep_containers(settings.data_dir)
