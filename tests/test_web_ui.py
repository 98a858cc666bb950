"""The web UI in real Chromium against a real daemon, engine and git repositories.

Each test serves the app on 127.0.0.1, opens it as ``http://localhost:<port>`` and works
the page as a person would (the form, the directory browser, the terminal, the action
buttons), then checks what the page shows and what the daemon did. Screenshots of the
main screens go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from playwright.async_api import Page, expect

from daemon.keys import HUB, SETTINGS, SOCKETS
from daemon.settings import Settings
from tests import ui_helpers
from tests.conftest import create_running, make_repo, wait_for
from tests.model_server import (
    FAKE_API_KEY,
    Error,
    Hold,
    ModelServer,
    Text,
    ToolUse,
    model_server_fixture,
    point_agents_at,
)
from tests.ui_helpers import (
    AUTHENTICATOR,
    PageProblems,
    UiServer,
    eventually,
    shot,
    terminal_size,
    terminal_text,
    type_in_terminal,
    wait_for_terminal_text,
)

# The browser fixtures, bound here by name for pytest.
web_dist = ui_helpers.web_dist
ui_server = ui_helpers.ui_server
ui_browser = ui_helpers.ui_browser
ui_problems = ui_helpers.ui_problems
ui_page = ui_helpers.ui_page
__all__ = ["model_server_fixture"]  # used by name
pytestmark = [pytest.mark.browser]

# A 1x1 PNG, for the image attachment.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


async def open_page(ui_page: Page, path: str) -> None:
    """Open ``path``, recording CSP violations (index.html carries the UI's CSP in a meta tag)."""
    await ui_page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    await ui_page.goto(path)
    await expect(ui_page.locator(".connection")).to_have_text("Live")


async def assert_page_clean(
    ui_page: Page, problems: PageProblems, allow_status: tuple[int, ...] = ()
) -> None:
    """No CSP violation, no script error, no console error but the HTTP errors the test
    provoked on purpose (the browser logs every non-2xx answer)."""
    violations = await ui_page.evaluate("() => window.__csp")
    assert violations == [], f"CSP violations: {violations}"
    assert problems.errors == [], f"script errors in the page: {problems.errors}"
    unexpected = [
        text
        for text in problems.console
        if not any(f"status of {code} " in text for code in allow_status)
    ]
    assert unexpected == [], f"errors in the page's console: {unexpected}"


# --- serving -------------------------------------------------------------------------


async def test_page_and_assets_have_cache_headers(ui_server: UiServer) -> None:
    response = await ui_server.client.get("/")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-cache"
    html = await response.text()
    names = re.findall(r'/assets/(main-[A-Z0-9]+\.(?:js|css))"', html)
    assert len(names) == 2, html
    body = html.split("<body>")[1]
    assert "<script" not in body  # the one script is an external module in <head>
    assert not re.search(r"<[^>]*\son\w+\s*=", html)  # no inline event handlers
    for name in names:
        asset = await ui_server.client.get(f"/assets/{name}")
        assert asset.status == 200
        assert "immutable" in asset.headers["Cache-Control"]
    missing = await ui_server.client.get("/assets/nope.js")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "NOT_FOUND"


async def test_without_a_build_the_page_says_how_to_build(
    aiohttp_client: Any, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.app

    monkeypatch.setattr(daemon.app, "WEB_DIST", tmp_path / "no-dist")
    client = await aiohttp_client(daemon.app.create_app(settings))
    response = await client.get("/")
    assert response.status == 503
    assert "scripts/build-web.sh" in await response.text()


# --- sessions ------------------------------------------------------------------------


@pytest.mark.docker
async def test_create_a_session_through_the_form(
    ui_page: Page,
    ui_server: UiServer,
    git_repo: Path,
    tmp_path: Path,
    ui_problems: PageProblems,
) -> None:
    await open_page(ui_page, "/")
    await expect(ui_page.locator(".list-count")).to_contain_text("No sessions yet")
    await ui_page.keyboard.press("n")
    await expect(ui_page.locator("#create-title")).to_be_visible()

    # A folder that is no repository: the daemon's reason is shown in the form.
    await ui_page.get_by_label("Folder (a git repository").fill(str(tmp_path))
    await ui_page.get_by_label("Prompt").fill("Say hello")
    await ui_page.get_by_role("button", name="Create session").click()
    errors = ui_page.locator(".form-errors")
    await expect(errors).to_contain_text("The session was not created")
    await expect(errors).to_contain_text("git")
    await ui_page.get_by_label("Prompt").fill("Say hello!")
    await expect(errors).to_be_hidden()  # the form changed: the old reason goes

    # The directory browser: go to the folder holding the repository and choose it.
    await ui_page.get_by_role("button", name="Browse…").click()
    dialog = ui_page.locator("dialog.browse-dialog")
    await dialog.get_by_label("Folder", exact=True).fill(str(tmp_path))
    await dialog.get_by_role("button", name="Go").click()
    await expect(dialog.locator(".browse-entry", has_text="repo")).to_contain_text("git")
    await shot(ui_page, "create-browse")
    await dialog.get_by_role("button", name="Choose repo").click()
    await expect(ui_page.get_by_label("Folder (a git repository").first).to_have_value(
        str(git_repo)
    )

    # A second repository, mounted under /repos/<mount name>, and an image to attach.
    other = make_repo(tmp_path / "Other Repo")
    await ui_page.get_by_role("button", name="Add another repository").click()
    second = ui_page.locator(".repo-row").nth(1)
    await second.get_by_label("Folder (a git repository").fill(str(other))
    await expect(second.get_by_label("Mount name")).to_have_value("other-repo")
    await expect(second.locator("legend")).to_have_text(
        "Repository 2 (mounted at /repos/other-repo)"
    )
    await ui_page.get_by_label("Attach images").set_input_files(
        [{"name": "sketch.png", "mimeType": "image/png", "buffer": PNG}]
    )
    # Unique: container names are global to the engine, and test runs may overlap.
    name = f"from-the-form-{uuid.uuid4().hex[:6]}"
    await ui_page.get_by_label("Session name").fill(name)
    await ui_page.get_by_label("Network").select_option("none")
    await ui_page.get_by_label("Budget (US $)").fill("2.5")
    await ui_page.set_viewport_size({"width": 1280, "height": 1180})  # the whole form
    await ui_page.evaluate("() => document.getElementById('main').scrollTo(0, 0)")
    await shot(ui_page, "create-form")
    await ui_page.set_viewport_size(ui_helpers.DESKTOP)

    # The progress of the creation shows while it runs (watched from inside the page).
    await ui_page.evaluate(
        """() => { window.__progress = [];
            new MutationObserver(() => document.querySelectorAll(".progress-text").forEach(
                (e) => window.__progress.push(e.textContent))).observe(
                document.body, {subtree: true, childList: true}); }"""
    )
    await ui_page.get_by_role("button", name="Create session").click()
    await expect(ui_page.locator("#session-title")).to_have_text(name)
    header = ui_page.locator(".session-header")
    await expect(header.locator("[data-status]")).to_have_text("running", timeout=30_000)
    await expect(header.locator(".branch")).to_have_text(f"corral/{name}")
    await expect(header.locator(".repos li")).to_have_count(2)
    await expect(header.locator(".repos")).to_contain_text("/repos/other-repo")
    assert await ui_page.evaluate("() => window.__progress.length") > 0
    item = ui_page.locator(".session-item", has_text=name)
    await expect(item.locator("[data-status]")).to_have_text("running")
    await expect(item).to_contain_text(git_repo.name)
    listed = await (await ui_server.client.get("/api/sessions")).json()
    assert [s["name"] for s in listed["sessions"]] == [name]
    session = listed["sessions"][0]
    assert session["status"] == "running"
    assert [r["mount_name"] for r in session["repositories"]] == ["repo", "other-repo"]
    assert (session["egress"], session["max_cost_usd"]) == ("none", 2.5)

    # Once running, the image is uploaded into the working directory and named to the agent.
    attached = Path(session["worktree_path"], "sketch.png")
    await eventually(lambda: _exists(attached), what="the attached image in the worktree")
    assert attached.read_bytes() == PNG
    await expect(ui_page.locator(".notice")).to_contain_text("Attached 1 image(s)")
    await shot(ui_page, "session-list")
    await assert_page_clean(ui_page, ui_problems, allow_status=(400,))  # the bad folder


async def _exists(path: Path) -> bool:
    return path.exists()


@pytest.mark.docker
async def test_terminal_echo_resize_and_reload(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    session = await create_running(ui_server.client, git_repo)
    assert session["status"] == "running"
    await open_page(ui_page, f"/#/s/{session['id']}/terminal")
    await expect(ui_page.locator(".term-status")).to_have_text("Connected")
    await type_in_terminal(ui_page, "echo x-$((40+2))\n")
    await wait_for_terminal_text(ui_page, "x-42")

    # Resize the window: the fit addon sizes xterm, the PTY follows.
    before = await terminal_size(ui_page)
    await ui_page.set_viewport_size({"width": 900, "height": 600})
    cols, rows = await eventually(
        lambda: _changed_size(ui_page, before), what="xterm to fit the smaller window"
    )
    await type_in_terminal(ui_page, "stty size; echo s-$((6*7))\n")
    await wait_for_terminal_text(ui_page, "s-42")
    assert f"{rows} {cols}" in await terminal_text(ui_page)
    await shot(ui_page, "terminal")

    # A reload gets the same screen back from the daemon's replay.
    await ui_page.reload()
    await expect(ui_page.locator(".term-status")).to_have_text("Connected")
    screen = await wait_for_terminal_text(ui_page, "x-42")
    assert "s-42" in screen

    # A dropped console socket comes back by itself with the same screen, and works.
    for ws in ui_server.app[SOCKETS].all():
        await ws.close(code=1011)
    await expect(ui_page.locator(".term-status")).to_contain_text("reconnecting")
    await expect(ui_page.locator(".term-status")).to_have_text("Connected", timeout=10_000)
    await type_in_terminal(ui_page, "echo r-$((8*8))\n")
    screen = await wait_for_terminal_text(ui_page, "r-64")
    assert screen.count("x-42") == 1  # redrawn once, not appended to the old screen
    await assert_page_clean(ui_page, ui_problems)


async def _controls_end_with_resume(page: Page) -> list[str] | None:
    controls = [c for c in await page.evaluate("() => window.__controls") if c != "resize"]
    return controls if controls[:1] == ["pause"] and controls[-1:] == ["resume"] else None


async def _changed_size(ui_page: Page, before: tuple[int, int]) -> tuple[int, int] | None:
    size = await terminal_size(ui_page)
    return size if size != before else None


@pytest.mark.docker
async def test_killed_container_shows_health_and_recreate_brings_it_back(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    # A neighbour that stays well, so the list shows both states side by side.
    await create_running(ui_server.client, git_repo, backend="local", name="a-healthy-neighbour")
    session = await create_running(ui_server.client, git_repo)
    await open_page(ui_page, f"/#/s/{session['id']}/health")
    await expect(ui_page.locator(".health-state [data-health]")).to_have_text("health: healthy")

    async with aiodocker.Docker() as docker:
        await docker.containers.container(session["container_id"]).kill()

    # The list and the header get the bad news from /ws/events; the report offers actions.
    item = ui_page.locator(".session-item", has_text=session["name"])
    await expect(item.locator("[data-health]")).to_have_text("health: error", timeout=10_000)
    header = ui_page.locator(".session-header")
    await expect(header.locator("[data-health]")).to_have_text("health: error")
    await expect(ui_page.locator(".health-body")).to_contain_text("exit code")
    recreate = ui_page.locator(".action-bar [data-action=recreate]")
    await expect(recreate).to_be_visible()
    await expect(recreate).to_have_class(re.compile("primary"))  # the recommended action
    await expect(ui_page.locator(".action-list")).to_contain_text(
        "Keeps the worktree's files and the conversation."
    )
    await expect(ui_page.locator(".action-list")).to_contain_text(
        "Loses the worktree's uncommitted"
    )
    await shot(ui_page, "health")

    await recreate.click()
    await expect(header.locator("[data-status]")).to_have_text("running", timeout=30_000)
    await expect(header.locator("[data-health]")).to_have_count(0)  # healthy: no badge
    await expect(item.locator("[data-health]")).to_have_count(0)
    await expect(ui_page.locator(".health-state [data-health]")).to_have_text("health: healthy")
    fresh = await wait_for(ui_server.client, session["id"], lambda s: s["status"] == "running")
    assert fresh["container_id"] != session["container_id"]

    # The terminal works on the new container.
    await ui_page.keyboard.press("t")
    await expect(ui_page.locator(".term-status")).to_have_text("Connected")
    await type_in_terminal(ui_page, "echo back-$((50+5))\n")
    await wait_for_terminal_text(ui_page, "back-55")
    await assert_page_clean(ui_page, ui_problems)


async def test_chat_streams_and_messages_go_to_the_agent(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    """Chat events published by the daemon appear live, in order, with tool calls folded."""
    session = await create_running(ui_server.client, git_repo, backend="local")
    hub = ui_server.app[HUB]
    sid = session["id"]
    await hub.publish(
        "chat_message", sid, message={"id": "u1", "role": "user", "content": "List the files"}
    )
    await open_page(ui_page, f"/#/s/{sid}/chat")
    chat = ui_page.locator(".chat-list")
    await expect(chat.locator(".role-user")).to_contain_text("List the files")  # the history

    await hub.publish(
        "chat_message",
        sid,
        message={"id": "a1", "role": "assistant", "content": "I will look.", "model": "m-1",
                 "tokens_input": 1200, "tokens_output": 34},
    )  # fmt: skip
    await hub.publish(
        "tool_call", sid, call={"id": "c1", "name": "Bash", "input": {"command": "ls -la"}}
    )
    await expect(chat.locator(".tool-call summary")).to_contain_text("Bash")
    await expect(chat.locator(".tool-call summary")).to_contain_text("ls -la")
    await expect(chat.locator(".tool-call .tool-output")).to_contain_text("Running")
    await hub.publish(
        "tool_result", sid, result={"call_id": "c1", "output": "README.md\n", "is_error": False}
    )
    await hub.publish(
        "chat_message",
        sid,
        message={"id": "a2", "role": "assistant", "content": "There is a README.",
                 "tokens_input": 1300, "tokens_output": 8},
    )  # fmt: skip
    await expect(chat.locator(".chat-message")).to_have_count(3)
    texts = await chat.locator(".chat-item").all_inner_texts()
    assert ["List the files" in texts[0], "I will look." in texts[1]] == [True, True]
    assert ["Bash" in texts[2], "There is a README." in texts[3]] == [True, True]
    await expect(ui_page.locator(".chat-totals")).to_have_text("Tokens so far: 2,500 in, 42 out")
    details = chat.locator("details.tool-call")
    await expect(details.locator(".tool-result")).to_be_hidden()  # folded until opened
    await details.locator("summary").click()
    await expect(details.locator(".tool-input")).to_contain_text('"command": "ls -la"')
    await expect(details.locator(".tool-result")).to_have_text("README.md")
    await shot(ui_page, "chat")

    # Sending: typed into the agent's terminal, here a shell that runs it.
    await ui_page.get_by_label("Message to the agent").fill("echo sent-$((6*7))")
    await ui_page.keyboard.press("Enter")
    await expect(ui_page.locator(".composer-note")).to_contain_text("Sent")
    await ui_page.keyboard.press("Alt+2")
    await wait_for_terminal_text(ui_page, "sent-42")

    # Attach: the file goes into the working directory and its name into the message.
    await ui_page.keyboard.press("Alt+1")
    await ui_page.get_by_label("Attach", exact=True).set_input_files(
        [{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi\n"}]
    )
    await expect(ui_page.get_by_label("Message to the agent")).to_have_value(
        "(attached in the working directory: notes.txt)"
    )
    assert Path(session["worktree_path"], "notes.txt").read_bytes() == b"hi\n"
    await assert_page_clean(ui_page, ui_problems)


async def test_chat_resumes_after_the_events_socket_drops(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    """Events published while the page is cut off arrive after the reconnect, once each."""
    session = await create_running(ui_server.client, git_repo, backend="local")
    sid = session["id"]
    hub = ui_server.app[HUB]
    await open_page(ui_page, f"/#/s/{sid}/chat")
    await hub.publish("chat_message", sid, message={"id": "m0", "role": "user", "content": "m0"})
    await expect(ui_page.locator(".chat-message")).to_have_count(1)

    # Cut every events socket from the daemon's side, then publish while the page is away.
    for ws in ui_server.app[SOCKETS].all():
        await ws.close(code=1011)
    await expect(ui_page.locator(".connection")).not_to_have_text("Live")
    for n in range(1, 4):
        await hub.publish(
            "chat_message", sid, message={"id": f"m{n}", "role": "assistant", "content": f"m{n}"}
        )
    await expect(ui_page.locator(".connection")).to_have_text("Live", timeout=10_000)
    await expect(ui_page.locator(".chat-message")).to_have_count(4)
    contents = await ui_page.locator(".chat-content").all_inner_texts()
    assert contents == ["m0", "m1", "m2", "m3"]
    await assert_page_clean(ui_page, ui_problems)


@pytest.mark.docker
async def test_delete_warns_about_unsaved_work_then_forces(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    session = await create_running(ui_server.client, git_repo)
    Path(session["worktree_path"], "notes.txt").write_text("unsaved\n")
    await open_page(ui_page, f"/#/s/{session['id']}")
    await ui_page.locator(".action-bar [data-action=delete]").click()
    confirm = ui_page.get_by_role("dialog")
    await expect(confirm).to_contain_text(f"branch {session['branch_name']} is kept")
    await expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()  # the safe one
    await confirm.get_by_role("button", name="Delete").click()

    # The daemon refuses (409) and says why; the page shows the work that would be lost.
    warning = ui_page.get_by_role("dialog")
    await expect(warning).to_contain_text("This session has unsaved work")
    await expect(warning).to_contain_text("notes.txt")
    await expect(warning).to_contain_text("1 uncommitted change")
    await shot(ui_page, "delete-warning")
    await warning.get_by_role("button", name="Delete anyway").click()
    await expect(ui_page.locator(".session-item")).to_have_count(0, timeout=60_000)
    await expect(ui_page.locator(".list-count")).to_contain_text("No sessions yet")
    gone = await ui_server.client.get(f"/api/sessions/{session['id']}")
    assert gone.status == 404
    # 409: the refused delete; 404: a read of the session racing its removal.
    await assert_page_clean(ui_page, ui_problems, allow_status=(409, 404))


async def test_phone_layout_and_keyboard_shortcuts(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    first = await create_running(ui_server.client, git_repo, backend="local", name="first")
    second = await create_running(ui_server.client, git_repo, backend="local", name="second")
    listed = await (await ui_server.client.get("/api/sessions")).json()
    order = [s["name"] for s in listed["sessions"]]  # newest first; ties by id
    await open_page(ui_page, "/")
    await expect(ui_page.locator(".session-name")).to_have_text(order)
    await ui_page.keyboard.press("Tab")  # the first stop skips to the content
    await expect(ui_page.locator(".skip-link")).to_be_focused()
    await ui_page.keyboard.press("Enter")
    await expect(ui_page.locator("#main")).to_be_focused()
    assert ui_page.url.endswith("/")  # the route is untouched

    # Keyboard: j/k walk the list, t/h/c switch tabs, / filters, ? lists the shortcuts.
    await ui_page.keyboard.press("j")
    await expect(ui_page.locator("#session-title")).to_have_text(order[0])
    await ui_page.keyboard.press("j")
    await expect(ui_page.locator("#session-title")).to_have_text(order[1])
    await ui_page.keyboard.press("k")
    await expect(ui_page.locator("#session-title")).to_have_text(order[0])
    await ui_page.keyboard.press("j")
    opened = first if order[1] == "first" else second
    await ui_page.keyboard.press("h")
    await expect(ui_page.get_by_role("tab", name="Health")).to_have_attribute(
        "aria-selected", "true"
    )
    assert ui_page.url.endswith(f"#/s/{opened['id']}/health")
    await ui_page.keyboard.press("t")
    await expect(ui_page.locator(".term-status")).to_have_text("Connected")
    await ui_page.keyboard.press("Alt+1")  # leaves the terminal for the chat
    await expect(ui_page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
    await ui_page.keyboard.press("/")
    await expect(ui_page.locator("#session-filter")).to_be_focused()
    await ui_page.keyboard.type("sec")
    await expect(ui_page.locator(".session-item")).to_have_count(1)
    await ui_page.keyboard.press("Escape")  # clears the filter and leaves it
    await expect(ui_page.locator(".session-item")).to_have_count(2)
    await ui_page.keyboard.press("?")
    await expect(ui_page.get_by_role("dialog")).to_contain_text("Keyboard shortcuts")
    await ui_page.keyboard.press("Escape")
    await expect(ui_page.get_by_role("dialog")).to_have_count(0)

    # Archive hides the session from the list (unless asked); unarchive brings it back.
    await ui_page.keyboard.press("c")
    header = ui_page.locator(".session-header")
    await ui_page.locator(".action-bar [data-action=archive]").click()
    await expect(header).to_contain_text("archived")
    await expect(ui_page.locator(".session-item")).to_have_count(1)
    await ui_page.get_by_label("Show archived").check()
    await expect(ui_page.locator(".session-item")).to_have_count(2)
    await ui_page.locator(".action-bar [data-action=unarchive]").click()
    await expect(header.locator("[data-status]")).to_have_text("running", timeout=20_000)
    await expect(ui_page.locator(".action-bar [data-action=archive]")).to_be_visible()
    await ui_page.get_by_label("Show archived").uncheck()
    await expect(ui_page.locator(".session-item")).to_have_count(2)

    # A phone: the list alone, then the session alone with a way back.
    await ui_page.set_viewport_size(ui_helpers.PHONE)
    await ui_page.goto("/#/")
    await expect(ui_page.locator(".sidebar")).to_be_visible()
    await expect(ui_page.locator("main")).to_be_hidden()
    await shot(ui_page, "phone-list")
    await ui_page.locator(".session-item", has_text="second").click()
    await expect(ui_page.locator(".sidebar")).to_be_hidden()
    await expect(ui_page.locator("#session-title")).to_have_text("second")
    width = await ui_page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= ui_helpers.PHONE["width"], "the page scrolls sideways on a phone"
    await ui_page.get_by_role("tab", name="Terminal").click()
    await expect(ui_page.locator(".term-status")).to_have_text("Connected")
    await shot(ui_page, "phone-terminal")
    await ui_page.get_by_role("link", name="← Sessions").click()
    await expect(ui_page.locator(".sidebar")).to_be_visible()
    await assert_page_clean(ui_page, ui_problems)


@pytest.mark.docker
@pytest.mark.timeout(180)
async def test_real_claude_code_chat_streams_into_the_page(
    aiohttp_server: Any,
    aiohttp_client: Any,
    settings: Settings,
    git_repo: Path,
    agent_image: str,
    model_server: ModelServer,
    web_dist: Path,
    ui_browser: Any,
) -> None:
    """The real Claude Code TUI against the scripted model: approve in the page's terminal,
    watch the chat stream in, answer from the composer."""
    point_agents_at(settings, model_server)
    model_server.script(
        ToolUse("Bash", {"command": "echo hello > /workspace/out.txt", "description": "write"}),
        Text("done: the file says hello"),
        Text("second answer"),
    )
    problems = PageProblems()
    async with ui_helpers.serve(aiohttp_server, aiohttp_client, settings) as server:
        session = await create_running(
            server.client, git_repo, image=agent_image, no_plan_mode=True, prompt="write the file"
        )
        assert session["status"] == "running", session
        page = await ui_helpers.new_page(ui_browser, server, problems)
        await open_page(page, f"/#/s/{session['id']}/terminal")
        await expect(page.locator(".term-status")).to_have_text("Connected")

        # Claude asks before running Bash: the header says so, Enter in the terminal approves.
        header = page.locator(".session-header")
        await expect(header.locator("[data-agent-state]")).to_have_text(
            "agent: waiting approval", timeout=90_000
        )
        await wait_for_terminal_text(page, "proceed", timeout=30)
        await shot(page, "claude-terminal")
        # Enter until the approval is taken: a key that lands while the TUI is still
        # drawing its prompt (on a loaded machine) may be dropped by it.
        badge = header.locator("[data-agent-state]")
        for _ in range(4):
            await page.locator(".term-host .xterm-helper-textarea").focus()
            await page.keyboard.press("Enter")
            try:
                await expect(badge).not_to_have_text("agent: waiting approval", timeout=15_000)
                break
            except AssertionError:
                continue

        # The chat: the prompt, the tool call with its input and output, the answer.
        await page.keyboard.press("Alt+1")
        chat = page.locator(".chat-list")
        await expect(chat.locator(".role-user").first).to_contain_text("write the file")
        call = chat.locator("details.tool-call")
        await expect(call.locator("summary")).to_contain_text("Bash", timeout=60_000)
        await expect(call.locator("summary")).to_contain_text("echo hello > /workspace/out.txt")
        await expect(call.locator(".tool-state")).to_have_text("done", timeout=30_000)
        await expect(chat.locator(".role-assistant").last).to_contain_text(
            "done: the file says hello", timeout=30_000
        )
        assert Path(session["worktree_path"], "out.txt").read_text() == "hello\n"
        await expect(header.locator("[data-agent-state]")).to_have_text("agent: waiting input")
        await expect(page.locator(".chat-totals")).to_contain_text("Tokens so far")
        await call.locator("summary").click()
        await shot(page, "claude-chat")

        # The theme follows the system's, the terminal's colours too.
        light = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        await page.emulate_media(color_scheme="dark")
        dark = await page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert dark != light
        await shot(page, "claude-chat-dark")
        await page.keyboard.press("Alt+2")
        theme = await page.evaluate("() => window.__corral.term.options.theme.background")
        assert theme == "#0b0e12"
        await shot(page, "claude-terminal-dark")
        await page.keyboard.press("Alt+1")

        # The next turn goes from the composer and streams back.
        await page.get_by_label("Message to the agent").fill("and now?")
        await page.keyboard.press("Enter")
        await expect(chat.locator(".role-user").last).to_contain_text("and now?", timeout=60_000)
        await expect(chat.locator(".role-assistant").last).to_contain_text(
            "second answer", timeout=60_000
        )
        requests = await model_server.wait_for_requests(3, timeout=30)
        assert "and now?" in json.dumps(requests[2]["messages"])
        await assert_page_clean(page, problems)


async def test_with_sign_in_the_ui_offers_api_tokens_and_sign_out(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, web_dist: Path, ui_browser: Any
) -> None:
    """Auth on: the UI comes after the passkey page, manages API tokens and signs out."""
    from daemon.keys import AUTH
    from tests.test_auth import auth_settings

    ui, problems, page = await ui_helpers.local_page(
        aiohttp_server, aiohttp_client, auth_settings(tmp_path), ui_browser
    )
    app, client, base = ui.app, ui.client, ui.url
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})

    await page.goto(f"{base}/")
    await expect(page).to_have_url(re.compile(r"/login"))  # signed out: the passkey page
    await page.fill("#setup-token", app[AUTH].setup_token)
    await page.fill("#username", "alice")
    await page.click("#register")
    # Signed in, the passkey page sends the browser back where it was going: the UI.
    await expect(page.locator(".connection")).to_have_text("Live")

    await open_page(page, "/")
    account = page.locator(".account")
    await expect(account).to_contain_text("alice")
    await account.get_by_role("link", name="API tokens").click()
    await expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    await page.get_by_label("New token's name").fill("ci-script")
    await page.get_by_role("button", name="Create token").click()
    secret = await page.get_by_label("Token secret").input_value()
    assert secret
    await expect(page.locator(".token-table")).to_contain_text("ci-script")
    await shot(page, "api-tokens")
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/api/sessions", headers=headers)).status == 200

    await page.get_by_role("button", name="Revoke ci-script").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(page.locator(".token-table")).to_contain_text("No API tokens yet")
    assert (await client.get("/api/sessions", headers=headers)).status == 401

    await account.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login"))
    assert (await client.get("/api/sessions")).status == 401
    await assert_page_clean(page, problems, allow_status=(401,))  # after signing out


async def test_terminal_flow_control_under_a_flood(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    """A flood faster than xterm draws: the page pauses its viewer, resumes, loses nothing."""
    await ui_page.add_init_script(
        "window.__controls = []; const send = WebSocket.prototype.send;"
        " WebSocket.prototype.send = function (data) {"
        "   if (typeof data === 'string' && this.url.includes('/ws/console/'))"
        "     window.__controls.push(JSON.parse(data).type);"
        "   return send.call(this, data); };"
    )
    session = await create_running(ui_server.client, git_repo, backend="local")
    await open_page(ui_page, f"/#/s/{session['id']}/terminal")
    await expect(ui_page.locator(".term-status")).to_have_text("Connected")
    # A browser busy elsewhere: the page's thread is taken 40 ms of every 50, so xterm
    # falls behind whatever the machine's speed.
    await ui_page.evaluate(
        "() => { window.__busy = setInterval(() => { const end = performance.now() + 40;"
        " while (performance.now() < end); }, 50); }"
    )
    await type_in_terminal(ui_page, "seq 1 400000; echo flood-$((3*3))\n")
    await wait_for_terminal_text(ui_page, "flood-9", timeout=90)
    await ui_page.evaluate("() => clearInterval(window.__busy)")
    assert "400000" in await terminal_text(ui_page)  # the last line drawn, nothing dropped
    controls = [c for c in await ui_page.evaluate("() => window.__controls") if c != "resize"]
    # How far behind xterm falls depends on the machine; each pause is resumed.
    assert controls.count("pause") == controls.count("resume"), controls

    # Deterministically: more than the high-water mark handed to xterm at once (as one
    # large burst would be) pauses the viewer at once, and it is resumed once drawn.
    await ui_page.evaluate("() => { window.__controls = []; }")
    await ui_page.evaluate(
        "() => window.__corral.view.activeTerminal.write("
        " new TextEncoder().encode('burst\\r\\n'.repeat(200000)))"
    )
    await eventually(
        lambda: _controls_end_with_resume(ui_page), what="pause then resume after a burst"
    )
    await type_in_terminal(ui_page, "echo after-$((4*4))\n")  # not left paused
    await wait_for_terminal_text(ui_page, "after-16")
    await assert_page_clean(ui_page, ui_problems)


async def test_a_long_chat_loads_its_earlier_part_on_request(
    ui_page: Page,
    ui_server: UiServer,
    settings: Settings,
    git_repo: Path,
    ui_problems: PageProblems,
) -> None:
    settings.events.chat_history_limit = 10  # the session answers its newest 10 chat events
    session = await create_running(ui_server.client, git_repo, backend="local")
    for n in range(30):
        await ui_server.app[HUB].publish(
            "chat_message",
            session["id"],
            message={"id": f"m{n}", "role": "user", "content": f"m{n}"},
        )
    await open_page(ui_page, f"/#/s/{session['id']}/chat")
    messages = ui_page.locator(".chat-content")
    await expect(messages).to_have_count(10)
    await expect(messages.first).to_have_text("m20")
    await ui_page.get_by_role("button", name="Load earlier messages").click()
    await expect(messages).to_have_count(30)
    assert await messages.all_inner_texts() == [f"m{n}" for n in range(30)]
    await expect(ui_page.get_by_role("button", name="Load earlier messages")).to_be_hidden()
    await assert_page_clean(ui_page, ui_problems)


# --- name, description and tags --------------------------------------------------------


async def test_edit_name_description_and_tags(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    """The form saves what changed and the header shows it; a taken name shows the 409."""
    await create_running(ui_server.client, git_repo, backend="local", name="taken-name")
    session = await create_running(ui_server.client, git_repo, backend="local", name="mine")
    sid = session["id"]
    await open_page(ui_page, f"/#/s/{sid}/chat")
    header = ui_page.locator(".session-header")
    edit = ui_page.get_by_role("button", name="Edit details")
    await expect(edit).to_have_attribute("aria-expanded", "false")
    await edit.click()
    await expect(edit).to_have_attribute("aria-expanded", "true")
    form = ui_page.get_by_role("form", name="Edit name, description and tags")
    await expect(form.get_by_label("Name", exact=True)).to_be_focused()
    await expect(form.get_by_label("Name", exact=True)).to_have_value("mine")
    await form.get_by_label("Description").fill("Fixes the login redirect")
    await form.get_by_label("Tags").fill("auth, bug-fix, , auth")
    await form.get_by_role("button", name="Save").click()
    await expect(form).to_be_hidden()
    await expect(edit).to_be_focused()  # focus comes back where it was
    await expect(header.locator(".description")).to_have_text("Fixes the login redirect")
    await expect(header.locator(".tag")).to_have_text(["auth", "bug-fix"])
    stored = (await (await ui_server.client.get(f"/api/sessions/{sid}")).json())["session"]
    assert (stored["name"], stored["description"], stored["tags"]) == (
        "mine",
        "Fixes the login redirect",
        ["auth", "bug-fix"],
    )
    # The list's filter knows the new tags (the store got the daemon's answer).
    await ui_page.locator("#session-filter").fill("bug-fix")
    await expect(ui_page.locator(".session-item")).to_have_count(1)
    await ui_page.locator("#session-filter").fill("")

    # Another session's name: the daemon's 409 is shown and the name field is to fix.
    await edit.click()
    name = form.get_by_label("Name", exact=True)
    await name.fill("taken-name")
    await form.get_by_role("button", name="Save").click()
    errors = ui_page.locator(".meta-errors")
    await expect(errors).to_contain_text("a session named 'taken-name' already exists")
    await expect(name).to_be_focused()
    await expect(name).to_have_attribute("aria-invalid", "true")
    await expect(form).to_be_visible()  # the edit is kept to fix
    # A name the daemon refuses (400): its reason, field by field.
    await name.fill("Not A Slug")
    await expect(errors).to_be_hidden()  # the form changed: the old reason goes
    await form.get_by_role("button", name="Save").click()
    await expect(errors).to_contain_text("name")
    await name.fill("renamed")
    await form.get_by_role("button", name="Save").click()
    await expect(ui_page.locator("#session-title")).to_have_text("renamed")
    await expect(ui_page.locator(".session-item", has_text="renamed")).to_have_count(1)
    assert await ui_page.title() == "renamed · corral"

    # On a phone: the form fits the screen.
    phone = ui_helpers.PHONE
    await ui_page.set_viewport_size({"width": phone["width"], "height": phone["height"]})
    await edit.click()
    await expect(form).to_be_visible()
    width = await ui_page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= phone["width"], "the page scrolls sideways on a phone"
    await shot(ui_page, "phone-edit-details")
    await ui_page.keyboard.press("Escape")  # Escape closes the form
    await expect(form).to_be_hidden()
    await assert_page_clean(ui_page, ui_problems, allow_status=(409, 400))


async def test_regenerate_with_ai(
    ui_page: Page,
    ui_server: UiServer,
    git_repo: Path,
    ui_problems: PageProblems,
) -> None:
    """ai_metadata on: the button asks the scripted model, shows progress, then the answer;
    a model failure and the daemon's 409 (turned off) are shown; off: no button."""
    session = await create_running(ui_server.client, git_repo, backend="local", name="before")
    sid = session["id"]
    await ui_server.app[HUB].publish(
        "chat_message", sid, message={"id": "u1", "role": "user", "content": "Fix the login"}
    )
    async with ModelServer(side_request=lambda body: False) as model:
        section = ui_server.app[SETTINGS].metadata
        section.ai_metadata = True
        section.base_url = model.url
        section.api_key = FAKE_API_KEY
        hold = Hold()
        model.script(
            hold,
            Text(
                json.dumps(
                    {
                        "name": "fix-login-redirect",
                        "description": "Repairs the redirect after sign-in.",
                        "tags": ["auth", "bug"],
                    }
                )
            ),
            Error(400, "scripted refusal"),
        )
        page = ui_page
        await open_page(page, f"/#/s/{sid}/chat")
        regenerate = page.get_by_role("button", name="Regenerate with AI")
        await expect(regenerate).to_be_visible()
        await regenerate.click()
        busy = page.get_by_role("button", name="Asking the model…")
        await expect(busy).to_be_disabled()
        await expect(page.locator(".meta-status")).to_contain_text("Asking the model")
        await asyncio.wait_for(hold.reached.wait(), 10)
        await shot(page, "regenerate-metadata")
        hold.release()
        await expect(page.locator("#session-title")).to_have_text("fix-login-redirect")
        header = page.locator(".session-header")
        await expect(header.locator(".description")).to_have_text(
            "Repairs the redirect after sign-in."
        )
        await expect(header.locator(".tag")).to_have_text(["auth", "bug"])
        await expect(regenerate).to_be_enabled()
        await expect(regenerate).to_be_focused()  # back where it was once done
        await expect(page.locator(".meta-status")).to_contain_text("rewritten by the model")
        stored = (await (await ui_server.client.get(f"/api/sessions/{sid}")).json())["session"]
        assert stored["tags"] == ["auth", "bug"]
        assert "Fix the login" in json.dumps(model.log[0].body)

        # The model fails: the daemon's 500 and its reason are shown, nothing changed.
        await regenerate.click()
        errors = page.locator(".meta-errors")
        await expect(errors).to_contain_text("the metadata model")
        await expect(errors).to_contain_text("http status")
        await expect(page.locator("#session-title")).to_have_text("fix-login-redirect")

        # Turned off since the page loaded: the 409 says so and the button goes.
        section.ai_metadata = False
        await regenerate.click()
        await expect(errors).to_contain_text("AI metadata is off")
        await expect(regenerate).to_be_hidden()

        # Off from the start: a fresh page (its config says so) offers no button.
        async with page.expect_response(lambda r: r.url.endswith("/api/config")):
            await page.reload()
        await expect(page.get_by_role("button", name="Edit details")).to_be_visible()
        await expect(page.get_by_role("button", name="Regenerate with AI")).to_have_count(0)
        await assert_page_clean(page, ui_problems, allow_status=(500, 409))
