"""Passkeys in real headless Chromium with its virtual authenticator, through web/login.html.

The daemon serves on a real port with auth on; the page runs at http://localhost:<port>
(a secure context, and rp_id ``localhost``). After registering with the setup token and
signing in again, the same browser context's cookie opens both WebSockets, while a second
context without it is refused everywhere. Then the UI's passkey list: rename, delete (which
signs another browser out) and "sign out everywhere". TESTING.md, "Browser", says how
Chromium is run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.keys import AUTH, TASKS
from tests import ui_helpers
from tests.test_auth import auth_settings
from tests.ui_helpers import AUTHENTICATOR, CHROMIUM, CHROMIUM_ARGS

# The browser fixtures, bound here by name for pytest.
web_dist = ui_helpers.web_dist
ui_browser = ui_helpers.ui_browser

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


async def authenticator(
    page: Any, credentials: list[dict[str, Any]] | None = None
) -> tuple[Any, str]:
    """A virtual authenticator for ``page``, holding ``credentials`` (exported elsewhere)."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    for credential in credentials or []:
        await cdp.send(
            "WebAuthn.addCredential",
            {"authenticatorId": added["authenticatorId"], "credential": credential},
        )
    return cdp, str(added["authenticatorId"])


async def another_browser(browser: Any, base: str, credentials: list[dict[str, Any]]) -> Any:
    """A second browser (its own cookies) holding a copy of a passkey, signed in with it."""
    from playwright.async_api import expect

    context = await browser.new_context(base_url=base)
    page = await context.new_page()
    await authenticator(page, credentials)
    await page.goto(f"{base}/login")
    await page.click("#login")
    await expect(page.locator("#signedin")).to_be_visible()
    return page


async def api_status(page: Any, path: str = "/api/sessions") -> int:
    status, _ = await page.evaluate(FETCH, ["GET", path, None])
    return int(status)


async def test_the_ui_lists_renames_and_deletes_passkeys_and_signs_out_everywhere(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, web_dist: Path, ui_browser: Any
) -> None:
    from playwright.async_api import expect

    ui, problems, page = await ui_helpers.local_page(
        aiohttp_server, aiohttp_client, auth_settings(tmp_path), ui_browser
    )
    app, client, base = ui.app, ui.client, ui.url
    cdp, laptop_authenticator = await authenticator(page)

    # The first passkey, with the setup token (the page gives it no name).
    await page.goto(f"{base}/")
    await page.fill("#setup-token", app[AUTH].setup_token)
    await page.fill("#username", "alice")
    await page.click("#register")
    await expect(page.locator(".connection")).to_have_text("Live")
    laptop = await cdp.send("WebAuthn.getCredentials", {"authenticatorId": laptop_authenticator})
    # A second browser signs in with a copy of that passkey (a thief's, as it turns out).
    thief = await another_browser(ui_browser, base, laptop["credentials"])
    assert await api_status(thief) == 200

    # This browser's laptop is lost: a new authenticator (the phone) adds a second passkey.
    await cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": laptop_authenticator})
    phone_cdp, phone_authenticator = await authenticator(page)
    await page.goto(f"{base}/login")
    await page.fill("#passkey-name", "phone")
    await page.click("#add-passkey")
    await expect(page.locator("#message")).to_have_text("Passkey added.")

    await page.goto(f"{base}/")
    await expect(page.locator(".connection")).to_have_text("Live")
    await page.locator(".account").get_by_role("link", name="Passkeys").click()
    await expect(page.get_by_role("heading", name="Passkeys", exact=True)).to_be_visible()
    rows = page.locator(".passkey-table tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("unnamed passkey")
    await expect(rows.nth(1)).to_contain_text("phone")
    await expect(rows.nth(1)).to_contain_text("never")  # not used to sign in yet

    await page.get_by_role("button", name="Rename unnamed passkey").click()
    await page.get_by_label("New name for unnamed passkey").fill("old laptop")
    await page.keyboard.press("Enter")
    await expect(rows.nth(0)).to_contain_text("old laptop")
    status, listed = await page.evaluate(FETCH, ["GET", "/api/auth/passkeys", None])
    assert [p["name"] for p in listed["passkeys"]] == ["old laptop", "phone"]
    await ui_helpers.shot(page, "passkeys")

    # Deleting the lost laptop's passkey signs the thief's browser out; this one stays.
    await page.get_by_role("button", name="Delete old laptop").click()
    await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("phone")
    await expect(page.get_by_role("button", name="Delete phone")).to_be_disabled()  # the last
    assert await api_status(thief) == 401
    assert await api_status(page) == 200
    await thief.context.close()

    # Sign out everywhere: another browser holding the phone's passkey, and this one.
    phone = await phone_cdp.send(
        "WebAuthn.getCredentials", {"authenticatorId": phone_authenticator}
    )
    other = await another_browser(ui_browser, base, phone["credentials"])
    status, token = await page.evaluate(FETCH, ["POST", "/api/auth/tokens", {"name": "ci"}])
    assert status == 201, token
    await page.get_by_role("button", name="Sign out everywhere").click()
    await page.get_by_role("dialog").get_by_role("button", name="Sign out everywhere").click()
    await expect(page).to_have_url(re.compile(r"/login"))
    assert await api_status(page) == 401
    assert await api_status(other) == 401
    await other.context.close()
    bearer = {"Authorization": f"Bearer {token['secret']}"}
    assert (await client.get("/api/sessions", headers=bearer)).status == 200  # tokens stay
    # The passkeys themselves still sign in (a copy counting ahead of the other copy's use).
    ahead = [{**c, "signCount": 1000} for c in phone["credentials"]]
    again = await another_browser(ui_browser, base, ahead)
    assert await api_status(again) == 200
    await again.context.close()
    assert problems.errors == [], problems.errors
    # 401: the signed-out page's own calls; 404: Chromium's /favicon.ico on the login page.
    allowed = ("status of 401 ", "status of 404 ")
    assert [c for c in problems.console if not any(a in c for a in allowed)] == []
    await page.context.close()
