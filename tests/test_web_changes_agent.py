"""The Changes tab against a real agent's edits: Claude Code in the agent image, driven by the
scripted model (tests/model_server.py) through corral's gateway, writes a file with its
``Write`` tool and commits it with ``Bash``; the page, opened on the Changes tab before the
agent starts working, shows the file, its counts, its diff and the commit as they happen
(``session_changes``, no reload), checks the merge into the base branch and merges it.

Nothing here is mocked on the page's side: every route it calls is the daemon's own, and
the repository, the session's branch and the merge are real.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect
from pydantic import SecretStr

from daemon.settings import Settings
from tests import ui_helpers
from tests.conftest import create_running
from tests.model_server import (
    FAKE_API_KEY,
    ModelServer,
    Text,
    ToolUse,
    model_server_fixture,
)
from tests.test_console import Screen, open_console
from tests.test_credentials_e2e import AGENT_VARIABLES, subscribed
from tests.test_events import Events
from tests.test_web_ui import assert_page_clean, open_page
from tests.ui_helpers import PageProblems, shot

web_dist = ui_helpers.web_dist
ui_browser = ui_helpers.ui_browser
__all__ = ["model_server_fixture"]  # used by name
pytestmark = [pytest.mark.browser, pytest.mark.docker]

MINUS = "\u2212"  # the page writes deletions with a minus sign, as typeset
FILE = "greet.py"
CONTENT = 'def greet(name: str) -> str:\n    return f"hello {name}"\n\n\nCOUNT = 42\n'
SUBJECT = "Add the greeting"
# The agent image has no git identity of its own: the agent names one, as a user's would.
COMMIT = (
    "cd /workspace && git add -A && git -c user.name=agent -c user.email=agent@example.invalid"
    f" commit -q -m '{SUBJECT}'"
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()


async def approve(viewer: Screen, events: Events, model: ModelServer, answered: int) -> None:
    """Claude asks before each tool here (no skipped permissions): once the session says it
    waits for approval, Enter in its terminal approves, again until the model hears the
    tool's result (a key landing while the TUI still draws its prompt may be dropped)."""
    await events.next("session_status", agent_state="waiting_approval", timeout=60)
    for _ in range(6):
        await viewer.ws.send_bytes(b"\r")
        try:
            await model.wait_for_requests(answered, timeout=8)
            return
        except TimeoutError:
            continue
    raise AssertionError(f"the tool was never approved; model requests: {len(model.requests)}")


@pytest.mark.timeout(150)
async def test_a_real_agents_commit_in_the_changes_tab_then_merged(
    aiohttp_server: Any,
    aiohttp_client: Any,
    settings: Settings,
    git_repo: Path,
    agent_image: str,
    model_server: ModelServer,
    web_dist: Path,
    ui_browser: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The model only through the gateway (127.0.0.1, which no container reaches itself).
    for name in AGENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    settings.sessions.start_agent = True
    settings.docker.network_mode = "bridge"
    settings.agents.anthropic_base_url = model_server.url
    settings.agents.anthropic_api_key = SecretStr(FAKE_API_KEY)
    model_server.script(
        ToolUse("Write", {"file_path": f"/workspace/{FILE}", "content": CONTENT}),
        ToolUse("Bash", {"command": COMMIT, "description": "commit the greeting"}),
        Text("done: committed the greeting"),
    )
    problems = PageProblems()
    async with (
        asyncio.timeout(100),
        ui_helpers.serve(aiohttp_server, aiohttp_client, settings) as server,
    ):
        session = await create_running(
            server.client,
            git_repo,
            image=agent_image,
            egress="none",
            no_plan_mode=True,
            prompt="add a greeting and commit it",
        )
        assert session["status"] == "running", session
        sid = session["id"]
        base = session["base_branch"]
        events = await subscribed(server.client, sid)
        viewer = await open_console(server.client, sid, "cols=120&rows=40")

        # The tab is open before the agent has done anything.
        page = await ui_helpers.new_page(ui_browser, server, problems)
        failed: list[str] = []
        page.on(
            "response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        await open_page(page, f"/#/s/{sid}/changes")
        await page.evaluate("() => { window.__sameDocument = true; }")
        tab = page.locator(".panel-changes")
        await expect(tab.locator(".changes-summary")).to_have_text("No changes yet")

        # The agent writes the file (approved): it shows, uncommitted, with its counts.
        await approve(viewer, events, model_server, answered=2)
        link = tab.locator(f".file-link[data-path='{FILE}']")
        await expect(link.locator(".counts")).to_have_text(f"+5 {MINUS}0", timeout=20_000)
        await expect(link.locator(".file-status")).to_have_text("A")
        await expect(tab.locator(".changes-summary")).to_contain_text("1 file changed")
        await expect(tab.locator(".commit")).to_have_count(0)

        # It commits (approved): the commit is listed with its subject, the file stays.
        await approve(viewer, events, model_server, answered=3)
        commit = tab.locator(".commit")
        await expect(commit).to_have_count(1, timeout=20_000)
        await expect(commit.locator(".commit-subject")).to_have_text(SUBJECT)
        await expect(link.locator(".counts")).to_have_text(f"+5 {MINUS}0")
        branch = session["branch_name"]
        assert git(git_repo, "log", "-1", "--format=%s", branch) == SUBJECT
        # All of it live: the page never reloaded.
        assert await page.evaluate("() => window.__sameDocument === true")

        # The file's diff renders.
        await link.click()
        diff = tab.locator(".diff-render")
        await expect(diff.locator(".d2h-file-wrapper")).to_have_count(1)
        await expect(diff.locator(".d2h-code-line-ctn", has_text="def greet")).to_have_count(1)

        # The dry run says it merges cleanly into the base branch; Merge lands it.
        merge = tab.get_by_role("button", name="Merge", exact=True)
        await expect(merge).to_be_disabled()
        await tab.get_by_role("button", name="Check merge").click()
        verdict = tab.locator(".verdict")
        await expect(verdict).to_have_attribute("data-verdict", "clean")
        await expect(verdict).to_contain_text(f"Merges cleanly into {base}")
        assert git(git_repo, "ls-tree", "--name-only", base) == "README.md"  # a dry run only
        await expect(merge).to_be_enabled()
        await merge.click()
        await expect(verdict).to_have_attribute("data-verdict", "merged")
        await expect(verdict).to_contain_text("refs/corral/backup/")
        await shot(page, "changes-agent")
        assert git(git_repo, "show", f"{base}:{FILE}") + "\n" == CONTENT
        backups = git(git_repo, "for-each-ref", "--format=%(refname)", "refs/corral/backup/")
        assert backups.startswith(f"refs/corral/backup/{base}/"), backups
        # The one failed request: "no pull request yet", which the page takes as such.
        assert failed == [f"404 {server.url}/api/sessions/{sid}/pull-request"]
        await assert_page_clean(page, problems, allow_status=(404,))
        await viewer.ws.close()
        await events.ws.close()
