"""The Credentials panel in real Chromium: add, check, replace and remove, secrets unseen.

A daemon on 127.0.0.1 whose providers are the scripted model server (``GET /v1/models``
answers 200, or 401 for ``BAD_KEY``); no engine is needed. The test pastes a Claude
subscription token, a bad Codex key and then a Codex ``auth.json`` into the panel of
``#/system``, checks each entry's mark, kind, masked value and source against
``GET /api/credentials``, removes the stored Claude token, and finds no secret in the page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from daemon.credentials.models import mask
from daemon.settings import Settings
from tests import ui_helpers
from tests.model_server import BAD_KEY, ModelServer, model_server_fixture
from tests.test_credentials import OAUTH, signin
from tests.ui_helpers import PageProblems, UiServer, shot

web_dist = ui_helpers.web_dist
ui_browser = ui_helpers.ui_browser
ui_server = ui_helpers.ui_server
ui_problems = ui_helpers.ui_problems
ui_page = ui_helpers.ui_page
__all__ = ["model_server_fixture"]  # the fixture is used by name
pytestmark = [pytest.mark.browser]


@pytest.fixture
def settings(
    settings: Settings,
    model_server: ModelServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The usual test settings, with the scripted model server as every provider and no
    credential from the environment or the machine's ``~/.codex``."""
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings.agents.anthropic_base_url = model_server.url
    settings.agents.openai_base_url = f"{model_server.url}/v1"
    settings.agents.chatgpt_base_url = f"{model_server.url}/v1"  # accounts/check: 404, unreachable
    settings.credentials.codex_auth_file = str(tmp_path / "no-auth.json")
    return settings


async def entries(ui: UiServer) -> dict[str, dict[str, Any]]:
    body = await (await ui.client.get("/api/credentials")).json()
    return {entry["agent"]: entry for entry in body["credentials"]}


async def paste(page: Page, agent: str, text: str) -> None:
    item = page.locator(f'.credential[data-agent="{agent}"]')
    await (
        item.get_by_role("button", name="Add…")
        .or_(item.get_by_role("button", name="Replace…"))
        .click()
    )
    await item.get_by_role("textbox").fill(text)
    await item.get_by_role("button", name="Save and check").click()


async def test_add_check_replace_and_remove_from_the_panel(
    ui_server: UiServer, ui_page: Page, ui_problems: PageProblems
) -> None:
    ui, page, problems = ui_server, ui_page, ui_problems
    await page.goto("/#/system")
    claude = page.locator('.credential[data-agent="claude"]')
    codex = page.locator('.credential[data-agent="codex"]')
    await expect(claude).to_have_attribute("data-status", "missing")
    await expect(claude.locator(".credential-message")).to_contain_text("corral login claude")
    await expect(codex).to_have_attribute("data-status", "missing")

    await paste(page, "claude", OAUTH)
    await expect(claude).to_have_attribute("data-status", "ok")
    facts = claude.locator(".credential-facts")
    await expect(facts).to_contain_text("subscription token")
    await expect(facts.locator(".masked")).to_have_text(mask(OAUTH))
    await expect(facts).to_contain_text("from stored")
    await expect(claude.get_by_role("button", name="Remove")).to_be_visible()
    assert (await entries(ui))["claude"]["status"] == "ok"

    await paste(page, "codex", BAD_KEY)
    await expect(codex).to_have_attribute("data-status", "invalid")
    await expect(codex.locator(".credential-message")).to_contain_text("401")

    auth = signin()
    await paste(page, "codex", json.dumps(auth, indent=2))
    await expect(codex.locator(".credential-facts")).to_contain_text("ChatGPT sign-in")
    await expect(codex.locator(".credential-facts")).to_contain_text("user@example.com, pro")
    await expect(codex).to_have_attribute("data-status", "unreachable")
    assert (await entries(ui))["codex"]["kind"] == "chatgpt"

    await claude.get_by_role("button", name="Check").click()
    await expect(claude.locator(".credential-message")).to_contain_text("checked")
    await shot(page, "credentials-panel")

    html = await page.content()
    for secret in (OAUTH, BAD_KEY, auth["tokens"]["access_token"], auth["tokens"]["refresh_token"]):
        assert secret not in html, "a secret left in the page"

    await claude.get_by_role("button", name="Remove").click()
    await page.get_by_role("dialog").get_by_role("button", name="Remove").click()
    await expect(claude).to_have_attribute("data-status", "missing")
    assert (await entries(ui))["claude"]["kind"] is None
    assert problems.errors == [], problems.errors
    assert problems.console == [], problems.console
