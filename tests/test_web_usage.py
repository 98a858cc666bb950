"""The session view's usage and budget, and the list's cost, in Chromium: live from the
daemon's usage and session_status events, the budget raised from the form."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

import daemon.http.handlers.usage  # noqa: F401 - registers its routes before create_app
from daemon.core.access import Usage
from daemon.core.usage import Meter
from daemon.keys import HUB, MANAGER, STORE
from tests import ui_helpers
from tests.conftest import create_running
from tests.test_web_ui import assert_page_clean, open_page
from tests.ui_helpers import PageProblems, UiServer, shot

web_dist = ui_helpers.web_dist
ui_server = ui_helpers.ui_server
ui_browser = ui_helpers.ui_browser
ui_problems = ui_helpers.ui_problems
ui_page = ui_helpers.ui_page
pytestmark = [pytest.mark.browser]


async def meter_for(server: UiServer) -> Meter:
    """The app's meter (wired here while the app does not do it itself)."""
    manager = server.app[MANAGER]
    if manager.usage is None:
        manager.usage = Meter(server.app[STORE], server.app[HUB], manager, manager.settings)
        await manager.usage.load()
    return manager.usage


async def test_usage_budget_exhausted_and_raised_in_the_page(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    meter = await meter_for(ui_server)
    session = await create_running(ui_server.client, git_repo, backend="local", max_tokens=100)
    sid = session["id"]
    await open_page(ui_page, f"/#/s/{sid}/chat")
    panel = ui_page.locator(".usage-panel")
    await expect(panel.locator(".usage-summary")).to_contain_text("nothing yet")

    await meter.record(sid, "claude-sonnet-4-5", Usage(input_tokens=40, output_tokens=20))
    summary = panel.locator(".usage-summary")
    await expect(summary).to_contain_text("60 tokens of 100")
    await expect(summary).to_contain_text("1 request")
    await expect(panel.locator(".budget-exhausted")).to_have_count(0)

    # The request that reaches the budget: the agent's state says so, the panel too.
    await meter.record(sid, "claude-sonnet-4-5", Usage(input_tokens=50), error=True)
    await expect(summary).to_contain_text("110 tokens of 100")
    await expect(summary).to_contain_text("2 requests, 1 failed")
    alert = panel.locator(".budget-exhausted")
    await expect(alert).to_contain_text("session budget of 100 tokens reached (110 used)")
    await expect(ui_page.locator(".session-header [data-agent-state='error']")).to_be_visible()
    await expect(panel.get_by_label("Budget, tokens")).to_have_value("100")
    await shot(ui_page, "usage-budget-exhausted")

    # Raised from the form: the error goes, the agent may go on.
    await panel.get_by_label("Budget, tokens").fill("1000")
    await panel.get_by_role("button", name="Save budget").click()
    await expect(panel.locator(".usage-note")).to_have_text("Saved.")
    await expect(alert).to_have_count(0)
    await expect(summary).to_contain_text("110 tokens of 1,000")
    await expect(ui_page.locator(".session-header [data-agent-state='error']")).to_have_count(0)
    assert meter.refusal(sid) is None
    assert ui_server.app[MANAGER].get(sid).max_tokens == 1000

    # The list shows what each session spent.
    cost = ui_page.locator(f"[data-session-id='{sid}'] .session-cost")
    await expect(cost).to_contain_text("110 tok")
    await assert_page_clean(ui_page, ui_problems)
