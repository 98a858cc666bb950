"""End to end: the real agent CLIs in sealed containers never hold a real credential.

Each test runs a whole daemon (gateway, placeholders, meter, egress proxy) with the real
Claude Code or Codex as the session agent in the agent image, against the scripted model
server (tests/model_server.py) standing in for the providers. The daemon knows a distinctive
"real" credential; the tests read what the model server received (the real one, swapped in
by the gateway) and what the container holds (``docker inspect``, its processes'
environments, the agent home on the host), where the real one must never be.

Covered: Claude with an API key and with a subscription's OAuth token, Codex with an API key
and with a ChatGPT sign-in; a placeholder used from another session's container, from the
host and after its session is archived; a budget reached mid-stream and raised again; an
allowlist session's proxy refusing an unlisted host.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from daemon.core.access import unsigned_jwt
from daemon.settings import Settings
from tests.conftest import (
    Daemon,
    container_environment,
    container_state,
    create_running,
    docker_exec,
    wait_for,
)
from tests.model_server import Hold, ModelServer, Text, model_server_fixture
from tests.test_console import Screen, open_console
from tests.test_egress import NODE_CONNECT, in_container
from tests.test_events import Events, connect

__all__ = ["model_server_fixture"]  # the fixture is used by name

pytestmark = [pytest.mark.docker, pytest.mark.timeout(150)]

# The credentials the daemon holds: distinctive, so any copy of one is found.
REAL_ANTHROPIC_KEY = "sk-ant-api03-e2eREALanthropic-" + "k" * 36
REAL_OAUTH = "sk-ant-oat01-e2eREALoauth-" + "o" * 40
REAL_OPENAI_KEY = "sk-proj-e2eREALopenai-" + "p" * 40
REAL_ACCOUNT = "acct-e2eREALaccount-0123456789"
REAL_REFRESH = "rt_e2eREALrefresh-" + "r" * 40
CODEX_MODEL = "gpt-5.5"  # in Codex's catalog with plain function tools (test_agents_codex)
SEALED = "corral-sealed"
PROBE = "corral-probe"  # the model named by the tests' own requests
AGENT_VARIABLES = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY")
# What a session asks of each agent (Claude's plan mode would hold back its first turn).
CLAUDE: dict[str, Any] = {"no_plan_mode": True}
CODEX: dict[str, Any] = {"agent": "codex", "model": CODEX_MODEL}


@dataclass
class Rig:
    """One test's parts: a daemon whose gateway forwards to the model server, the repo and
    the agent image its sessions run in. ``settings`` is the test's to change before
    ``start``."""

    settings: Settings
    model_server: ModelServer
    git_repo: Path
    agent_image: str
    daemon: Daemon

    async def start(self, **body: Any) -> tuple[Any, dict[str, Any]]:
        """The daemon started, and one session running in it (see ``session``)."""
        client = await self.daemon(self.settings)
        return client, await self.session(client, **body)

    async def session(self, client: Any, **body: Any) -> dict[str, Any]:
        """A session running in the agent image, sealed (egress "none") unless ``body``
        says otherwise."""
        session = await create_running(
            client, self.git_repo, image=self.agent_image, **{"egress": "none", **body}
        )
        assert session["status"] == "running", session
        return session

    async def answered(self, reply: str, **body: Any) -> tuple[Any, dict[str, Any]]:
        """The model scripted to say ``reply``, a session started, and its agent said it."""
        self.model_server.script(Text(reply))
        client, session = await self.start(**body)
        await assistant_says(await subscribed(client, session["id"]), reply)
        return client, session

    def calls(self, path: str) -> list[Any]:
        """The model requests that reached ``path``: at least one."""
        calls = model_calls(self.model_server, path)
        assert calls, [(r.method, r.path) for r in self.model_server.log]
        return calls

    async def assert_nothing_real(self, session: dict[str, Any], *secrets: str) -> dict[str, str]:
        """No real secret anywhere in the session's container (see ``assert_nothing_real``)."""
        return await assert_nothing_real(
            self.settings, session["id"], session["container_id"], *secrets
        )


@pytest.fixture
def rig(
    daemon: Daemon,
    settings: Settings,
    model_server: ModelServer,
    git_repo: Path,
    agent_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Rig:
    """Agents run for real; the daemon's gateway forwards to the model server on 127.0.0.1
    (an address no container can reach) and no credential comes from the environment or
    the machine's own ``~/.codex``: each test configures the one it means."""
    for name in AGENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    settings.sessions.start_agent = True
    settings.docker.network_mode = "bridge"
    settings.agents.anthropic_base_url = model_server.url
    settings.agents.openai_base_url = f"{model_server.url}/v1"
    settings.agents.chatgpt_base_url = f"{model_server.url}/backend-api"
    settings.credentials.codex_auth_file = ""
    return Rig(settings, model_server, git_repo, agent_image, daemon)


# --- helpers -------------------------------------------------------------------------


def networks(container_id: str) -> set[str]:
    return set(container_state(container_id)["NetworkSettings"]["Networks"])


def _secrets_in_tree(root: Path, secrets: Iterable[str]) -> tuple[int, list[str]]:
    """(files read, "path: which secret" for each hit) under ``root``, links not followed,
    at most 20,000 files and 16 MiB of each."""
    wanted = [(secret[:16], secret.encode()) for secret in secrets]
    read, hits = 0, []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            read += 1
            assert read <= 20_000, f"more files than expected under {root}"
            with path.open("rb") as file:
                data = file.read(16 * 1024 * 1024)
            hits += [f"{path}: {label}…" for label, raw in wanted if raw in data]
    return read, hits


async def assert_nothing_real(
    settings: Settings, session_id: str, container_id: str, *secrets: str
) -> dict[str, str]:
    """No real secret in the container's environment, in any of its processes'
    environments, nor in any file of the agent home; returns the environment."""
    env = container_environment(container_id)
    for name, value in env.items():
        for secret in secrets:
            assert secret not in value, f"{name} holds a real credential"
    seen = await asyncio.to_thread(
        docker_exec, container_id, "cat /proc/[0-9]*/environ 2>/dev/null; true"
    )
    assert "PATH=" in seen.stdout, seen  # the processes' environments were read
    for secret in secrets:
        assert secret not in seen.stdout, "a process in the container holds a real credential"
    home = settings.data_dir / "sessions" / session_id / "home"
    read, hits = await asyncio.to_thread(_secrets_in_tree, home, secrets)
    assert read > 3, f"the agent home {home} holds almost nothing"
    assert hits == []
    return env


async def subscribed(client: Any, session_id: str) -> Events:
    events = await connect(client)
    await events.send(type="subscribe", session_id=session_id, since_seq=0)
    return events


async def assistant_says(events: Events, content: str, timeout: float = 90) -> dict[str, Any]:
    """The assistant's chat message ``content`` (earlier chat messages are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await events.next("chat_message", timeout=timeout)
            message = event["message"]
            if message["role"] == "assistant" and message["content"] == content:
                return event


def model_calls(server: ModelServer, path: str) -> list[Any]:
    """Every model request (conversation and side) that reached ``path``."""
    return [r for r in server.log if r.method == "POST" and r.path == path]


# Runs in a container (node is in the agent image): one HTTP request, status and body out.
NODE_REQUEST = """
const http = require('http');
const [url, key] = process.argv.slice(1);
const body = JSON.stringify({model: 'corral-probe', max_tokens: 1, stream: false,
  messages: [{role: 'user', content: 'hi'}]});
const req = http.request(url + '/v1/messages', {method: 'POST', headers: {
  'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01'}},
  res => { let out = ''; res.on('data', d => out += d);
    res.on('end', () => process.stdout.write(JSON.stringify({status: res.statusCode, body: out})));
  });
req.on('error', e => process.stdout.write(JSON.stringify({status: 0, body: String(e.code)})));
req.setTimeout(10000, () => req.destroy(new Error('timeout')));
req.end(body);
"""

MODELS_REQUEST = "GET /v1/models HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer y\r\n\r\n"


async def post_from(container_id: str, base_url: str, key: str) -> tuple[int, str]:
    answer = json.loads(await in_container(container_id, NODE_REQUEST, base_url, key))
    return int(answer["status"]), str(answer["body"])


async def post_from_host(base_url: str, key: str) -> tuple[int, str]:
    body = {"model": PROBE, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url}/v1/messages",
            json=body,
            headers={"x-api-key": key},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        return response.status, await response.text()


def probes(server: ModelServer) -> int:
    """How many of the tests' own requests (not the agents') reached the model."""
    return sum(1 for r in server.log if (r.body or {}).get("model") == PROBE)


def refusal(body: str) -> str:
    return str(json.loads(body)["error"]["message"])


# --- Claude Code ---------------------------------------------------------------------


async def test_claude_with_an_api_key_never_holds_it(rig: Rig) -> None:
    rig.settings.agents.anthropic_api_key = SecretStr(REAL_ANTHROPIC_KEY)
    client, session = await rig.answered("hello through the gateway", **CLAUDE, prompt="say hello")

    calls = rig.calls("/v1/messages")
    assert {call.headers.get("x-api-key") for call in calls} == {REAL_ANTHROPIC_KEY}
    cid = session["container_id"]
    env = await rig.assert_nothing_real(session, REAL_ANTHROPIC_KEY)
    assert env["ANTHROPIC_API_KEY"]  # a placeholder stands in
    assert env["ANTHROPIC_BASE_URL"].endswith("/anthropic")
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert "OPENAI_API_KEY" not in env
    # egress "none": the sealed network, no proxy; the model only through the gateway.
    assert networks(cid) == {SEALED}
    assert not {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY"} & set(env)
    answered = await client.get(f"/api/sessions/{session['id']}")
    assert REAL_ANTHROPIC_KEY not in await answered.text()


async def test_claude_with_a_subscription_token_never_holds_it(rig: Rig) -> None:
    assert not rig.settings.agents.anthropic_api_key.get_secret_value()
    rig.settings.credentials.claude_oauth_token = SecretStr(REAL_OAUTH)
    _, session = await rig.answered("signed in through the gateway", **CLAUDE, prompt="say hi")

    for call in rig.calls("/v1/messages"):
        assert call.headers["Authorization"] == f"Bearer {REAL_OAUTH}"
        assert "oauth-2025-04-20" in call.headers["anthropic-beta"]
        assert "x-api-key" not in call.headers
    env = await rig.assert_nothing_real(session, REAL_OAUTH)
    # The subscription's mode: the OAuth variable alone (an API key would turn it off).
    assert env["CLAUDE_CODE_OAUTH_TOKEN"].startswith("sk-ant-oat")
    assert "ANTHROPIC_API_KEY" not in env


# --- Codex ---------------------------------------------------------------------------


async def test_codex_with_an_api_key_never_holds_it(rig: Rig) -> None:
    rig.settings.agents.openai_api_key = SecretStr(REAL_OPENAI_KEY)
    _, session = await rig.answered("codex-through-the-gateway", **CODEX, prompt="say hi")

    calls = rig.calls("/v1/responses")
    assert {call.headers.get("Authorization") for call in calls} == {f"Bearer {REAL_OPENAI_KEY}"}
    env = await rig.assert_nothing_real(session, REAL_OPENAI_KEY)
    assert env["OPENAI_API_KEY"]
    assert "ANTHROPIC_API_KEY" not in env


def chatgpt_auth_file(path: Path) -> str:
    """A ChatGPT sign-in as ``codex login`` leaves it, fresh; returns its access token."""
    auth = {
        "chatgpt_plan_type": "pro",
        "chatgpt_account_id": REAL_ACCOUNT,
        "chatgpt_user_id": "user-e2e",
    }
    day_ahead = int(time.time()) + 24 * 3600
    access = unsigned_jwt(
        {"exp": day_ahead, "https://api.openai.com/auth": auth}, "e2eREALaccessSignature"
    )
    identity = unsigned_jwt(
        {"exp": day_ahead, "email": "me@example.com", "https://api.openai.com/auth": auth},
        "e2eREALidSignature",
    )
    path.write_text(
        json.dumps(
            {
                "auth_mode": "chatgpt",
                "OPENAI_API_KEY": None,
                "tokens": {
                    "id_token": identity,
                    "access_token": access,
                    "refresh_token": REAL_REFRESH,
                    "account_id": REAL_ACCOUNT,
                },
                "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )
    path.chmod(0o600)
    return access


async def test_codex_signed_in_with_chatgpt_holds_only_a_placeholder_sign_in(
    rig: Rig, tmp_path: Path
) -> None:
    auth_file = tmp_path / "auth.json"
    access = chatgpt_auth_file(auth_file)
    rig.settings.credentials.codex_auth_file = str(auth_file)
    _, session = await rig.answered("chatgpt-through-the-gateway", **CODEX, prompt="say hi")

    for call in rig.calls("/backend-api/codex/responses"):
        assert call.headers["Authorization"] == f"Bearer {access}"
        assert call.headers["chatgpt-account-id"] == REAL_ACCOUNT
    assert model_calls(rig.model_server, "/v1/responses") == []
    # The TUI's workspace discovery is answered by the gateway for the placeholder's
    # account (it exits otherwise); the user's real account list never reaches it.
    assert not [r for r in rig.model_server.log if r.path.endswith("/accounts/check")]
    reals = (access, REAL_REFRESH, REAL_ACCOUNT, "e2eREAL")
    cid = session["container_id"]
    env = await rig.assert_nothing_real(session, *reals)
    assert "OPENAI_API_KEY" not in env
    # The sign-in Codex reads in the container is the placeholder's, whole.
    seen = await asyncio.to_thread(docker_exec, cid, 'cat "$HOME/.codex/auth.json"')
    assert seen.returncode == 0, seen.stderr
    placeholder = json.loads(seen.stdout)
    assert placeholder["auth_mode"] == "chatgpt"
    assert placeholder["tokens"]["access_token"] != access
    for real in reals:
        assert real not in seen.stdout
    # Not due: the user's file was left as it was (no refresh, nothing written back).
    assert json.loads(auth_file.read_text())["tokens"]["access_token"] == access


# --- a placeholder taken elsewhere ---------------------------------------------------


async def test_a_stolen_placeholder_is_refused_and_dies_with_its_session(rig: Rig) -> None:
    rig.settings.agents.anthropic_api_key = SecretStr(REAL_ANTHROPIC_KEY)
    model_server = rig.model_server
    client, a = await rig.start(**CLAUDE, prompt="wait", name="session-a")
    b = await rig.session(client, **CLAUDE, prompt="wait", name="session-b")
    a_env, b_env = (
        container_environment(a["container_id"]),
        container_environment(b["container_id"]),
    )
    a_key, a_url = a_env["ANTHROPIC_API_KEY"], a_env["ANTHROPIC_BASE_URL"]
    assert a_key != b_env["ANTHROPIC_API_KEY"]
    assert a_url == b_env["ANTHROPIC_BASE_URL"]  # one gateway on the sealed network
    port = a_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]

    # The control: from its own container, A's placeholder reaches the model.
    status, body = await post_from(a["container_id"], a_url, a_key)
    assert status == 200, body
    assert probes(model_server) == 1
    # From B's container, A's placeholder is refused.
    status, body = await post_from(b["container_id"], a_url, a_key)
    assert status == 403, body
    assert refusal(body) == "corral gateway: this credential belongs to another session's container"
    # From the host, on the sealed network's address and on the loopback: refused too.
    for url in (a_url, f"http://127.0.0.1:{port}/anthropic"):
        status, body = await post_from_host(url, a_key)
        assert status == 403, (url, body)
        assert "another session's container" in refusal(body)
    assert probes(model_server) == 1  # none of them reached the model

    archived = await client.post(f"/api/sessions/{a['id']}/archive")
    assert archived.status in (200, 202), await archived.text()
    await wait_for(client, a["id"], lambda s: s["archived"] and s["status"] == "stopped")
    for url in (a_url, f"http://127.0.0.1:{port}/anthropic"):
        status, body = await post_from_host(url, a_key)
        assert status == 403, (url, body)
        assert refusal(body) == "corral gateway: this credential is not a live session's"
    status, body = await post_from(b["container_id"], a_url, a_key)
    assert status == 403, body
    assert refusal(body) == "corral gateway: this credential is not a live session's"
    # B's own placeholder still works from B: only A's died.
    status, body = await post_from(b["container_id"], a_url, b_env["ANTHROPIC_API_KEY"])
    assert status == 200, body
    assert probes(model_server) == 2


# --- budgets -------------------------------------------------------------------------


async def test_a_budget_reached_mid_stream_stops_the_agent_until_raised(rig: Rig) -> None:
    rig.settings.agents.anthropic_api_key = SecretStr(REAL_ANTHROPIC_KEY)
    model_server = rig.model_server
    thinking = Hold()
    first = "the first answer arrives whole although it overspends the budget"
    model_server.script(thinking, Text(first), Text("after the raise"))
    client, session = await rig.start(**CLAUDE, prompt="spend", max_tokens=50)
    sid = session["id"]
    events = await subscribed(client, sid)
    viewer: Screen = await open_console(client, sid, "cols=400&rows=50")
    try:
        # The first turn passed the budget check (nothing spent yet) and is at the model;
        # whatever the title request spends meanwhile, the answer still streams whole.
        await asyncio.wait_for(thinking.reached.wait(), 90)
        thinking.release()
        await assistant_says(events, first)
        stopped = await events.next("session_status", timeout=30, agent_state="error")
        assert stopped["agent_state_reason"] == "budget_exhausted"
        usage = await (await client.get(f"/api/sessions/{sid}/usage")).json()
        assert "budget_exhausted" in json.dumps(usage)

        # The next message is refused at the gateway: the model hears nothing, and the
        # refusal's words reach the user in the agent's terminal.
        await viewer.settle(quiet=2, timeout=30)
        asked = len(model_server.requests)
        await events.send(type="send_message", session_id=sid, content="go on")
        await viewer.until(b"session budget of 50 tokens reached", timeout=60)
        assert len(model_server.requests) == asked

        raised = await client.patch(f"/api/sessions/{sid}/budget", json={"max_tokens": 10**9})
        assert raised.status == 200, await raised.text()
        cleared = await events.next("session_status", timeout=30)
        while cleared["agent_state"] == "error":
            cleared = await events.next("session_status", timeout=30)
        assert cleared["agent_state_reason"] is None
        await viewer.settle(quiet=2, timeout=30)
        await events.send(type="send_message", session_id=sid, content="and now?")
        again = (await model_server.wait_for_requests(asked + 1, timeout=60))[asked]
        assert "and now?" in json.dumps(again["messages"])
        await assistant_says(events, "after the raise")
    finally:
        await viewer.ws.close()


# --- egress --------------------------------------------------------------------------


async def test_an_allowlist_session_reaches_only_listed_hosts_through_the_proxy(
    rig: Rig,
) -> None:
    rig.settings.agents.anthropic_api_key = SecretStr(REAL_ANTHROPIC_KEY)
    model_server = rig.model_server
    # A listed host the proxy resolves on the host: the model server's loopback port.
    rig.settings.egress.allowed_hosts = [f"localhost:{model_server.port}"]
    _, session = await rig.start(**CLAUDE, prompt="hi", egress="allowlist")
    cid = session["container_id"]
    env = container_environment(cid)
    assert networks(cid) == {SEALED}
    proxy = env["HTTPS_PROXY"]
    assert env["https_proxy"] == env["HTTP_PROXY"] == proxy
    gateway_host = env["ANTHROPIC_BASE_URL"].split("://", 1)[1].split(":", 1)[0]
    assert proxy.startswith(f"http://{gateway_host}:")  # the host's address on the network
    assert gateway_host in env["NO_PROXY"].split(",")  # the gateway is not proxied

    # CONNECT through the proxy the agent is told of, then (when let through) one plain
    # HTTP request in the tunnel: everything the proxy and the far end sent.
    through = urlsplit(proxy)
    tunnel = (NODE_CONNECT, str(through.hostname), str(through.port))
    out = await in_container(cid, *tunnel, "example.com:443", MODELS_REQUEST)
    assert out.startswith("HTTP/1.1 403"), out
    assert "egress.allowed_hosts" in out, out
    listed = await in_container(cid, *tunnel, f"localhost:{model_server.port}", MODELS_REQUEST)
    assert listed.startswith("HTTP/1.1 200"), listed
    assert "scripted-model" in listed, listed  # the far end answered through the tunnel
