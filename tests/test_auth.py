"""Sign-in end to end over HTTP: passkey ceremonies, sessions, tokens, and every attack.

The passkeys are real P-256 keys in a software authenticator (tests/webauthn_helper.py),
so py_webauthn verifies real signatures. The daemon runs with auth on, on the local
backend only: nothing here needs a container engine.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, WSServerHandshakeError

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.auth.service import COOKIE
from daemon.keys import AUTH
from daemon.settings import Settings
from tests.test_api_errors import error_of
from tests.webauthn_helper import SoftAuthenticator, b64url

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def auth_settings(tmp_path: Path, **auth: Any) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "sessions": {"default_backend": "local", "start_agent": False},
            "auth": {"mode": "webauthn", **auth},
        }
    )


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    app = create_app(auth_settings(tmp_path), backends={"local": LocalBackend()})
    return await aiohttp_client(app)


@pytest.fixture
def authn(client: Any) -> SoftAuthenticator:
    return SoftAuthenticator(origin=f"http://localhost:{client.port}")


def setup_token(client: Any) -> str:
    token = client.app[AUTH].setup_token
    assert token is not None
    return str(token)


def forget_cookies(client: Any) -> None:
    client.session.cookie_jar.clear()


async def register(
    client: Any, authn: SoftAuthenticator, token: str | None = "<setup>", **create: Any
) -> Any:
    body: dict[str, Any] = {"username": "alice"}
    if token is not None:
        body["setup_token"] = setup_token(client) if token == "<setup>" else token
    begin = await client.post("/api/auth/register/begin", json=body)
    assert begin.status == 200, await begin.text()
    options = (await begin.json())["options"]
    credential = authn.create(options, **create)
    return await client.post(
        "/api/auth/register/complete", json={"credential": credential, "name": "laptop"}
    )


async def login_options(client: Any, **body: Any) -> dict[str, Any]:
    begin = await client.post("/api/auth/login/begin", json=body)
    assert begin.status == 200, await begin.text()
    return dict((await begin.json())["options"])


async def login(client: Any, authn: SoftAuthenticator, **get: Any) -> Any:
    options = await login_options(client)
    return await client.post(
        "/api/auth/login/complete", json={"credential": authn.get(options, **get)}
    )


async def signed_up(client: Any, authn: SoftAuthenticator) -> None:
    response = await register(client, authn)
    assert response.status == 201, await response.text()


async def new_token(client: Any, name: str = "script") -> dict[str, Any]:
    response = await client.post("/api/auth/tokens", json={"name": name})
    assert response.status == 201, await response.text()
    return dict(await response.json())


# --- the happy path ---------------------------------------------------------------------


async def test_setup_token_is_printed_and_kept_in_a_private_file(
    aiohttp_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(auth_settings(tmp_path), backends={"local": LocalBackend()})
    client = await aiohttp_client(app)
    token = setup_token(client)
    path = Path(client.app[AUTH].setup_token_path)
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    captured = capsys.readouterr()
    assert token in captured.err
    # The log line says where the token is, never the token itself.
    assert "auth_setup_required" in captured.out + captured.err
    assert token not in captured.out
    assert all(token not in line for line in captured.err.splitlines() if "auth_setup" in line)
    status = await (await client.get("/api/auth/status")).json()
    assert status == {
        "mode": "webauthn",
        "authenticated": False,
        "via": None,
        "user": None,
        "setup_required": True,
        "rp_id": "localhost",
    }


async def test_register_sign_out_sign_in(client: Any, authn: SoftAuthenticator) -> None:
    assert (await client.get("/api/sessions")).status == 401
    response = await register(client, authn)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["user"]["name"] == "alice"
    assert body["passkey"]["name"] == "laptop"
    assert body["signed_in"] is True
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert not cookie["secure"]  # plain http on localhost
    assert cookie.value.startswith("corral_ses_")
    # The setup token is spent and its file gone.
    assert client.app[AUTH].setup_token is None
    assert not Path(client.app[AUTH].setup_token_path).exists()

    assert (await client.get("/api/sessions")).status == 200
    status = await (await client.get("/api/auth/status")).json()
    assert status["authenticated"] is True
    assert status["via"] == "cookie"
    assert status["setup_required"] is False

    logout = await client.post("/api/auth/logout")
    assert logout.status == 204
    assert logout.cookies[COOKIE].value == ""
    # Logout deletes the session server-side: the old cookie is worthless too.
    client.session.cookie_jar.update_cookies({COOKIE: cookie.value})
    assert (await client.get("/api/sessions")).status == 401
    forget_cookies(client)

    for _ in range(2):  # the count rises by 2 each time, like Chromium's authenticator
        signed = await login(client, authn)
        assert signed.status == 200, await signed.text()
        assert (await signed.json())["user"]["name"] == "alice"
        assert (await client.get("/api/sessions")).status == 200


async def test_sign_in_naming_the_user(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    forget_cookies(client)
    options = await login_options(client, username="alice")
    assert [c["id"] for c in options["allowCredentials"]] == [b64url(authn.passkeys[0].id)]
    signed = await client.post("/api/auth/login/complete", json={"credential": authn.get(options)})
    assert signed.status == 200, await signed.text()


async def test_a_signed_in_browser_adds_a_second_passkey(
    client: Any, authn: SoftAuthenticator
) -> None:
    await signed_up(client, authn)
    second = await register(client, authn, token=None)
    assert second.status == 201, await second.text()
    assert (await second.json())["signed_in"] is False
    forget_cookies(client)
    for passkey in authn.passkeys:
        options = await login_options(client)
        signed = await client.post(
            "/api/auth/login/complete", json={"credential": authn.get(options, passkey=passkey)}
        )
        assert signed.status == 200, await signed.text()


# --- registration attacks ---------------------------------------------------------------


async def test_registration_needs_the_setup_token(client: Any) -> None:
    for body in ({}, {"setup_token": "corral_setup_wrong"}, {"setup_token": ""}):
        response = await client.post("/api/auth/register/begin", json=body)
        await error_of(response, 401, "UNAUTHORIZED")
    assert client.app[AUTH].setup_token is not None  # a wrong guess spends nothing


async def test_a_used_setup_token_registers_nothing(client: Any, authn: SoftAuthenticator) -> None:
    token = setup_token(client)
    # Two ceremonies begun with the token: only the first completion may use it.
    options = []
    for _ in range(2):
        begin = await client.post(
            "/api/auth/register/begin", json={"setup_token": token, "username": "alice"}
        )
        options.append((await begin.json())["options"])
    first = await client.post(
        "/api/auth/register/complete", json={"credential": authn.create(options[0])}
    )
    assert first.status == 201
    forget_cookies(client)
    second = await client.post(
        "/api/auth/register/complete", json={"credential": authn.create(options[1])}
    )
    await error_of(second, 401, "UNAUTHORIZED")
    again = await client.post("/api/auth/register/begin", json={"setup_token": token})
    await error_of(again, 401, "UNAUTHORIZED")


async def test_registration_from_another_origin_or_rp_id(
    client: Any, authn: SoftAuthenticator
) -> None:
    for create in ({"origin": "http://evil.example:8080"}, {"rp_id": "evil.example"}):
        response = await register(client, authn, **create)
        error = await error_of(response, 401, "UNAUTHORIZED")
        assert "could not be verified" in error["message"]
    assert client.app[AUTH].setup_token is not None  # still unused
    assert (await client.get("/api/auth/status")).status == 200


async def test_a_token_cannot_add_a_passkey(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    secret = (await new_token(client))["secret"]
    forget_cookies(client)
    response = await client.post(
        "/api/auth/register/begin", json={}, headers={"Authorization": f"Bearer {secret}"}
    )
    await error_of(response, 401, "UNAUTHORIZED")


# --- sign-in attacks --------------------------------------------------------------------


async def test_login_with_an_unknown_user_or_passkey(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    forget_cookies(client)
    # An unknown name gets options like any other (no enumeration) that nothing completes.
    options = await login_options(client, username="mallory")
    assert options["allowCredentials"] == []
    response = await client.post(
        "/api/auth/login/complete", json={"credential": authn.get(options)}
    )
    await error_of(response, 401, "UNAUTHORIZED")
    # A passkey this daemon never registered.
    stranger = SoftAuthenticator(origin=authn.origin)
    stranger.create({"rp": {"id": "localhost"}, "user": {"id": "AAAA"}, "challenge": "AAAA"})
    response = await login(client, stranger)
    error = await error_of(response, 401, "UNAUTHORIZED")
    assert error["message"] == "unknown passkey"
    assert (await client.get("/api/sessions")).status == 401


async def test_a_replayed_assertion_is_refused(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    forget_cookies(client)
    options = await login_options(client)
    assertion = authn.get(options)
    first = await client.post("/api/auth/login/complete", json={"credential": assertion})
    assert first.status == 200
    forget_cookies(client)
    replay = await client.post("/api/auth/login/complete", json={"credential": assertion})
    error = await error_of(replay, 401, "UNAUTHORIZED")
    assert "challenge" in error["message"]


async def test_an_expired_challenge_is_refused(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    forget_cookies(client)
    challenges = client.app[AUTH].challenges
    options = await login_options(client)
    real = challenges.clock
    challenges.clock = lambda: real() + 301
    response = await client.post(
        "/api/auth/login/complete", json={"credential": authn.get(options)}
    )
    error = await error_of(response, 401, "UNAUTHORIZED")
    assert "expired" in error["message"]


@pytest.mark.parametrize(
    "get",
    [
        {"origin": "http://evil.example:3030"},
        {"origin": "https://localhost.evil.example"},
        {"rp_id": "evil.example"},
        {"tamper": True},
    ],
)
async def test_bad_assertions_are_refused(
    client: Any, authn: SoftAuthenticator, get: dict[str, Any]
) -> None:
    await signed_up(client, authn)
    forget_cookies(client)
    response = await login(client, authn, **get)
    error = await error_of(response, 401, "UNAUTHORIZED")
    assert "could not be verified" in error["message"]
    assert COOKIE not in response.cookies
    assert (await client.get("/api/sessions")).status == 401


async def test_a_sign_count_that_does_not_rise_is_refused(
    client: Any, authn: SoftAuthenticator
) -> None:
    """Once a passkey counts, the count must rise: a clone would repeat or go back."""
    await signed_up(client, authn)
    forget_cookies(client)
    assert (await login(client, authn)).status == 200
    forget_cookies(client)
    for step in (0, -1):
        response = await login(client, authn, sign_step=step)
        error = await error_of(response, 401, "UNAUTHORIZED")
        assert "sign count" in error["message"]
    assert (await login(client, authn, sign_step=5)).status == 200  # any rise will do


@pytest.mark.parametrize(
    "credential",
    [
        {},
        {"response": "x"},
        {"response": {"clientDataJSON": "!!!"}},
        {"response": {"clientDataJSON": "e30"}},  # {}
        {"id": 1, "rawId": [], "response": {"clientDataJSON": "eyJjaGFsbGVuZ2UiOiJBQUFBIn0"}},
    ],
)
async def test_malformed_credentials_are_400(client: Any, credential: dict[str, Any]) -> None:
    for path in ("/api/auth/login/complete", "/api/auth/register/complete"):
        response = await client.post(path, json={"credential": credential})
        assert response.status in (400, 401), await response.text()
        assert (await response.json())["error"]["code"] in ("INVALID_REQUEST", "UNAUTHORIZED")


# --- cookies ----------------------------------------------------------------------------


async def test_a_forged_cookie_is_refused(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    forget_cookies(client)
    for forged in ("corral_ses_forged", "", "x" * 5000, "corral_ses_" + "A" * 43):
        client.session.cookie_jar.update_cookies({COOKIE: forged})
        await error_of(await client.get("/api/sessions"), 401, "UNAUTHORIZED")


async def test_an_expired_cookie_is_refused_and_deleted(
    client: Any, authn: SoftAuthenticator
) -> None:
    await signed_up(client, authn)
    auth = client.app[AUTH]
    real = auth.now
    auth.now = lambda: real() + timedelta(hours=168, seconds=1)
    await error_of(await client.get("/api/sessions"), 401, "UNAUTHORIZED")
    auth.now = real
    # Deleted server-side on first sight: moving the clock back does not revive it.
    await error_of(await client.get("/api/sessions"), 401, "UNAUTHORIZED")


# --- API tokens -------------------------------------------------------------------------


async def test_api_tokens_shown_once_stored_hashed_and_revocable(
    client: Any, authn: SoftAuthenticator, tmp_path: Path
) -> None:
    await signed_up(client, authn)
    created = await new_token(client, "ci")
    secret = created["secret"]
    assert secret.startswith("corral_tok_")
    token_id = created["token"]["id"]
    listed = await (await client.get("/api/auth/tokens")).json()
    assert [t["id"] for t in listed["tokens"]] == [token_id]
    assert secret not in str(listed)
    assert listed["tokens"][0]["hint"] == secret[:15] + "…"
    # Only the hash is stored.
    db = sqlite3.connect(tmp_path / "data" / "corral.db")
    stored = db.execute("SELECT token_hash FROM api_tokens").fetchall()
    sessions = db.execute("SELECT token_hash FROM auth_sessions").fetchall()
    db.close()
    assert stored == [(hashlib.sha256(secret.encode()).hexdigest(),)]
    assert all(not h.startswith("corral_") for (h,) in sessions)
    assert secret.encode() not in (tmp_path / "data" / "corral.db").read_bytes()

    forget_cookies(client)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/sessions", headers=bearer)).status == 200
    status = await (await client.get("/api/auth/status", headers=bearer)).json()
    assert status["via"] == "token"
    # A token cannot mint more tokens.
    minted = await client.post("/api/auth/tokens", json={"name": "more"}, headers=bearer)
    await error_of(minted, 403, "FORBIDDEN")
    # A bad Authorization header never falls back to a cookie.
    for header in ("Bearer", "Basic abc", f"Bearer {secret}x", "Bearer corral_tok_nope"):
        response = await client.get("/api/sessions", headers={"Authorization": header})
        await error_of(response, 401, "UNAUTHORIZED")

    revoked = await client.delete(f"/api/auth/tokens/{token_id}", headers=bearer)
    assert revoked.status == 204
    await error_of(await client.get("/api/sessions", headers=bearer), 401, "UNAUTHORIZED")
    await signed_in_again(client, authn)
    missing = await client.delete(f"/api/auth/tokens/{UNKNOWN}")
    await error_of(missing, 404, "NOT_FOUND")


async def signed_in_again(client: Any, authn: SoftAuthenticator) -> None:
    response = await login(client, authn)
    assert response.status == 200, await response.text()


async def test_token_request_validation(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    for body in ({}, {"name": ""}, {"name": "x" * 200}, {"name": "a", "extra": 1}):
        response = await client.post("/api/auth/tokens", json=body)
        await error_of(response, 400, "INVALID_REQUEST")


# --- sockets, hosts and origins ---------------------------------------------------------


async def ws_status(client: Any, path: str, headers: dict[str, str] | None = None) -> int:
    try:
        ws = await client.ws_connect(path, headers=headers or {})
    except WSServerHandshakeError as exc:
        return int(exc.status)
    await ws.close()
    return 101


async def test_websockets_check_credentials_before_the_upgrade(
    client: Any, authn: SoftAuthenticator
) -> None:
    for path in ("/ws/events", f"/ws/console/{UNKNOWN}"):
        response = await client.get(
            path,
            headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key":
                     "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"},
        )  # fmt: skip
        await error_of(response, 401, "UNAUTHORIZED")
    await signed_up(client, authn)
    hostile = {"Origin": "https://evil.example"}
    for path in ("/ws/events", f"/ws/console/{UNKNOWN}"):
        assert await ws_status(client, path, hostile) == 403  # valid cookie, hostile page
        assert await ws_status(client, path, {"Origin": authn.origin}) == 101
    secret = (await new_token(client))["secret"]
    forget_cookies(client)
    assert await ws_status(client, "/ws/events") == 401
    assert await ws_status(client, "/ws/events", {"Authorization": f"Bearer {secret}"}) == 101


async def test_dns_rebinding_host_is_refused_even_signed_in(
    client: Any, authn: SoftAuthenticator
) -> None:
    await signed_up(client, authn)
    for path in ("/api/sessions", "/api/auth/status", "/health", "/login"):
        response = await client.get(path, headers={"Host": "attacker.example"})
        await error_of(response, 403, "FORBIDDEN")
    assert await ws_status(client, "/ws/events", {"Host": "attacker.example:80"}) == 403


async def test_cross_site_form_post_is_refused(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for headers in (
        {**form, "Origin": "https://evil.example"},
        {**form, "Origin": "null"},
        {**form, "Sec-Fetch-Site": "cross-site"},
    ):
        response = await client.post("/api/auth/tokens", data="name=pwned", headers=headers)
        await error_of(response, 403, "FORBIDDEN")
        response = await client.post("/api/auth/logout", headers=headers)
        await error_of(response, 403, "FORBIDDEN")
    tokens = await (await client.get("/api/auth/tokens")).json()
    assert tokens == {"tokens": []}


# --- every route, without credentials ---------------------------------------------------

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/api/auth/status"),
    ("POST", "/api/auth/register/begin"),
    ("POST", "/api/auth/register/complete"),
    ("POST", "/api/auth/login/begin"),
    ("POST", "/api/auth/login/complete"),
    ("GET", "/login"),
    ("GET", "/login.js"),
    ("GET", "/login.css"),
}
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def test_every_route_refuses_a_stranger(client: Any) -> None:
    """Walk the router: a route added later without thought is refused, not open."""
    seen: set[tuple[str, str]] = set()
    for route in client.app.router.routes():
        resource = route.resource
        assert resource is not None
        canonical = resource.canonical
        method = route.method
        path = re.sub(r"\{[^}]+\}", UNKNOWN, canonical)  # any value: refused before lookup
        headers = dict(UPGRADE) if path.startswith("/ws/") else {}
        response = await client.request(method, path, headers=headers, allow_redirects=False)
        key = ("GET" if method == "HEAD" else method, canonical)
        seen.add(key)
        if key in PUBLIC:
            # The handler answered (it may refuse for its own reasons), not the middleware.
            if response.status == 401:
                message = (await response.json())["error"]["message"]
                assert not message.startswith("sign in:"), (method, canonical)
            continue
        assert response.status == 401, (method, canonical, response.status)
        if method != "HEAD":
            assert (await response.json())["error"]["code"] == "UNAUTHORIZED", (method, path)
    assert seen >= PUBLIC
    # A path no route matches says nothing about what exists.
    await error_of(await client.get("/api/nothing-here"), 401, "UNAUTHORIZED")
    # Another method on a public path is its 405; on any other path, 401.
    wrong = await client.request("TRACE", "/health")
    await error_of(wrong, 405, "METHOD_NOT_ALLOWED")
    assert wrong.headers["Allow"] == "GET"
    await error_of(await client.request("TRACE", "/api/sessions"), 401, "UNAUTHORIZED")


async def test_a_browser_is_sent_to_the_login_page(client: Any) -> None:
    response = await client.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/login?next=/"
    page = await client.get("/login")
    assert page.status == 200
    assert "login.js" in await page.text()


# --- headers ----------------------------------------------------------------------------


async def test_security_headers(client: Any) -> None:
    for path in ("/login", "/login.js", "/api/auth/status", "/health"):
        response = await client.get(path)
        assert response.status == 200
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self';" in csp
        assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Frame-Options"] == "DENY"
    api = await client.get("/api/auth/status")
    assert api.headers["Cache-Control"] == "no-store"
    refused = await client.get("/api/sessions")
    assert refused.headers["X-Content-Type-Options"] == "nosniff"


# --- auth off ---------------------------------------------------------------------------


async def test_with_auth_off_everything_is_open_and_ceremonies_are_409(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = Settings.model_validate({"data_dir": str(tmp_path / "data")})
    client = await aiohttp_client(create_app(settings, backends={"local": LocalBackend()}))
    status = await (await client.get("/api/auth/status")).json()
    assert status == {
        "mode": "none",
        "authenticated": True,
        "via": None,
        "user": None,
        "setup_required": False,
        "rp_id": None,
    }
    assert (await client.get("/api/sessions")).status == 200
    assert not (tmp_path / "data" / "setup-token").exists()
    for method, path in (
        ("POST", "/api/auth/register/begin"),
        ("POST", "/api/auth/login/begin"),
        ("GET", "/api/auth/tokens"),
        ("POST", "/api/auth/tokens"),
        ("DELETE", f"/api/auth/tokens/{UNKNOWN}"),
    ):
        body = {"name": "x"} if "tokens" in path else {}
        response = await client.request(method, path, json=body)
        await error_of(response, 409, "CONFLICT")
    assert (await client.post("/api/auth/logout")).status == 204


# --- corral attach ----------------------------------------------------------------------


async def test_corral_attach_signs_in_with_corral_token(
    client: Any, authn: SoftAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_attach_client import attached, url_of

    await signed_up(client, authn)
    secret = (await new_token(client))["secret"]
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    async with attached(url_of(client, UNKNOWN)) as viewer:
        outcome = await viewer.outcome()
    assert outcome.status == 1
    assert "CORRAL_TOKEN" in outcome.message
    monkeypatch.setenv("CORRAL_TOKEN", secret)
    async with attached(url_of(client, UNKNOWN)) as viewer:
        outcome = await viewer.outcome()
    assert (outcome.status, outcome.message) == (2, "session not found")  # past the auth


def test_protocol_security_routes_are_served() -> None:
    """PROTOCOL lists the auth routes in prose (its Security section), not the table."""
    from daemon.http.routes import ROUTES

    protocol = Path(__file__).resolve().parent.parent.parent / "shared" / "PROTOCOL.md"
    if not protocol.exists():
        pytest.skip("shared/PROTOCOL.md is not beside this checkout")
    section = protocol.read_text().split("## Security", 1)[1]
    served = {(s.method, s.path.replace("{token_id}", "{id}")) for s in ROUTES.specs}
    served_paths = {path for _, path in served}
    found = re.findall(r"`(?:([A-Z|]+) )?(/api/auth/[^`]+)`", section)
    assert len(found) >= 5
    for methods, written in found:
        head, _, tail = written.rpartition("/")
        for path in (f"{head}/{leaf}" for leaf in tail.split("|")):
            assert path in served_paths, path
            for method in filter(None, methods.split("|")):
                assert (method, path) in served, (method, path)


# --- challenge pools and rate limits ----------------------------------------------------

ROOMY = {  # limits out of the way, for the tests of what lies behind them
    "ceremony_rate_per_minute": 100_000,
    "ceremony_global_rate_per_minute": 100_000,
    "setup_token_rate_per_minute": 100_000,
}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def auth_client(aiohttp_client: Any, tmp_path: Path, **auth: Any) -> Any:
    app = create_app(auth_settings(tmp_path, **auth), backends={"local": LocalBackend()})
    return await aiohttp_client(app)


async def test_a_login_flood_does_not_evict_a_pending_registration(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Unauthenticated login/begin calls, more than a pool holds, while the user adds a passkey."""
    client = await auth_client(aiohttp_client, tmp_path, **ROOMY)
    authn = SoftAuthenticator(origin=f"http://localhost:{client.port}")
    await signed_up(client, authn)
    begin = await client.post("/api/auth/register/begin", json={})
    assert begin.status == 200, await begin.text()
    options = (await begin.json())["options"]
    async with ClientSession() as stranger:  # no cookie: an unauthenticated caller
        for _ in range(1100):
            url = f"http://127.0.0.1:{client.port}/api/auth/login/begin"
            async with stranger.post(url, json={}) as flood:
                assert flood.status == 200
    completed = await client.post(
        "/api/auth/register/complete", json={"credential": authn.create(options), "name": "2nd"}
    )
    assert completed.status == 201, await completed.text()
    # The login pool is bounded on its own: the flood did not grow memory without end.
    assert len(client.app[AUTH].challenges) <= 1024


async def test_a_registration_flood_of_one_user_keeps_its_own_pool_bounded(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """The user's own newest ceremonies push out their oldest, nobody else's login."""
    client = await auth_client(aiohttp_client, tmp_path, **ROOMY)
    authn = SoftAuthenticator(origin=f"http://localhost:{client.port}")
    await signed_up(client, authn)
    forget_cookies(client)
    login = await login_options(client)
    await signed_in_again(client, authn)
    for _ in range(50):
        assert (await client.post("/api/auth/register/begin", json={})).status == 200
    assert len(client.app[AUTH].challenges) <= 1 + 8
    forget_cookies(client)
    signed = await client.post("/api/auth/login/complete", json={"credential": authn.get(login)})
    assert signed.status == 200, await signed.text()


async def rate_limited(response: Any) -> int:
    error = await error_of(response, 429, "RATE_LIMITED")
    assert "try again" in error["message"]
    return int(response.headers["Retry-After"])


async def test_sign_in_ceremonies_are_rate_limited_per_client(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await auth_client(
        aiohttp_client, tmp_path, ceremony_rate_per_minute=4, ceremony_global_rate_per_minute=100
    )
    clock = FakeClock()
    client.app[AUTH].clock = clock
    for path in ("/api/auth/login/begin", "/api/auth/login/complete",
                 "/api/auth/register/begin", "/api/auth/register/complete"):  # fmt: skip
        # Whatever each answers, each counts against the same bucket.
        response = await client.post(path, json={})
        assert response.status != 429, path
    for path in ("/api/auth/login/begin", "/api/auth/login/complete",
                 "/api/auth/register/complete"):  # fmt: skip
        wait = await rate_limited(await client.post(path, json={}))
        assert wait == 15  # one call back every 60 / 4 seconds
    clock.now += 14
    await rate_limited(await client.post("/api/auth/login/begin", json={}))
    clock.now += 1
    assert (await client.post("/api/auth/login/begin", json={})).status == 200
    await rate_limited(await client.post("/api/auth/login/begin", json={}))
    clock.now += 60  # a whole window: the full allowance again
    for _ in range(4):
        assert (await client.post("/api/auth/login/begin", json={})).status == 200
    await rate_limited(await client.post("/api/auth/login/begin", json={}))
    # Other routes are not counted.
    assert (await client.get("/api/auth/status")).status == 200


async def test_the_global_cap_holds_every_client_together(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A second client (another loopback source address) has its own limit, not the cap's."""
    from aiohttp import TCPConnector

    client = await auth_client(
        aiohttp_client, tmp_path, ceremony_rate_per_minute=3, ceremony_global_rate_per_minute=5
    )
    client.app[AUTH].clock = FakeClock()
    url = f"http://127.0.0.1:{client.port}/api/auth/login/begin"
    for _ in range(3):
        assert (await client.post("/api/auth/login/begin", json={})).status == 200
    await rate_limited(await client.post("/api/auth/login/begin", json={}))
    connector = TCPConnector(local_addr=("127.0.0.2", 0))
    async with ClientSession(connector=connector) as other:
        for _ in range(2):  # refused calls of the first client did not use up the cap
            async with other.post(url, json={}) as response:
                assert response.status == 200
        async with other.post(url, json={}) as response:
            await rate_limited(response)  # the cap, though this client made only 2


async def test_setup_token_guesses_are_rate_limited(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await auth_client(aiohttp_client, tmp_path, setup_token_rate_per_minute=3)
    clock = FakeClock()
    client.app[AUTH].clock = clock
    for index in range(3):
        guess = {"setup_token": f"corral_setup_guess{index}"}
        await error_of(await client.post("/api/auth/register/begin", json=guess), 401,
                       "UNAUTHORIZED")  # fmt: skip
    # Over the limit even the right token waits: a 429 tells a guesser nothing.
    right = {"setup_token": setup_token(client), "username": "alice"}
    assert await rate_limited(await client.post("/api/auth/register/begin", json=right)) == 20
    clock.now += 20
    begin = await client.post("/api/auth/register/begin", json=right)
    assert begin.status == 200, await begin.text()
    # Ceremonies without a setup token are not held to its tighter limit.
    for _ in range(5):
        assert (await client.post("/api/auth/login/begin", json={})).status == 200


def test_the_openapi_document_lists_rate_limits() -> None:
    from daemon.http.openapi import openapi_document
    from daemon.http.routes import ROUTES

    document = openapi_document(ROUTES.specs)
    for path in ("/api/auth/login/begin", "/api/auth/login/complete",
                 "/api/auth/register/begin", "/api/auth/register/complete"):  # fmt: skip
        answer = document["paths"][path]["post"]["responses"]["429"]
        assert "Retry-After" in answer["headers"]
        assert "RATE_LIMITED" in answer["description"]
    assert "429" not in document["paths"]["/api/sessions"]["get"]["responses"]


# --- passkeys and signing out everywhere ------------------------------------------------


async def second_passkey(client: Any, authn: SoftAuthenticator, name: str = "phone") -> str:
    begin = await client.post("/api/auth/register/begin", json={})
    options = (await begin.json())["options"]
    completed = await client.post(
        "/api/auth/register/complete", json={"credential": authn.create(options), "name": name}
    )
    assert completed.status == 201, await completed.text()
    return str((await completed.json())["passkey"]["id"])


async def passkeys(client: Any, **request: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/auth/passkeys", **request)
    assert response.status == 200, await response.text()
    return list((await response.json())["passkeys"])


async def test_list_rename_and_delete_passkeys(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    phone = await second_passkey(client, authn)
    listed = await passkeys(client)
    assert [p["name"] for p in listed] == ["laptop", "phone"]
    assert set(listed[0]) == {"id", "name", "created_at", "last_used_at"}  # no key, no count
    assert listed[0]["id"] == b64url(authn.passkeys[0].id)
    assert all(p["last_used_at"] is None for p in listed)
    forget_cookies(client)
    options = await login_options(client)
    signed = await client.post(
        "/api/auth/login/complete",
        json={"credential": authn.get(options, passkey=authn.passkeys[1])},
    )
    assert signed.status == 200
    used = {p["name"]: p["last_used_at"] for p in await passkeys(client)}
    assert used["laptop"] is None
    assert used["phone"] is not None

    renamed = await client.patch(f"/api/auth/passkeys/{phone}", json={"name": "  old phone "})
    assert renamed.status == 200, await renamed.text()
    assert (await renamed.json())["passkey"]["name"] == "old phone"
    assert [p["name"] for p in await passkeys(client)] == ["laptop", "old phone"]
    for bad in ({}, {"name": ""}, {"name": "   "}, {"name": "x" * 129}, {"name": "a\nb"},
                {"name": "a\x00"}, {"name": "\u202eevil"}, {"name": "ok", "extra": 1}):  # fmt: skip
        response = await client.patch(f"/api/auth/passkeys/{phone}", json=bad)
        await error_of(response, 400, "INVALID_REQUEST")
    for unknown in ("AAAA", "not base64!", UNKNOWN):
        await error_of(
            await client.patch(f"/api/auth/passkeys/{unknown}", json={"name": "x"}),
            404,
            "NOT_FOUND",
        )
        await error_of(await client.delete(f"/api/auth/passkeys/{unknown}"), 404, "NOT_FOUND")

    deleted = await client.delete(f"/api/auth/passkeys/{phone}")
    assert deleted.status == 204, await deleted.text()
    assert [p["name"] for p in await passkeys(client)] == ["laptop"]
    # A deleted passkey signs in no more.
    forget_cookies(client)
    options = await login_options(client)
    refused = await client.post(
        "/api/auth/login/complete",
        json={"credential": authn.get(options, passkey=authn.passkeys[1])},
    )
    error = await error_of(refused, 401, "UNAUTHORIZED")
    assert error["message"] == "unknown passkey"


async def test_the_last_passkey_cannot_be_deleted(client: Any, authn: SoftAuthenticator) -> None:
    await signed_up(client, authn)
    only = b64url(authn.passkeys[0].id)
    error = await error_of(await client.delete(f"/api/auth/passkeys/{only}"), 409, "CONFLICT")
    assert "last passkey" in error["message"]
    assert len(await passkeys(client)) == 1
    forget_cookies(client)
    await signed_in_again(client, authn)


async def test_deleting_a_passkey_signs_out_every_other_browser(
    client: Any, authn: SoftAuthenticator
) -> None:
    """A lost phone's passkey is deleted: a browser the thief signed in with it is out too."""
    await signed_up(client, authn)
    phone = await second_passkey(client, authn)
    mine = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    forget_cookies(client)
    options = await login_options(client)
    thief = await client.post(
        "/api/auth/login/complete",
        json={"credential": authn.get(options, passkey=authn.passkeys[1])},
    )
    theirs = thief.cookies[COOKIE].value
    forget_cookies(client)
    client.session.cookie_jar.update_cookies({COOKIE: mine})
    secret = (await new_token(client))["secret"]
    assert (await client.delete(f"/api/auth/passkeys/{phone}")).status == 204
    assert (await client.get("/api/sessions")).status == 200  # the browser that deleted it
    forget_cookies(client)
    client.session.cookie_jar.update_cookies({COOKIE: theirs})
    await error_of(await client.get("/api/sessions"), 401, "UNAUTHORIZED")
    forget_cookies(client)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/sessions", headers=bearer)).status == 200  # tokens stay


async def test_sign_out_everywhere_ends_every_browser_session_and_keeps_tokens(
    client: Any, authn: SoftAuthenticator
) -> None:
    await signed_up(client, authn)
    secret = (await new_token(client))["secret"]
    cookies = [client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value]
    for _ in range(2):  # two more browsers
        forget_cookies(client)
        cookies.append((await login(client, authn)).cookies[COOKIE].value)
    answer = await client.post("/api/auth/logout-all")
    assert answer.status == 200, await answer.text()
    assert (await answer.json()) == {"signed_out": 3}
    assert answer.cookies[COOKIE].value == ""
    for cookie in cookies:
        forget_cookies(client)
        client.session.cookie_jar.update_cookies({COOKIE: cookie})
        await error_of(await client.get("/api/sessions"), 401, "UNAUTHORIZED")
    forget_cookies(client)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/sessions", headers=bearer)).status == 200
    await signed_in_again(client, authn)  # the passkeys still sign in


async def test_passkeys_and_sessions_are_managed_from_a_browser_not_with_a_token(
    client: Any, authn: SoftAuthenticator
) -> None:
    """A leaked token may read the list, but cannot lock the user out or sign them out."""
    await signed_up(client, authn)
    phone = await second_passkey(client, authn)
    secret = (await new_token(client))["secret"]
    forget_cookies(client)
    bearer = {"Authorization": f"Bearer {secret}"}
    assert len(await passkeys(client, headers=bearer)) == 2
    for method, path, body in (
        ("PATCH", f"/api/auth/passkeys/{phone}", {"name": "mine now"}),
        ("DELETE", f"/api/auth/passkeys/{phone}", None),
        ("POST", "/api/auth/logout-all", None),
    ):
        response = await client.request(method, path, json=body, headers=bearer)
        await error_of(response, 403, "FORBIDDEN")
    await signed_in_again(client, authn)
    assert [p["name"] for p in await passkeys(client)] == ["laptop", "phone"]


def test_rate_limit_buckets_stay_bounded_under_many_addresses() -> None:
    """A flood from many addresses forgets the idle ones first; the global cap still holds."""
    from daemon.http.ratelimit import GLOBAL, ClientLimit, RateLimiter

    clock = FakeClock()
    limit = ClientLimit(
        RateLimiter(2, clock=clock, max_keys=100), RateLimiter(1000, clock=clock, max_keys=100)
    )
    allowed = sum(limit.attempt(f"10.0.{i // 256}.{i % 256}") == 0 for i in range(5000))
    assert allowed == 1000  # the cap, however many addresses
    assert len(limit.per_client) <= 100
    assert limit.overall.wait(GLOBAL) == pytest.approx(60 / 1000)
