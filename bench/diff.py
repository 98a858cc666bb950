"""A session's diff through the API against plain git, and ``session_changes`` latency.

The daemon (``corral serve``, its own process) holds one local session on a repository
whose base has 1,000 files of 50 lines; the session's branch rewrites every line of every
file in one commit: a 1,000-file, 50,000-line change (50,000 lines added, as many deleted).

* ``diff_first_page``: wall time of ``GET /api/sessions/{id}/diff`` (include=all: the
  committed work and the worktree read through the daemon's temporary index; the first
  page of 500 files with their summarised flags, and the totals of all 1,000). Baseline:
  plain ``git diff --numstat <merge-base>`` then ``git diff <merge-base>`` in the same
  worktree (the numbers and the patch of the same change), as subprocesses. 7 interleaved
  pairs after a warm-up, median. Target: ratio <= 1.5.
* ``changes_event_latency``: a ``/ws/events`` subscriber of the session; a commit made in
  the worktree (a new file); time from the end of ``git commit`` to the arrival of the
  ``session_changes`` event naming the new head. 7 commits, median (max reported).
  Baseline: what a client would do by hand after the commit, plain ``git rev-parse HEAD``
  and ``git diff --numstat <merge-base>``. Target: <= 1 s.
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
from _common import (
    api,
    bench_daemon,
    busybox_image,
    emit,
    git,
    log,
    median,
    metric,
    setup,
)

FILES = 1000
LINES = 50


def seed_base(repo: Path, files: int) -> None:
    folder = repo / "src"
    folder.mkdir()
    for i in range(files):
        body = "".join(f"file {i} line {n}: the original text\n" for n in range(LINES))
        (folder / f"f{i:04d}.txt").write_text(body)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base: files to change")


def rewrite(worktree: Path, files: int) -> None:
    for i in range(files):
        body = "".join(f"file {i} line {n}: rewritten by the agent\n" for n in range(LINES))
        (worktree / "src" / f"f{i:04d}.txt").write_text(body)
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", "rewrite every line")


async def create_local(http: aiohttp.ClientSession, base: str, repo: Path) -> dict[str, Any]:
    request = {"repo_path": str(repo), "prompt": "bench", "backend": "local"}
    status, body = await api(http, "POST", f"{base}/api/sessions", json=request)
    if status != 201:
        raise RuntimeError(f"create: {status} {body}")
    sid = body["session"]["id"]
    for _ in range(600):
        status, body = await api(http, "GET", f"{base}/api/sessions/{sid}")
        if body["session"]["status"] != "creating":
            break
        await asyncio.sleep(0.05)
    if body["session"]["status"] != "running":
        raise RuntimeError(f"session did not run: {body['session']}")
    return dict(body["session"])


async def api_diff(http: aiohttp.ClientSession, base: str, sid: str, files: int) -> float:
    t0 = time.perf_counter()
    async with http.get(f"{base}/api/sessions/{sid}/diff") as response:
        raw = await response.read()
    elapsed = time.perf_counter() - t0
    body = json.loads(raw)
    if response.status != 200 or body["totals"]["files"] != files:
        raise RuntimeError(f"diff: {response.status} {str(body)[:500]}")
    return elapsed * 1e3


def plain_git(worktree: Path, merge_base: str, files: int) -> float:
    t0 = time.perf_counter()
    numstat = subprocess.run(["git", "diff", "--numstat", merge_base], cwd=worktree,
                             capture_output=True, check=True).stdout  # fmt: skip
    patch = subprocess.run(["git", "diff", merge_base], cwd=worktree,
                           capture_output=True, check=True).stdout  # fmt: skip
    elapsed = time.perf_counter() - t0
    if numstat.count(b"\n") != files or not patch:
        raise RuntimeError("plain git diff did not see the change")
    return elapsed * 1e3


def plain_totals(worktree: Path, merge_base: str) -> float:
    """What a client would do by hand after a commit: read the head and the totals."""
    t0 = time.perf_counter()
    subprocess.run(["git", "rev-parse", "HEAD"], cwd=worktree, capture_output=True, check=True)
    subprocess.run(["git", "diff", "--numstat", merge_base], cwd=worktree,
                   capture_output=True, check=True)  # fmt: skip
    return (time.perf_counter() - t0) * 1e3


async def event_latency(
    base: str, sid: str, worktree: Path, merge_base: str, commits: int
) -> tuple[list[float], list[float]]:
    ws_url = base.replace("http://", "ws://") + "/ws/events"
    samples: list[float] = []
    plain: list[float] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "subscribe", "session_id": sid})
        for n in range(commits):
            await asyncio.sleep(0.5)  # the watcher settles; no event is pending
            (worktree / f"extra{n}.txt").write_text(f"extra {n}\n")
            await asyncio.to_thread(git, worktree, "add", f"extra{n}.txt")
            await asyncio.to_thread(git, worktree, "commit", "-q", "-m", f"extra {n}")
            done = time.perf_counter()
            head = await asyncio.to_thread(git, worktree, "rev-parse", "HEAD")
            async with asyncio.timeout(30):
                while True:
                    event = json.loads((await ws.receive()).data)
                    if event.get("type") == "session_changes" and \
                            event["heads"].get("repo") == head:  # fmt: skip
                        break
            samples.append((time.perf_counter() - done) * 1e3)
            plain.append(await asyncio.to_thread(plain_totals, worktree, merge_base))
            log.info("commit %d: session_changes after %.1f ms (plain git totals %.1f ms)",
                     n + 1, samples[-1], plain[-1])  # fmt: skip
    return samples, plain


async def measure(base: str, repo: Path, files: int, pairs: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        session = await create_local(http, base, repo)
        sid = session["id"]
        worktree = Path(session["worktree_path"])
        await asyncio.to_thread(rewrite, worktree, files)
        merge_base = git(repo, "rev-parse", "main")
        await api_diff(http, base, sid, files)  # warm-up: caches, the first index copy
        await asyncio.to_thread(plain_git, worktree, merge_base, files)
        corral: list[float] = []
        plain: list[float] = []
        for i in range(pairs):
            order = ("corral", "plain") if i % 2 == 0 else ("plain", "corral")
            for label in order:
                if label == "corral":
                    corral.append(await api_diff(http, base, sid, files))
                else:
                    plain.append(await asyncio.to_thread(plain_git, worktree, merge_base, files))
            log.info("pair %d: api %.1f ms, plain git %.1f ms", i + 1, corral[-1], plain[-1])
    latency, by_hand = await event_latency(base, sid, worktree, merge_base, pairs)
    return {
        "diff_first_page": metric(
            measured=median(corral), baseline=median(plain), unit="ms",
            target_field="ratio", target_op="<=", target=1.5, samples=pairs,
            samples_ms=[round(x, 1) for x in corral],
            baseline_samples_ms=[round(x, 1) for x in plain],
        ),
        "changes_event_latency": metric(
            measured=median(latency), baseline=median(by_hand), unit="ms",
            target_field="measured", target_op="<=", target=1000.0, samples=len(latency),
            measured_max=round(max(latency), 1),
            samples_ms=[round(x, 1) for x in latency],
            baseline_samples_ms=[round(x, 1) for x in by_hand],
        ),
    }  # fmt: skip


def main() -> None:
    args = setup(__doc__ or "")
    files = 100 if args.quick else FILES
    pairs = 2 if args.quick else 7
    load_before = os.getloadavg()[0]
    with bench_daemon("corral-bench-diff-", busybox_image()) as (daemon, repo, _root):
        seed_base(repo, files)
        metrics = asyncio.run(measure(daemon.url, repo, files, pairs))
    emit("diff", args.quick, metrics, files=files, lines=files * LINES,
         loadavg=[load_before, os.getloadavg()[0]])  # fmt: skip


if __name__ == "__main__":
    main()
