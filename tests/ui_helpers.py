"""Browser fixtures for the web UI tests: the built UI, the daemon on a real port, Chromium.

Chromium is Debian's (``/usr/bin/chromium``, TESTING.md), driven by playwright's async API
in the test's own event loop, beside the daemon under test (aiohttp's test server on
127.0.0.1). Pages open ``http://localhost:<port>``: a secure context, and an Origin the
daemon allows. Screenshots of the main screens go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from bench._chromium import CHROMIUM, CHROMIUM_ARGS
from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import sweep_containers

ROOT = Path(__file__).resolve().parent.parent
# Chromium's virtual authenticator (CDP WebAuthn.addVirtualAuthenticator), TESTING.md.
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built UI; the build is skipped when nothing changed since the last one."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-web.sh")], capture_output=True, text=True
    )
    assert out.returncode == 0, f"scripts/build-web.sh failed:\n{out.stderr[-3000:]}"
    return ROOT / "web" / "dist"


@dataclass
class UiServer:
    """The daemon under test, as a browser sees it."""

    app: Any
    port: int
    client: Any  # an aiohttp test client on the same app, for REST calls from the test

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"


@contextlib.asynccontextmanager
async def serve(
    aiohttp_server: Any, aiohttp_client: Any, settings: Settings
) -> AsyncIterator[UiServer]:
    """The daemon on a real port; its containers swept afterwards."""
    app = create_app(settings)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await aiohttp_client(server)
    try:
        yield UiServer(app=app, port=server.port, client=client)
    finally:
        await app[TASKS].wait(timeout=30)
        sweep_containers(settings.data_dir)


@pytest.fixture
async def ui_server(
    aiohttp_server: Any, aiohttp_client: Any, settings: Settings, web_dist: Path
) -> AsyncIterator[UiServer]:
    async with serve(aiohttp_server, aiohttp_client, settings) as server:
        yield server


@pytest.fixture
async def ui_browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class PageProblems:
    """What went wrong inside the page: script errors, console errors, CSP violations."""

    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture
async def ui_problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
async def ui_page(ui_browser: Browser, ui_server: UiServer, ui_problems: PageProblems) -> Page:
    """A desktop-sized page on the daemon under test, its errors gathered in ui_problems."""
    return await new_page(ui_browser, ui_server, ui_problems)


async def new_page(browser: Browser, server: UiServer, problems: PageProblems) -> Page:
    context = await browser.new_context(viewport=DESKTOP, base_url=server.url)  # type: ignore[arg-type]
    page = await context.new_page()
    page.set_default_timeout(15_000)

    def console(message: Any) -> None:
        if message.type == "error":
            problems.console.append(message.text)

    page.on("pageerror", lambda error: problems.errors.append(str(error)))
    page.on("console", console)
    return page


async def local_page(
    aiohttp_server: Any, aiohttp_client: Any, settings: Settings, browser: Browser
) -> tuple[UiServer, PageProblems, Page]:
    """The daemon with the local backend alone on a real port, and a fresh page for it."""
    from backends.local import LocalBackend

    app = create_app(settings, backends={"local": LocalBackend()})
    server = await aiohttp_server(app, host="127.0.0.1")
    ui = UiServer(app=app, port=server.port, client=await aiohttp_client(server))
    problems = PageProblems()
    return ui, problems, await new_page(browser, ui, problems)


async def shot(page: Page, name: str) -> Path:
    """Save a screenshot of what the page shows now as test-artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


async def terminal_text(page: Page) -> str:
    """Every line of xterm's active buffer (scrollback included), as text."""
    return str(
        await page.evaluate(
            """() => {
                const term = window.__corral.term;
                if (!term) return "";
                const buffer = term.buffer.active;
                const lines = [];
                for (let i = 0; i < buffer.length; i++) {
                    lines.push(buffer.getLine(i)?.translateToString(true) ?? "");
                }
                return lines.join("\\n");
            }"""
        )
    )


async def terminal_size(page: Page) -> tuple[int, int]:
    cols, rows = await page.evaluate("() => [window.__corral.term.cols, window.__corral.term.rows]")
    return int(cols), int(rows)


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 15, what: str = "condition"
) -> Any:
    """Poll an async check until it returns something truthy; fail with ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def wait_for_terminal_text(page: Page, text: str, timeout: float = 15) -> str:
    async def check() -> str | None:
        screen = await terminal_text(page)
        return screen if text in screen else None

    return str(await eventually(check, timeout, f"{text!r} in the terminal"))


async def type_in_terminal(page: Page, text: str) -> None:
    """Type as a person would: focus xterm's input and press the keys."""
    await page.locator(".term-host .xterm-helper-textarea").focus()
    await page.keyboard.type(text)
