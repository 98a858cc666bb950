"""The first run in real Chromium: the checklist of what is missing, the image-building banner.

A real daemon on a real engine with a default image that is not there, and a stand-in image
recipe (``CORRAL_AGENT_RECIPE``): one that fails at once, so the checklist names the image
and the missing credentials with their fixes; one that waits for a file the test makes, so
the banner shows the build's step, a session created meanwhile shows its progress, and the
banner goes once the image is built. The fixes shown are compared with what
``GET /api/system`` says, so the page shows the daemon's words, not its own.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from daemon.settings import Settings
from tests import ui_helpers
from tests.ui_helpers import PageProblems, UiServer, new_page, serve, shot

web_dist = ui_helpers.web_dist
ui_browser = ui_helpers.ui_browser
pytestmark = [pytest.mark.browser, pytest.mark.docker]

CHECKLIST = "Before your first session"


def recipe(folder: Path, body: str) -> Path:
    """A stand-in image recipe: ``build-default.sh TAG`` running ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "build-default.sh"
    script.write_text(f"#!/usr/bin/env bash\nset -euo pipefail\n{body}\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def missing_image() -> Iterator[str]:
    """A default image no engine has yet; removed afterwards if a test built it."""
    tag = f"corral-firstrun-ui-{uuid.uuid4().hex[:10]}:latest"
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


def first_run_settings(tmp_path: Path, image: str) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "docker": {"default_image": image, "network_mode": "none"},
            "sessions": {"git_timeout": 30, "start_agent": False},
        }
    )


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


async def system(server: UiServer) -> dict[str, Any]:
    response = await server.client.get("/api/system")
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def assert_clean(problems: PageProblems) -> None:
    assert problems.errors == [], f"script errors in the page: {problems.errors}"
    assert problems.console == [], f"errors in the page's console: {problems.console}"


async def check_lines(page: Page, server: UiServer) -> None:
    """Every check of /api/system is a line in the checklist with its state and its fix."""
    status = await system(server)
    checklist = page.get_by_role("list", name=CHECKLIST)
    await expect(checklist.get_by_role("listitem")).to_have_count(len(status["checks"]))
    for check in status["checks"]:
        line = checklist.locator(f'[data-check="{check["name"]}"]')
        await expect(line.locator(".check-summary")).to_have_text(check["summary"])
        if check["ok"]:
            await expect(line).to_have_attribute("data-state", "ok")
            await expect(line.locator(".check-mark")).to_have_text("✓")
        elif check["fix"]:
            await expect(line.locator(".fix-text")).to_have_text(check["fix"])


async def test_the_checklist_shows_each_missing_piece_with_its_fix(
    aiohttp_server: Any,
    aiohttp_client: Any,
    tmp_path: Path,
    web_dist: Path,
    ui_browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
    missing_image: str,
    no_credentials: None,
) -> None:
    failing = recipe(
        tmp_path / "recipe",
        'echo "corral-progress 1 2 the Debian base"\n'
        'echo "debootstrap: command not found" >&2\nexit 1',
    )
    monkeypatch.setenv("CORRAL_AGENT_RECIPE", str(failing))
    settings = first_run_settings(tmp_path, missing_image)
    async with serve(aiohttp_server, aiohttp_client, settings) as server:
        problems = PageProblems()
        page = await new_page(ui_browser, server, problems)
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await page.goto("/")

        checklist = page.get_by_role("list", name=CHECKLIST)
        image = checklist.get_by_role("listitem", name="Missing: Agent image")
        await expect(image).to_have_attribute("data-state", "fail")
        await expect(image.locator(".check-mark")).to_have_text("✗")
        for agent in ("Claude Code", "Codex"):
            warning = checklist.get_by_role("listitem", name=f"Warning: {agent} credentials")
            await expect(warning.locator(".check-mark")).to_have_text("!")
            await expect(warning.locator(".fix-text")).not_to_be_empty()
        engine = checklist.get_by_role("listitem", name="OK: Docker engine")
        await expect(engine.locator(".fix-text")).to_have_count(0)
        await check_lines(page, server)
        status = await system(server)
        assert not status["ready"]
        await expect(page.locator(".system-link")).to_have_attribute("data-state", "bad")
        await expect(page.locator(".system-link")).to_have_accessible_name("System: 1 problem")
        await expect(page.locator(".system-banner")).to_contain_text(
            "The agent image could not be built"
        )

        # The fix is copied whole by its button, and stays selectable text.
        fix = next(c["fix"] for c in status["checks"] if c["name"] == "image")
        await image.get_by_role("button", name="Copy the fix for Agent image").click()
        assert await page.evaluate("() => navigator.clipboard.readText()") == fix
        await expect(image.get_by_role("button", name="Copy the fix for Agent image")).to_have_text(
            "Copied"
        )
        await image.locator(".fix-text").dblclick()
        selected = await page.evaluate("() => window.getSelection().toString()")
        assert selected.strip() == fix
        await shot(page, "first-run-checklist")

        # The new-session form shows the same list above it; the System page lists it all.
        await page.keyboard.press("n")
        await expect(page.locator("#create-title")).to_be_visible()
        await expect(page.get_by_role("list", name=CHECKLIST)).to_be_visible()
        await page.locator(".system-link").click()
        await expect(page.get_by_role("heading", name="System", exact=True)).to_be_visible()
        await expect(page.get_by_role("list", name="System")).to_contain_text("Agent image")
        await expect(page.locator(".system-view .facts")).to_contain_text(missing_image)
        await assert_clean(problems)

        # A phone in the dark: the list of sessions and the checklist above it, no sideways
        # scrolling.
        phone = await ui_browser.new_context(
            viewport=ui_helpers.PHONE,  # type: ignore[arg-type]
            base_url=server.url,
            color_scheme="dark",
        )
        small = await phone.new_page()
        await small.goto("/")
        await expect(small.get_by_role("list", name=CHECKLIST)).to_be_visible()
        await expect(
            small.get_by_role("listitem", name="Missing: Agent image").locator(".fix-text")
        ).to_be_visible()
        width = await small.evaluate("() => document.documentElement.scrollWidth")
        assert width <= ui_helpers.PHONE["width"], "the page scrolls sideways on a phone"
        await shot(small, "first-run-checklist-phone-dark")
        await phone.close()


async def test_the_banner_follows_the_image_build_and_goes_when_it_is_built(
    aiohttp_server: Any,
    aiohttp_client: Any,
    tmp_path: Path,
    web_dist: Path,
    ui_browser: Browser,
    monkeypatch: pytest.MonkeyPatch,
    missing_image: str,
    busybox_image: str,
    git_repo: Path,
) -> None:
    gate = tmp_path / "go-on"
    slow = recipe(
        tmp_path / "recipe",
        'echo "corral-progress 1 2 first step"\n'
        f"while [ ! -e {gate} ]; do sleep 0.1; done\n"
        f"printf 'FROM %s\\n' {busybox_image} | DOCKER_BUILDKIT=0 docker build -q -t \"$1\" - >&2\n"
        'echo "corral-progress 2 2 done"',
    )
    monkeypatch.setenv("CORRAL_AGENT_RECIPE", str(slow))
    settings = first_run_settings(tmp_path, missing_image)
    async with serve(aiohttp_server, aiohttp_client, settings) as server:
        problems = PageProblems()
        page = await new_page(ui_browser, server, problems)
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url) if "/api/system" in r.url else None)
        await page.goto("/")

        banner = page.locator(".system-banner")
        await expect(banner).to_contain_text(
            "Building the agent image: step 1/2 — first step", timeout=30_000
        )
        await expect(banner.get_by_role("progressbar")).to_have_attribute("value", "1")
        await expect(page.locator(".system-link")).to_have_attribute("data-state", "busy")
        # Located by class: the list hides once nothing is missing, and roles skip hidden parts.
        image = page.locator('.system-slot [data-check="image"]')
        await expect(image).to_have_attribute("data-state", "busy")

        # A session created meanwhile waits in "creating" and shows its progress.
        response = await server.client.post(
            "/api/sessions", json={"repo_path": str(git_repo), "prompt": "wait for it"}
        )
        assert response.status == 201, await response.text()
        name = (await response.json())["session"]["name"]
        item = page.locator(".session-item", has_text=name)
        await expect(item.locator("[data-status]")).to_have_text("creating")
        await expect(item.locator(".progress-text")).to_contain_text("agent image")
        await shot(page, "first-run-image-banner")

        gate.touch()
        await expect(banner).to_be_hidden(timeout=60_000)
        await expect(image).to_have_attribute("data-state", "ok")
        await expect(item.locator("[data-status]")).to_have_text("running", timeout=60_000)
        assert (await system(server))["ready"]
        await expect(page.locator(".system-link")).not_to_have_attribute("data-state", "busy")

        # All is well: the page stops asking.
        seen = len(polls)
        await page.wait_for_timeout(5000)
        assert len(polls) == seen, "the page still polls /api/system with everything ready"
        await assert_clean(problems)
