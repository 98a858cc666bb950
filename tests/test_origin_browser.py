"""A page served from another local port (a dev server the agent started) cannot drive corral.

Real Chromium loads an attacker page from a second aiohttp server on 127.0.0.1 or
localhost; the page tries what an agent's ``npm run dev`` page would: a simple cross-origin
POST (no preflight), a JSON POST, a credentialed read of ``/api/config``, and both
WebSockets, typing into the console. Each is refused by the daemon (it logs the refusal),
nothing is created, nothing is typed. The same calls from the daemon's own origin work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.keys import TASKS
from tests import ui_helpers
from tests.conftest import create_running, make_repo
from tests.test_transport_limits import local_settings
from tests.ui_helpers import CHROMIUM

ui_browser = ui_helpers.ui_browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]

# The attacker's page: every way in it has, each reported as what the page could see.
ATTACK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>dev server</title>
<script>
function socket(url, typed) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (typed) ws.send(new TextEncoder().encode(typed));
      setTimeout(() => { ws.close(); resolve("open"); }, 300);
    };
    ws.onclose = (event) => resolve("refused " + event.code);
  });
}
async function attack(http, ws, repo, sessionId) {
  const out = {};
  const body = JSON.stringify({repo_path: repo, prompt: "pwned", backend: "local"});
  try {  // a "simple" request: no preflight, the browser sends it and hides the answer
    await fetch(http + "/api/sessions", {method: "POST", mode: "no-cors",
      credentials: "include", headers: {"Content-Type": "text/plain"}, body});
    out.simple_post = "sent";
  } catch (error) { out.simple_post = "blocked"; }
  try {
    const response = await fetch(http + "/api/sessions", {method: "POST",
      credentials: "include", headers: {"Content-Type": "application/json"}, body});
    out.json_post = "answered " + response.status;
  } catch (error) { out.json_post = "blocked"; }
  try {
    const response = await fetch(http + "/api/config", {credentials: "include"});
    out.config = "read " + (await response.text()).slice(0, 40);
  } catch (error) { out.config = "blocked"; }
  out.events = await socket(ws + "/ws/events", null);
  out.console = await socket(ws + "/ws/console/" + sessionId, "touch PWNED\\r");
  return out;
}
</script></head><body><h1>npm run dev</h1></body></html>
"""

OWN_ORIGIN = """async ([repo]) => {
  const response = await fetch("/api/sessions", {method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({repo_path: repo, prompt: "mine", backend: "local"})});
  const config = await fetch("/api/config");
  const opened = await new Promise((resolve) => {
    const ws = new WebSocket("ws://" + location.host + "/ws/events");
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onclose = (event) => resolve("refused " + event.code);
  });
  return [response.status, config.status, opened];
}"""

REFUSALS = {"origin_refused", "foreign_site_refused"}


async def attacker_server(aiohttp_server: Any) -> Any:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=ATTACK_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    return await aiohttp_server(app, host="127.0.0.1")


async def test_page_on_another_local_port_is_refused_everything(
    aiohttp_server: Any, aiohttp_client: Any, ui_browser: Any, tmp_path: Path
) -> None:
    app = create_app(local_settings(tmp_path), backends={"local": LocalBackend()})
    daemon = await aiohttp_server(app, host="127.0.0.1")
    client = await aiohttp_client(daemon)
    repo = make_repo(tmp_path / "repo")
    session = await create_running(client, repo, backend="local", name="victim")
    assert session["status"] == "running", session
    worktree = Path(session["worktree_path"])
    attacker = await attacker_server(aiohttp_server)
    context = await ui_browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(15_000)
    try:
        for name in ("127.0.0.1", "localhost"):
            await page.goto(f"http://{name}:{attacker.port}/")
            with capture_logs() as logs:
                seen = await page.evaluate(
                    "([h, w, r, s]) => attack(h, w, r, s)",
                    [f"http://{name}:{daemon.port}", f"ws://{name}:{daemon.port}",
                     str(repo), session["id"]],
                )  # fmt: skip
            # What the page could see: nothing it can read, no socket that opened. (The
            # simple POST goes out whatever the daemon does; its answer is hidden.)
            assert seen["json_post"] == "blocked", seen
            assert seen["config"] == "blocked", seen
            assert seen["events"].startswith("refused"), seen
            assert seen["console"].startswith("refused"), seen
            # What the daemon did: refused each request, before any handler ran.
            refused = {(e["method"], e["path"]) for e in logs if e["event"] in REFUSALS}
            console_path = f"/ws/console/{session['id']}"
            expected = {
                ("POST", "/api/sessions"),
                ("OPTIONS", "/api/sessions"),
                ("GET", "/api/config"),
                ("GET", "/ws/events"),
                ("GET", console_path),
            }
            assert expected <= refused, logs
            assert not [e for e in logs if e["event"] == "console_viewer_joined"], logs

        listed = await (await client.get("/api/sessions")).json()
        assert [s["name"] for s in listed["sessions"]] == ["victim"]
        assert not (worktree / "PWNED").exists()

        # The daemon's own origin, in the same browser, is served as before.
        await page.goto(f"http://localhost:{daemon.port}/health")
        created, config, opened = await page.evaluate(OWN_ORIGIN, [str(repo)])
        assert (created, config, opened) == (201, 200, "open")
    finally:
        await context.close()
        await app[TASKS].wait(timeout=10)
