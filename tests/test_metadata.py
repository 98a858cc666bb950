"""regenerate-metadata: a model names, describes and tags a session from its chat history.

The model is the scripted server of ``tests/model_server.py``, reached over real HTTP.
Its default notion of a "side request" is any request without ``tools`` (Claude Code's
helper calls), which would be answered outside the script; the metadata request has no
tools, so these tests run a server that takes every request as a scripted turn.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.core.models import MetadataUpdate
from daemon.core.session import SessionRecord
from daemon.keys import HUB, SETTINGS
from daemon.settings import Settings
from daemon.supervise import metadata
from tests.conftest import create_running
from tests.model_server import FAKE_API_KEY, Error, Hold, ModelServer, Text

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def model() -> AsyncIterator[ModelServer]:
    async with ModelServer(side_request=lambda body: False) as server:
        yield server


def use_model(client: Any, server: ModelServer, **options: Any) -> None:
    """Turn AI metadata on in the running daemon, pointed at the scripted server."""
    section = client.app[SETTINGS].metadata
    section.ai_metadata = True
    section.base_url = server.url
    section.api_key = FAKE_API_KEY
    for key, value in options.items():
        setattr(section, key, value)


async def chat(client: Any, session_id: str) -> None:
    hub = client.app[HUB]
    user = {
        "id": "u1",
        "role": "user",
        "content": "The login page redirects to a 404 after sign-in",
    }
    call = {"id": "c1", "name": "Bash", "input": {"command": "grep -rn next= app/"}}
    result = {"call_id": "c1", "output": "app/auth.py:41: next=", "is_error": False}
    reply = {"id": "a1", "role": "assistant", "content": "The redirect drops the `next` parameter."}
    await hub.publish("chat_message", session_id, message=user)
    await hub.publish("tool_call", session_id, call=call)
    await hub.publish("tool_result", session_id, result=result)
    await hub.publish("chat_message", session_id, message=reply)


def answer(**fields: Any) -> Text:
    return Text(
        json.dumps(
            {"name": "fix-login-redirect", "description": "Fix it.", "tags": ["auth"], **fields}
        )
    )


async def session_of(client: Any, session_id: str) -> dict[str, Any]:
    body = await (await client.get(f"/api/sessions/{session_id}")).json()
    return dict(body["session"])


def labels(session: dict[str, Any]) -> tuple[str, str, list[str]]:
    return session["name"], session["description"], session["tags"]


# --- through the API -------------------------------------------------------------------


async def test_off_is_a_conflict_and_unknown_is_not_found(
    client: Any, git_repo: Path, model: ModelServer
) -> None:
    session = await create_running(client, git_repo, backend="local")
    response = await client.post(f"/api/sessions/{session['id']}/regenerate-metadata")
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "CONFLICT"
    assert model.log == []  # nothing was sent anywhere
    use_model(client, model)
    missing = await client.post(f"/api/sessions/{UNKNOWN}/regenerate-metadata")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "SESSION_NOT_FOUND"
    assert model.log == []


async def test_the_model_names_describes_and_tags_from_the_chat(
    client: Any, git_repo: Path, model: ModelServer
) -> None:
    session = await create_running(client, git_repo, backend="local", prompt="fix the login bug")
    sid = session["id"]
    branch = session["branch_name"]
    await chat(client, sid)
    use_model(client, model, model="claude-test-small")
    model.script(
        Text(
            "```json\n"
            + json.dumps(
                {
                    "name": "Fix Login Redirect",
                    "description": "  Repairs the post-sign-in redirect that lost `next`.  ",
                    "tags": ["Auth", "python", "auth", "Bug Fix"],
                }
            )
            + "\n```"
        )
    )
    response = await client.post(f"/api/sessions/{sid}/regenerate-metadata")
    assert response.status == 200, await response.text()
    updated = (await response.json())["session"]
    assert labels(updated) == (
        "fix-login-redirect",
        "Repairs the post-sign-in redirect that lost `next`.",
        ["auth", "python", "bug-fix"],
    )
    assert updated["branch_name"] == branch  # a rename is a display name only
    assert labels(await session_of(client, sid)) == labels(updated)

    (sent,) = model.log
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == FAKE_API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    body = sent.body
    assert body is not None
    assert body["model"] == "claude-test-small"
    assert body["stream"] is False
    assert "JSON" in body["system"]
    text = body["messages"][0]["content"]
    assert "fix the login bug" in text  # the session's task
    assert "User: The login page redirects to a 404 after sign-in" in text
    assert 'Tool call Bash: {"command": "grep -rn next= app/"}' in text
    assert "Tool result: app/auth.py:41: next=" in text
    assert "Assistant: The redirect drops the `next` parameter" in text
    assert text.index("User: The login") < text.index("Assistant: The redirect")


async def test_a_name_another_session_has_gets_a_suffix(
    client: Any, git_repo: Path, model: ModelServer
) -> None:
    first = await create_running(client, git_repo, backend="local", name="fix-login-redirect")
    second = await create_running(client, git_repo, backend="local")
    use_model(client, model)
    model.script(answer(), answer())
    renamed = await client.post(f"/api/sessions/{second['id']}/regenerate-metadata")
    assert (await renamed.json())["session"]["name"] == "fix-login-redirect-2"
    # The session that already has the name keeps it rather than clashing with itself.
    same = await client.post(f"/api/sessions/{first['id']}/regenerate-metadata")
    assert (await same.json())["session"]["name"] == "fix-login-redirect"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("prose", "invalid_answer"),
        ("wrong_types", "invalid_answer"),
        ("no_name", "invalid_answer"),
        ("server_error", "http_status"),
        ("unauthorized", "http_status"),
        ("hangs", "timeout"),
        ("down", "unreachable"),
    ],
)
async def test_a_failing_model_is_a_clear_error_and_changes_nothing(
    client: Any, git_repo: Path, model: ModelServer, case: str, reason: str
) -> None:
    session = await create_running(client, git_repo, backend="local")
    sid = session["id"]
    await chat(client, sid)
    await client.patch(
        f"/api/sessions/{sid}/metadata", json={"description": "mine", "tags": ["keep"]}
    )
    before = await session_of(client, sid)
    use_model(client, model, timeout_seconds=0.5)
    hold = Hold()
    steps = {
        "prose": Text("This session fixes the login redirect."),
        "wrong_types": Text('{"name": "x", "description": 3, "tags": "auth"}'),
        "no_name": answer(name="!!!"),
        "server_error": Error(500, "overloaded"),
        "unauthorized": Error(401, "invalid x-api-key"),
        "hangs": hold,
    }
    if case == "down":
        client.app[SETTINGS].metadata.base_url = f"http://127.0.0.1:{_closed_port()}"
    else:
        model.script(steps[case])
    started = asyncio.get_running_loop().time()
    response = await client.post(f"/api/sessions/{sid}/regenerate-metadata")
    elapsed = asyncio.get_running_loop().time() - started
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["code"] == "BACKEND_ERROR"
    assert error["message"].startswith("the metadata model")
    assert error["details"]["reason"] == reason
    assert FAKE_API_KEY not in json.dumps(error)
    if case == "server_error":
        assert error["details"]["status"] == 500
        assert "overloaded" in error["message"]
    if case == "hangs":
        assert hold.reached.is_set()
        # The request gives up at the 0.5 s asked for; ignoring it would wait for the model
        # forever or for the 30 s default. 20 s is a bound a loaded machine never reaches.
        assert elapsed < 20
    after = await session_of(client, sid)
    assert labels(after) == labels(before)
    assert after["updated_at"] == before["updated_at"]


async def test_config_redacts_the_metadata_key(client: Any) -> None:
    client.app[SETTINGS].metadata.api_key = "sk-ant-metadata-secret"
    body = await (await client.get("/api/config")).json()
    assert body["metadata"]["api_key"] == "**********"
    assert "sk-ant-metadata-secret" not in json.dumps(body)


# --- the pieces ------------------------------------------------------------------------


def _message(index: int, content: str) -> dict[str, Any]:
    return {
        "type": "chat_message",
        "message": {"id": f"m{index}", "role": "assistant", "content": content},
    }


def test_the_transcript_keeps_the_newest_part_within_the_cap() -> None:
    events = [_message(i, f"message {i:04d} " + "x" * 80) for i in range(1000)]
    text = metadata.transcript(events)
    assert len(text) <= metadata.MAX_TRANSCRIPT_CHARS
    lines = text.splitlines()
    assert lines[0] == metadata.OMITTED
    assert lines[1].startswith("Assistant: message ")  # cut at a line start, never inside one
    assert lines[-1].startswith("Assistant: message 0999 ")
    assert "message 0000" not in text
    short = metadata.transcript(events[:3])
    assert metadata.OMITTED not in short
    assert short.count("\n") == 2


def test_one_long_event_cannot_fill_the_transcript() -> None:
    events = [
        _message(0, "first question"),
        {
            "type": "tool_result",
            "result": {"call_id": "c", "output": "y" * 100_000, "is_error": True},
        },
        _message(1, "z" * 50_000),
        {"type": "session_status", "status": "running"},  # not chat: left out
    ]
    text = metadata.transcript(events)
    assert text.startswith("Assistant: first question\nTool error: yyy")
    assert len(text) < metadata.MAX_MESSAGE_CHARS + 2 * metadata.MAX_TOOL_CHARS + 200


def test_the_request_is_bounded_whatever_the_history() -> None:
    record = SessionRecord.model_validate(
        {
            "id": UNKNOWN,
            "name": "n",
            "backend": "local",
            "agent": "claude",
            "status": "running",
            "prompt": "p" * 50_000,
            "repositories": [],
            "created_at": "2026-01-28T12:30:00Z",
            "updated_at": "2026-01-28T12:30:00Z",
        }
    )
    events = [_message(i, "w" * 3_000) for i in range(500)]
    body = metadata.request_body(Settings(), record, events)
    size = len(body["messages"][0]["content"])
    assert size < metadata.MAX_TRANSCRIPT_CHARS + metadata.MAX_PROMPT_CHARS + 500
    assert body["model"] == Settings().metadata.model


def test_endpoint_falls_back_to_the_agents_section_then_the_environment() -> None:
    settings = Settings()
    env = {"ANTHROPIC_API_KEY": "sk-env"}
    assert metadata.endpoint(settings, {}) == ("https://api.anthropic.com/v1/messages", "")
    assert metadata.endpoint(settings, env)[1] == "sk-env"
    settings.agents.anthropic_base_url = "http://proxy.test/"
    settings.agents.anthropic_api_key = "sk-agents"  # type: ignore[assignment]
    assert metadata.endpoint(settings, env) == ("http://proxy.test/v1/messages", "sk-agents")
    settings.metadata.base_url = "http://meta.test"
    settings.metadata.api_key = "sk-meta"  # type: ignore[assignment]
    assert metadata.endpoint(settings, env) == ("http://meta.test/v1/messages", "sk-meta")


def test_generated_values_fit_what_metadata_accepts() -> None:
    record = SessionRecord.model_validate(
        {
            "id": UNKNOWN,
            "name": "old",
            "backend": "local",
            "agent": "claude",
            "status": "running",
            "prompt": "p",
            "repositories": [],
            "created_at": "2026-01-28T12:30:00Z",
            "updated_at": "2026-01-28T12:30:00Z",
        }
    )
    generated = metadata.parse_metadata(
        'Sure! {"name": "' + "Word " * 40 + '", "description": "d", '
        '"tags": ["' + '", "'.join(f"Tag {i}" for i in range(12)) + '", "' + "t" * 60 + '"]}'
    )
    update = metadata.to_update(generated, record, ["old"])
    MetadataUpdate.model_validate(update.model_dump())  # what PATCH /metadata would take
    assert update.name is not None
    assert len(update.name) <= 63
    assert not update.name.endswith("-")
    assert update.tags == [f"tag-{i}" for i in range(metadata.MAX_TAGS)]
    long_taken = "a" * 63
    assert metadata.session_name("a" * 80, record, [long_taken]) == "a" * 61 + "-2"
