"""Credentials: sources in order, kinds, ChatGPT refresh, checks, the API, corral login.

Real parts: the scripted model server answers the checks (``GET /v1/models``, 401 for
``BAD_KEY``), a scripted OAuth token server and a ChatGPT stand-in run on 127.0.0.1, a
command source is a real program, files are real files, and ``corral login`` runs as a
subprocess against a daemon serving on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from daemon.app import create_app
from daemon.core.readiness import system_status
from daemon.credentials import chatgpt
from daemon.credentials.models import mask
from daemon.credentials.service import Credentials
from daemon.settings import Settings
from tests.model_server import BAD_KEY, ModelServer

ROOT = Path(__file__).resolve().parent.parent

API_KEY = "sk-ant-api03-good-0123456789abcdefghijklmnop"
OAUTH = "sk-ant-oat01-subscription-0123456789abcdefghij"
OPENAI_KEY = "sk-proj-openai-0123456789abcdefghijklmnop"


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.c2lnbmF0dXJl"


def signin(
    *, expires_in: float = 3600, account: str | None = "acct-123", refresh: str = "rt-old-0001"
) -> dict[str, Any]:
    """A Codex auth.json with a ChatGPT sign-in, as codex login writes it."""
    id_token = jwt(
        {
            "email": "user@example.com",
            "https://api.openai.com/auth": {
                "chatgpt_plan_type": "pro",
                "chatgpt_account_id": "acct-from-id-token",
            },
        }
    )
    tokens: dict[str, Any] = {
        "id_token": id_token,
        "access_token": jwt({"exp": int(time.time() + expires_in), "n": os.urandom(4).hex()}),
        "refresh_token": refresh,
    }
    if account is not None:
        tokens["account_id"] = account
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": tokens,
        "last_refresh": "2099-01-01T00:00:00Z",
        "other_key": {"kept": True},
    }


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "credentials": {"codex_auth_file": str(tmp_path / "auth.json")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings.model_validate(data)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


# --- kinds, masking, precedence --------------------------------------------------------


def test_mask_shows_seven_and_four_or_only_the_last_two() -> None:
    assert mask("sk-ant-api03-abcdefghijklmnop-WXYZ") == "sk-ant-…WXYZ"
    assert mask("short-secret-9x") == "…9x"
    assert mask("0123456789012345678") == "…78"  # 19 characters: short


async def test_sources_in_order_each_named(tmp_path: Path) -> None:
    """stored, then config, then command, then environment, then the file: each one taken
    away reveals the next, and the source says which it is."""
    program = tmp_path / "print_key.py"
    program.write_text("print('sk-from-command-0123456789abcdef')\n")
    auth = tmp_path / "auth.json"
    write_json(auth, {"OPENAI_API_KEY": "sk-from-file-0123456789abcdef", "tokens": None})
    environ = {"OPENAI_API_KEY": "sk-from-env-0123456789abcdef"}

    def service(**credentials: Any) -> Credentials:
        settings = make_settings(
            tmp_path,
            agents={"openai_api_key": "sk-from-config-0123456789abcdef"},
            credentials={"codex_command": f"{sys.executable} {program}", **credentials},
        )
        return Credentials(settings, environ)

    creds = service()
    await creds.stored.put("codex", {"secret": "sk-stored-0123456789abcdef"})
    found = await creds.credential("codex")
    assert found is not None
    assert (found.source, found.secret) == (
        "stored",
        "sk-stored-0123456789abcdef",
    )
    await creds.remove("codex")
    found = await creds.credential("codex")
    assert found is not None
    assert found.source == "config:agents.openai_api_key"

    settings = make_settings(tmp_path, credentials={"codex_command": f"{sys.executable} {program}"})
    found = await Credentials(settings, environ).credential("codex")
    assert found is not None
    assert (found.source, found.secret) == ("command", "sk-from-command-0123456789abcdef")
    found = await Credentials(make_settings(tmp_path), environ).credential("codex")
    assert found is not None
    assert found.source == "env:OPENAI_API_KEY"
    found = await Credentials(make_settings(tmp_path), {}).credential("codex")
    assert found is not None
    assert (found.kind, found.source) == ("api_key", f"file:{auth}")
    unread = make_settings(tmp_path, credentials={"codex_auth_file": ""})
    assert await Credentials(unread, {}).credential("codex") is None


async def test_claude_kinds_config_token_and_environment(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, credentials={"claude_oauth_token": OAUTH})
    found = await Credentials(settings, {"ANTHROPIC_API_KEY": API_KEY}).credential("claude")
    assert found is not None
    assert (found.kind, found.source) == ("oauth_token", "config:credentials.claude_oauth_token")
    both = {"ANTHROPIC_API_KEY": API_KEY, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    found = await Credentials(make_settings(tmp_path), both).credential("claude")
    assert found is not None
    assert (found.kind, found.source) == ("api_key", "env:ANTHROPIC_API_KEY")
    only = {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    found = await Credentials(make_settings(tmp_path), only).credential("claude")
    assert found is not None
    assert (found.kind, found.source) == ("oauth_token", "env:CLAUDE_CODE_OAUTH_TOKEN")
    assert OAUTH not in repr(found)


async def test_command_runs_once_per_cache_period(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    program = tmp_path / "key.py"
    program.write_text(
        f"import pathlib\np = pathlib.Path({str(counter)!r})\n"
        "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n"
        "print('sk-ant-oat01-from-a-password-manager-0123')\nprint('a note after it')\n"
    )
    settings = make_settings(
        tmp_path, credentials={"claude_command": f"{sys.executable} {program}"}
    )
    creds = Credentials(settings, {})
    results = await asyncio.gather(*(creds.credential("claude") for _ in range(20)))
    assert {(r.kind, r.secret) for r in results if r} == {
        ("oauth_token", "sk-ant-oat01-from-a-password-manager-0123")
    }
    assert counter.read_text() == "1"


async def test_codex_file_chatgpt_sign_in_and_reread_on_change(tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    data = signin()
    write_json(auth, data)
    creds = Credentials(make_settings(tmp_path), {})
    found = await creds.credential("codex")
    assert found is not None
    assert (found.kind, found.account_id) == ("chatgpt", "acct-123")
    assert found.secret == data["tokens"]["access_token"]
    assert found.claims == {"plan": "pro", "email": "user@example.com"}
    # The account from the id token when the file has none; picked up from a changed file.
    data = signin(account=None)
    write_json(auth, data)
    os.utime(auth, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    creds.auth_file.forget()
    found = await creds.credential("codex")
    assert found is not None
    assert found.account_id == "acct-from-id-token"
    assert found.secret == data["tokens"]["access_token"]


# --- ChatGPT refresh -------------------------------------------------------------------


class TokenServer:
    """A scripted OAuth token endpoint: records each request, answers new tokens."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.access = jwt({"exp": int(time.time() + 7200), "new": True})
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        await asyncio.sleep(0.05)  # long enough for concurrent callers to pile up
        if self.status != 200:
            return web.json_response({"error": "invalid_grant"}, status=self.status)
        return web.json_response(
            {"access_token": self.access, "id_token": jwt({"email": "new@example.com"}),
             "refresh_token": "rt-new-0002", "expires_in": 7200}
        )  # fmt: skip

    async def __aenter__(self) -> TokenServer:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/oauth/token"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_expiring_sign_in_is_refreshed_once_and_written_back(tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    write_json(auth, signin(expires_in=60))  # within the 5-minute margin
    auth.chmod(0o644)
    async with TokenServer() as server:
        settings = make_settings(tmp_path, credentials={"openai_token_url": server.url})
        creds = Credentials(settings, {})
        with capture_logs() as logs:
            results = await asyncio.gather(*(creds.credential("codex") for _ in range(10)))
        await creds.close()
    assert len(server.requests) == 1, "one refresh for ten callers"
    assert server.requests[0] == {
        "client_id": chatgpt.CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": "rt-old-0001",
        "scope": "openid profile email",
    }
    assert {r.secret for r in results if r} == {server.access}
    written = json.loads(auth.read_text())
    assert written["tokens"]["access_token"] == server.access
    assert written["tokens"]["refresh_token"] == "rt-new-0002"
    assert written["tokens"]["account_id"] == "acct-123"
    assert written["other_key"] == {"kept": True}
    assert written["last_refresh"] != "2099-01-01T00:00:00Z"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert "rt-old-0001" not in str(logs)
    assert server.access not in str(logs)


async def test_fresh_sign_in_is_not_refreshed_and_a_refused_refresh_keeps_the_old(
    tmp_path: Path,
) -> None:
    auth = tmp_path / "auth.json"
    async with TokenServer(status=401) as server:
        settings = make_settings(tmp_path, credentials={"openai_token_url": server.url})
        write_json(auth, signin(expires_in=3600))
        found = await Credentials(settings, {}).credential("codex")
        assert found is not None
        assert server.requests == []
        data = signin(expires_in=10)
        write_json(auth, data)
        creds = Credentials(settings, {})
        with capture_logs() as logs:
            found = await creds.credential("codex")
            again = await creds.credential("codex")  # within the retry pause: no new request
        await creds.close()
    assert found is not None
    assert found.secret == data["tokens"]["access_token"]
    assert again is not None
    assert len(server.requests) == 1
    assert json.loads(auth.read_text()) == data, "the file is untouched"
    failed = [e for e in logs if e["event"] == "chatgpt_refresh_failed"]
    assert failed
    assert "codex login" in failed[0]["reason"]
    assert "rt-old-0001" not in str(logs)


async def test_stored_sign_in_is_refreshed_into_the_stored_file(tmp_path: Path) -> None:
    async with TokenServer() as server:
        settings = make_settings(tmp_path, credentials={"openai_token_url": server.url})
        creds = Credentials(settings, {})
        await creds.stored.put("codex", {"auth_json": signin(expires_in=1)})
        found = await creds.credential("codex")
        await creds.close()
    assert found is not None
    assert found.source == "stored"
    assert found.secret == server.access
    path = settings.data_dir / "credentials.json"
    assert json.loads(path.read_text())["codex"]["auth_json"]["tokens"]["refresh_token"] == (
        "rt-new-0002"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "auth.json").exists()


# --- checks ----------------------------------------------------------------------------


@pytest.fixture
async def model_server() -> AsyncIterator[ModelServer]:
    async with ModelServer() as server:
        yield server


async def test_checks_ok_invalid_unreachable_missing(
    tmp_path: Path, model_server: ModelServer
) -> None:
    settings = make_settings(
        tmp_path,
        agents={
            "anthropic_base_url": model_server.url,
            "openai_base_url": f"{model_server.url}/v1",
        },
        credentials={"codex_auth_file": ""},
    )  # fmt: skip
    creds = Credentials(settings, {"ANTHROPIC_API_KEY": API_KEY})
    entry = await creds.check("claude")
    assert (entry.status, entry.kind, entry.source) == ("ok", "api_key", "env:ANTHROPIC_API_KEY")
    assert entry.checked_at is not None
    sent = model_server.log[-1]
    assert sent.path == "/v1/models"
    assert sent.headers["x-api-key"] == API_KEY

    creds = Credentials(settings, {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
    entry = await creds.check("claude")
    sent = model_server.log[-1]
    assert entry.status == "ok"
    assert entry.kind == "oauth_token"
    assert sent.headers["Authorization"] == f"Bearer {OAUTH}"
    assert "oauth-2025-04-20" in sent.headers["anthropic-beta"]
    assert "x-api-key" not in sent.headers

    creds = Credentials(settings, {"OPENAI_API_KEY": BAD_KEY})
    entry = await creds.check("codex")
    assert entry.status == "invalid"
    assert "401" in entry.message
    assert model_server.log[-1].headers["Authorization"] == f"Bearer {BAD_KEY}"
    assert (await creds.listing())[1].status == "invalid"  # kept

    assert (await Credentials(settings, {}).check("codex")).status == "missing"
    dead = make_settings(tmp_path, agents={"anthropic_base_url": "http://127.0.0.1:9"})
    entry = await Credentials(dead, {"ANTHROPIC_API_KEY": API_KEY}).check("claude")
    assert entry.status == "unreachable"
    assert "127.0.0.1:9" in entry.message
    assert API_KEY not in entry.model_dump_json()
    await creds.close()


async def test_chatgpt_check_sends_the_token_and_account(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def accounts_check(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"accounts": {}})

    app = web.Application()
    app.router.add_get("/backend-api/wham/accounts/check", accounts_check)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/backend-api"
        settings = make_settings(tmp_path, agents={"chatgpt_base_url": base})
        data = signin()
        write_json(tmp_path / "auth.json", data)
        creds = Credentials(settings, {})
        entry = await creds.check("codex")
        await creds.close()
    finally:
        await runner.cleanup()
    assert entry.status == "ok"
    assert entry.kind == "chatgpt"
    assert entry.account is not None
    assert entry.account.plan == "pro"
    assert seen[0]["Authorization"] == f"Bearer {data['tokens']['access_token']}"
    assert seen[0]["chatgpt-account-id"] == "acct-123"


# --- the API ---------------------------------------------------------------------------


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path, model_server: ModelServer) -> AsyncIterator[Any]:
    settings = make_settings(
        tmp_path,
        agents={
            "anthropic_base_url": model_server.url,
            "openai_base_url": f"{model_server.url}/v1",
        },
        docker={"default_image": "corral-test-unbuilt:none", "network_mode": "none"},
    )  # fmt: skip
    app = create_app(settings)
    return await aiohttp_client(app)


async def test_api_lists_stores_checks_and_removes_without_showing_secrets(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    bodies: list[str] = []

    async def call(method: str, path: str, status: int, **kw: Any) -> Any:
        response = await api.request(method, path, **kw)
        text = await response.text()
        bodies.append(text)
        assert response.status == status, text
        return json.loads(text) if text else None

    with capture_logs() as logs:
        listing = await call("GET", "/api/credentials", 200)
        assert [e["agent"] for e in listing["credentials"]] == ["claude", "codex"]
        claude = listing["credentials"][0]
        assert claude["status"] == "missing"
        assert claude["kind"] is None
        assert "corral login claude" in claude["message"]

        entry = await call("PUT", "/api/credentials/claude", 200, json={"secret": OAUTH})
        assert entry["kind"] == "oauth_token"
        assert entry["source"] == "stored"
        assert entry["masked"] == mask(OAUTH)
        assert entry["status"] == "ok"
        assert entry["stored"] is True

        entry = await call("PUT", "/api/credentials/codex", 200, json={"secret": BAD_KEY})
        assert (entry["kind"], entry["status"]) == ("api_key", "invalid")
        auth = signin()
        entry = await call("PUT", "/api/credentials/codex", 200, json={"auth_json": auth})
        assert entry["kind"] == "chatgpt"
        assert entry["account"] == {"plan": "pro", "email": "user@example.com"}

        entry = await call("POST", "/api/credentials/claude/check", 200)
        assert entry["status"] == "ok"
        listing = await call("GET", "/api/credentials", 200)
        assert listing["credentials"][0]["status"] == "ok"

        await call("DELETE", "/api/credentials/claude", 204)
        error = await call("DELETE", "/api/credentials/claude", 404)
        assert error["error"]["code"] == "NOT_FOUND"
        for path in ("/api/credentials/gemini", "/api/credentials/gemini/check"):
            method = "PUT" if path.endswith("gemini") else "POST"
            error = await call(method, path, 404, json={"secret": OAUTH})
            assert error["error"]["code"] == "NOT_FOUND"
        for body in (
            {"secret": OAUTH, "auth_json": auth},
            {},
            {"secret": "two words " + OAUTH},
            {"auth_json": {"tokens": {}}},
        ):
            error = await call("PUT", "/api/credentials/codex", 400, json=body)
            assert error["error"]["code"] == "INVALID_REQUEST"
        error = await call("PUT", "/api/credentials/claude", 400, json={"auth_json": auth})
        assert "codex" in error["error"]["message"].lower()
        await call("GET", "/api/config", 200)
        await call("GET", "/api/openapi.json", 200)

    secrets = [OAUTH, BAD_KEY, auth["tokens"]["access_token"], auth["tokens"]["refresh_token"]]
    for secret in secrets:
        assert not any(secret in body for body in bodies), "a secret in an answer"
        assert secret not in str(logs), "a secret in the logs"


async def test_system_status_reports_kind_source_and_status(
    tmp_path: Path, model_server: ModelServer
) -> None:
    settings = make_settings(tmp_path, agents={"anthropic_base_url": model_server.url})
    creds = Credentials(settings, {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
    await creds.check("claude")
    status = await system_status(settings, None, None, creds)
    claude = status.credentials.claude
    assert claude.present
    assert claude.kind == "oauth_token"
    assert claude.source == "env:CLAUDE_CODE_OAUTH_TOKEN"
    assert claude.status == "ok"
    check = next(c for c in status.checks if c.name == "credentials_claude")
    assert check.ok
    assert "oauth_token" in check.summary
    assert OAUTH not in status.model_dump_json()
    bad = Credentials(settings, {"ANTHROPIC_API_KEY": BAD_KEY})
    await bad.check("claude")
    check = next(
        c for c in (await system_status(settings, None, None, bad)).checks
        if c.name == "credentials_claude"
    )  # fmt: skip
    assert not check.ok
    assert check.fix
    assert "corral login claude" in check.fix
    await creds.close()
    await bad.close()


# --- corral login ----------------------------------------------------------------------


def _login(url: str, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "login", *args, "--url", url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


async def test_corral_login_claude_and_codex_against_a_running_daemon(
    api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    url = str(api.make_url("")).rstrip("/")
    done = await asyncio.to_thread(_login, url, "claude", stdin=OAUTH + "\n")
    assert done.returncode == 0, done.stderr
    assert "claude setup-token" in done.stdout
    assert mask(OAUTH) in done.stdout
    assert "ok" in done.stdout
    assert OAUTH not in done.stdout + done.stderr
    entry = (await (await api.get("/api/credentials")).json())["credentials"][0]
    assert (entry["kind"], entry["source"]) == ("oauth_token", "stored")

    auth_file = tmp_path / "my-auth.json"
    data = signin()
    write_json(auth_file, data)
    done = await asyncio.to_thread(_login, url, "codex", "--file", str(auth_file), stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert "user@example.com" in done.stdout
    assert data["tokens"]["access_token"] not in done.stdout + done.stderr
    entry = (await (await api.get("/api/credentials")).json())["credentials"][1]
    assert entry["kind"] == "chatgpt"

    done = await asyncio.to_thread(
        _login, url, "codex", "--file", str(tmp_path / "none.json"), stdin=BAD_KEY + "\n"
    )
    assert done.returncode == 1, done.stdout  # stored, but the provider refused it
    assert "invalid" in done.stdout
    assert "codex login" in done.stdout


async def test_metadata_model_call_takes_claudes_credential_from_the_service(
    tmp_path: Path, model_server: ModelServer
) -> None:
    from daemon.supervise import metadata

    settings = make_settings(tmp_path, agents={"anthropic_base_url": model_server.url})
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    oauth = Credentials(settings, {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
    await metadata.call_model(settings, body, {}, oauth)
    sent = model_server.log[-1].headers
    assert sent["Authorization"] == f"Bearer {OAUTH}"
    assert "oauth-2025-04-20" in sent["anthropic-beta"]
    assert "x-api-key" not in sent
    keyed = Credentials(settings, {"ANTHROPIC_API_KEY": API_KEY})
    await metadata.call_model(settings, body, {}, keyed)
    assert model_server.log[-1].headers["x-api-key"] == API_KEY
