"""Passkeys in real headless Chromium with its virtual authenticator, through web/login.html.

The daemon serves on a real port with auth on; the page runs at http://localhost:<port>
(a secure context, and rp_id ``localhost``). After registering with the setup token and
signing in again, the same browser context's cookie opens both WebSockets, while a second
context without it is refused everywhere. TESTING.md, "Browser", says how Chromium is run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.keys import AUTH, TASKS
from tests.test_auth import auth_settings
from tests.ui_helpers import AUTHENTICATOR, CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Chromium at /usr/bin/chromium (apt-get install chromium; "
        "scripts/setup-test-env.sh installs it)",
    ),
]

# Resolves with how a WebSocket fared: "open" (then closes it), or "refused <close code>".
OPEN_SOCKET = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onclose = (event) => resolve("refused " + event.code);
})"""
# Resolves with the first output the console socket sends: the screen's redraw.
FIRST_CONSOLE_BYTES = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => { ws.close(); resolve(typeof event.data); };
    ws.onclose = (event) => resolve("closed " + event.code);
    ws.onopen = () => ws.send(JSON.stringify({type: "resize", cols: 100, rows: 30}));
})"""
FETCH = """async ([method, path, body]) => {
    const response = await fetch(path, {method, headers: {"Content-Type": "application/json"},
                                        body: body === null ? undefined : JSON.stringify(body)});
    const text = await response.text();
    return [response.status, text ? JSON.parse(text) : null];
}"""


async def test_passkey_sign_in_in_chromium_opens_both_sockets(
    aiohttp_server: Any, tmp_path: Path, git_repo: Path
) -> None:
    from playwright.async_api import async_playwright

    app = create_app(auth_settings(tmp_path), backends={"local": LocalBackend()})
    server = await aiohttp_server(app)
    base = f"http://localhost:{server.port}"
    ws_base = f"ws://localhost:{server.port}"
    token = app[AUTH].setup_token
    assert token is not None

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context()
            page = await context.new_page()
            cdp = await context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable")
            await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})

            # Register the first passkey with the setup token: that signs the browser in.
            await page.goto(f"{base}/login")
            await page.wait_for_selector("#setup:not([hidden])")
            await page.fill("#setup-token", token)
            await page.fill("#username", "alice")
            await page.click("#register")
            await page.wait_for_selector("#signedin:not([hidden])")
            assert "alice" in ((await page.text_content("#status")) or "")
            assert app[AUTH].setup_token is None

            # Sign out, then in again twice: the virtual authenticator's count rises by 2.
            for _ in range(2):
                await page.click("#logout")
                await page.wait_for_selector("#signin:not([hidden])")
                await page.click("#login")
                await page.wait_for_selector("#signedin:not([hidden])")
            assert await page.text_content("#message") == ""
            cookies = {c["name"]: c for c in await context.cookies()}
            session_cookie = cookies["corral_session"]
            assert session_cookie["httpOnly"] is True
            assert session_cookie["sameSite"] == "Strict"
            # HttpOnly: the page's own scripts cannot read it.
            assert "corral_session" not in await page.evaluate("document.cookie")

            # The browser's cookie works for the API and both sockets.
            status, created = await page.evaluate(
                FETCH,
                ["POST", "/api/sessions",
                 {"repo_path": str(git_repo), "prompt": "hello", "backend": "local"}],
            )  # fmt: skip
            assert status == 201, created
            session_id = created["session"]["id"]
            for _ in range(200):
                status, got = await page.evaluate(
                    FETCH, ["GET", f"/api/sessions/{session_id}", None]
                )
                if got["session"]["status"] != "creating":
                    break
                await page.wait_for_timeout(50)
            assert got["session"]["status"] == "running", got
            assert await page.evaluate(OPEN_SOCKET, f"{ws_base}/ws/events") == "open"
            first = await page.evaluate(FIRST_CONSOLE_BYTES, f"{ws_base}/ws/console/{session_id}")
            assert first == "object", first  # binary terminal output arrived

            # A second context, without the cookie, is refused everywhere.
            stranger = await browser.new_context()
            other = await stranger.new_page()
            await other.goto(f"{base}/")
            assert other.url.startswith(f"{base}/login")  # sent to sign in
            for method, path in (
                ("GET", "/api/sessions"),
                ("GET", f"/api/sessions/{session_id}"),
                ("GET", "/api/auth/tokens"),
                ("POST", "/api/auth/tokens"),
                ("GET", "/api/config"),
            ):
                status, body = await other.evaluate(
                    FETCH, [method, path, {"name": "x"} if method == "POST" else None]
                )
                assert status == 401, (path, body)
                assert body["error"]["code"] == "UNAUTHORIZED"
            assert await other.evaluate(OPEN_SOCKET, f"{ws_base}/ws/events") == "refused 1006"
            refused = await other.evaluate(OPEN_SOCKET, f"{ws_base}/ws/console/{session_id}")
            assert refused == "refused 1006"
            await stranger.close()

            status, _ = await page.evaluate(FETCH, ["DELETE", f"/api/sessions/{session_id}", None])
            assert status == 202
        finally:
            await browser.close()
    await app[TASKS].wait(timeout=30)
