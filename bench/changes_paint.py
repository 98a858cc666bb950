"""First paint of a session's Changes tab in headless Chromium, for a 1,000-file change.

The daemon (``corral serve``, its own process) holds two local sessions on one repository
whose base has 1,000 files of 50 lines (bench/diff.py's): one whose branch rewrites every
line of every file in one commit (a 1,000-file, 50,000-line change), and one with no work.

* ``changes_first_paint``: Debian's Chromium (``/usr/bin/chromium`` through playwright,
  bench/_chromium.py's flags), a fresh browser context each run (nothing cached), goes to
  ``http://localhost:<port>/#/s/<id>/changes``. Measured in the page: from the navigation's
  start (``performance.timeOrigin``) to the first frame after the file list holds the first
  page of rows, which is what the tab shows (the daemon's page of ``[changes]
  max_files_per_page`` = 500 files, with "More files (500 of 1000 shown)"), and the summary
  says 1,000 files. A MutationObserver notices the rows; a ``requestAnimationFrame`` then a
  task after it mark the frame they were painted in. Baseline: the same page's first paint
  of the empty session's Changes tab ("No changes yet"), interleaved. N runs, median.
  Target: <= 1 s. Each run also reports where the time went: when the page asked for the
  diff and when the answer had arrived (resource timing of ``GET /diff``: before it, the
  page's own start; between, the daemon), from then to the rows painted, and the longest
  task (``longtask`` entries).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from _chromium import CHROMIUM, CHROMIUM_ARGS
from _common import ROOT, bench_daemon, busybox_image, emit, log, median, metric, setup
from diff import LINES, create_local, rewrite, seed_base
from playwright.async_api import Browser, async_playwright

FILES = 1000
# Runs before any of the page's own scripts: note when the list is painted, and long tasks.
WATCH = """((want) => {
  window.__bench = { painted: null, longest: 0 };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      window.__bench.longest = Math.max(window.__bench.longest, entry.duration);
    }
  }).observe({ type: "longtask", buffered: true });
  const ready = () => {
    const summary = document.querySelector(".panel-changes .changes-summary");
    if (!summary) return false;
    if (want.rows === 0) return !!document.querySelector(".panel-changes .changes-empty");
    return summary.textContent.startsWith(want.summary) &&
      document.querySelectorAll(".panel-changes .file-link").length === want.rows;
  };
  const observer = new MutationObserver(() => {
    if (!ready()) return;
    observer.disconnect();
    requestAnimationFrame(() => setTimeout(() => {
      window.__bench.painted = performance.now();
    }, 0));
  });
  observer.observe(document, { childList: true, subtree: true, characterData: true });
})"""


async def paint(browser: Browser, url: str, sid: str, rows: int, summary: str) -> dict[str, float]:
    """One cold navigation to the session's Changes tab; times in ms from its start."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = await context.new_page()
        want = json.dumps({"rows": rows, "summary": summary})
        await page.add_init_script(f"{WATCH}({want});")
        await page.goto(f"{url}/#/s/{sid}/changes")
        await page.wait_for_function("() => window.__bench.painted !== null", timeout=60_000)
        got = await page.evaluate(
            """() => {
                const diff = performance.getEntriesByType("resource")
                    .filter((e) => e.name.includes("/diff?"));
                return {
                    painted: window.__bench.painted,
                    diff_requested: diff.length ? diff[0].startTime : -1,
                    diff_answered: diff.length ? diff[0].responseEnd : -1,
                    longest_task: window.__bench.longest,
                    rows: document.querySelectorAll(".panel-changes .file-link").length,
                };
            }"""
        )
        if got["rows"] != rows:
            raise RuntimeError(f"the tab shows {got['rows']} rows, not {rows}")
        return {key: float(value) for key, value in got.items()}
    finally:
        await context.close()


async def measure(url: str, repo: Path, files: int, runs: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        big = await create_local(http, url, repo)
        empty = await create_local(http, url, repo)
    await asyncio.to_thread(rewrite, Path(big["worktree_path"]), files)
    page_size = min(files, 500)  # [changes] max_files_per_page, the daemon's default
    summary = f"{files:,} files changed"
    page = url.replace("127.0.0.1", "localhost")  # the UI's origin, as the tests open it
    big_runs: list[dict[str, float]] = []
    empty_runs: list[dict[str, float]] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            # Warm-up: the daemon's first diff (caches, the first temporary index), Chromium.
            await paint(browser, page, big["id"], page_size, summary)
            await paint(browser, page, empty["id"], 0, "")
            for i in range(runs):
                order = ("big", "empty") if i % 2 == 0 else ("empty", "big")
                for label in order:
                    if label == "big":
                        big_runs.append(await paint(browser, page, big["id"], page_size, summary))
                    else:
                        empty_runs.append(await paint(browser, page, empty["id"], 0, ""))
                b, e = big_runs[-1], empty_runs[-1]
                log.info(
                    "run %d: %d rows painted at %.0f ms (diff asked %.0f ms, answered %.0f ms,"
                    " longest task %.0f ms); empty tab %.0f ms",
                    i + 1, page_size, b["painted"], b["diff_requested"], b["diff_answered"],
                    b["longest_task"], e["painted"],
                )  # fmt: skip
        finally:
            await browser.close()
    measured = [r["painted"] for r in big_runs]
    baseline = [r["painted"] for r in empty_runs]
    answered = [r["diff_answered"] for r in big_runs]
    requested = [r["diff_requested"] for r in big_runs]
    return {
        "changes_first_paint": metric(
            measured=median(measured), baseline=median(baseline), unit="ms",
            target_field="measured", target_op="<=", target=1000.0, samples=len(measured),
            rows_painted=page_size, files=files,
            diff_requested_ms=round(median(requested), 1),
            diff_answered_ms=round(median(answered), 1),
            empty_diff_requested_ms=round(median([r["diff_requested"] for r in empty_runs]), 1),
            answer_to_paint_ms=round(median([r["painted"] - r["diff_answered"]
                                             for r in big_runs]), 1),
            longest_task_ms=round(median([r["longest_task"] for r in big_runs]), 1),
            samples_ms=[round(x, 1) for x in measured],
            baseline_samples_ms=[round(x, 1) for x in baseline],
        ),
    }  # fmt: skip


def main() -> None:
    args = setup(__doc__ or "")
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is not installed (apt-get install chromium)")
    # The page the daemon serves is the checkout's build (skipped when nothing changed).
    subprocess.run(["bash", str(ROOT / "scripts" / "build-web.sh")], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    files = 100 if args.quick else FILES
    runs = 2 if args.quick else 7
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with bench_daemon("corral-bench-paint-", busybox_image()) as (daemon, repo, _root):
        seed_base(repo, files)
        metrics = asyncio.run(measure(daemon.url, repo, files, runs))
    emit("changes_paint", args.quick, metrics, files=files, lines=files * LINES,
         seconds=round(time.perf_counter() - started, 1),
         loadavg=[load_before, os.getloadavg()[0]])  # fmt: skip


if __name__ == "__main__":
    main()
