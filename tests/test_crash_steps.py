"""SIGKILL of the daemon at every journaled step of create, delete, archive, unarchive and
recreate, then a restart: every session ends consistent, nothing is orphaned, no work lost.

The kill comes from the daemon itself (``CORRALTEST_KILL_AT``, ``tests/crash_daemon.py``) right
after the journal records the step, before its side effect (``end``: after the last side
effect, before the operation is marked done), so every gap between two side effects is hit.
After each restart, once the reconciler has had its first pass:

* no operation is left open in the journal, and no session is stuck creating or deleting;
* every container labelled with this daemon's instance is the current container of a
  listed session (at most one each): nothing orphaned;
* each session's health offers at least one action, and its recommended one (or
  unarchive) brings it back to running;
* the uncommitted file in each surviving session's worktree is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.crash_daemon import ENV as KILL_AT
from tests.test_daemon_process import Daemon, daemon_dir, poll, post_session

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

__all__ = ["daemon_dir"]  # the fixture is used by name

STEPS = {
    "create": ["record", "worktrees", "home", "container", "start", "end"],
    "delete": ["begin", "remove_container", "remove_worktrees", "forget", "end"],
    "archive": ["begin", "remove_container", "end"],
    "unarchive": ["begin", "worktrees", "container", "start", "end"],
    "recreate": ["begin", "remove_container", "worktrees", "container", "start", "end"],
}
WORK_FILE = "unsaved-work.txt"
SETTLE_SECONDS = 30.0


def crash_daemon(data_dir: Path, image: str) -> Daemon:
    daemon = Daemon(data_dir, image)
    daemon.module = "tests.crash_daemon"  # the daemon with its fault hook
    # Passes every second, so orphans left by the kill are found quickly; no automatic
    # recreate, which would be an operation of its own racing the checks.
    daemon.env.update(
        CORRAL_RECONCILE__INTERVAL_SECONDS="1",
        CORRAL_RECONCILE__AUTO_RECOVER="false",
    )
    return daemon


async def call(http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, path, **kw) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


async def act(
    http: aiohttp.ClientSession, kind: str, repo: Path, session: dict[str, Any] | None
) -> None:
    if kind == "create":
        await post_session(http, repo)
        return
    assert session is not None
    if kind == "delete":
        await call(http, "DELETE", f"/api/sessions/{session['id']}", params={"force": "true"})
    else:
        await call(http, "POST", f"/api/sessions/{session['id']}/{kind}")


async def killed_by(
    daemon: Daemon, kind: str, step: str, repo: Path, session: dict[str, Any] | None
) -> None:
    """Start the daemon armed for ``kind:step``, act, and see it die right there."""
    daemon.env[KILL_AT] = f"{kind}:{step}"
    await daemon.start()
    try:
        async with aiohttp.ClientSession(base_url=daemon.url) as http:
            # The daemon may die under the request (actions done inline) or after it.
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                await act(http, kind, repo, session)
        assert daemon.proc is not None
        code = await asyncio.to_thread(daemon.proc.wait, 60)
        assert code == -signal.SIGKILL, f"{kind}:{step} was never reached (exit {code})"
    finally:
        del daemon.env[KILL_AT]
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()


def labelled_containers(data_dir: Path) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter",
         f"label=corral.daemon_instance={data_dir}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()


def open_operations(data_dir: Path) -> int:
    with sqlite3.connect(f"file:{data_dir / 'corral.db'}?mode=ro", uri=True) as db:
        return int(
            db.execute("SELECT count(*) FROM operations WHERE state = 'running'").fetchone()[0]
        )


async def settled(http: aiohttp.ClientSession, data_dir: Path) -> list[dict[str, Any]]:
    """The sessions once the restart has settled; fails with what is still inconsistent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    while True:
        _, body = await call(http, "GET", "/api/sessions", params={"include_archived": "true"})
        sessions: list[dict[str, Any]] = body["sessions"]
        current = {s["container_id"] for s in sessions if s.get("container_id")}
        containers = await asyncio.to_thread(labelled_containers, data_dir)
        problems = {
            "busy": [s["status"] for s in sessions if s["status"] in ("creating", "deleting")],
            "orphans": [c for c in containers if c not in current],
            "open_operations": await asyncio.to_thread(open_operations, data_dir),
        }
        if not any(problems.values()):
            return sessions
        if loop.time() > deadline:
            raise AssertionError(f"not consistent after {SETTLE_SECONDS} s: {problems}")
        await asyncio.sleep(0.2)


async def restore(http: aiohttp.ClientSession, session: dict[str, Any], *, archived: bool) -> None:
    """Bring the session back to running (or archived), by the actions its health offers."""
    sid = session["id"]
    _, body = await call(http, "GET", f"/api/sessions/{sid}/health")
    offered = body["available_actions"]
    assert offered, body
    if archived:
        if body["health"] != "archived":
            status, result = await call(http, "POST", f"/api/sessions/{sid}/archive")
            assert status == 200, result
        return
    if body["health"] == "archived":
        action = "unarchive"
    elif body["health"] == "healthy":
        return
    else:
        action = body["recommended_action"] or "recreate"
    assert action in offered, body
    status, result = await call(http, "POST", f"/api/sessions/{sid}/{action}")
    assert status == 200, result
    await poll(http, sid, {"running"})


async def prepare(http: aiohttp.ClientSession, kind: str, repo: Path) -> dict[str, Any] | None:
    """The session the next kill acts on: running with unsaved work (archived to unarchive)."""
    if kind == "create":
        return None
    session = await poll(http, await post_session(http, repo), {"running"})
    if kind != "delete":
        (Path(session["worktree_path"]) / WORK_FILE).write_text("not committed\n")
        await restore(http, session, archived=kind == "unarchive")
    return session


async def run_chain(kind: str, data_dir: Path, image: str, repo: Path) -> None:
    daemon = crash_daemon(data_dir, image)
    await daemon.start()
    async with aiohttp.ClientSession(base_url=daemon.url) as http:
        session = await prepare(http, kind, repo)
    # Between steps nothing is under way, so the plain stop can be a kill too: faster.
    daemon.signal(signal.SIGKILL)
    for step in STEPS[kind]:
        await killed_by(daemon, kind, step, repo, session)

        await daemon.start()
        async with aiohttp.ClientSession(base_url=daemon.url) as http:
            sessions = await settled(http, data_dir)
            if kind in ("archive", "unarchive", "recreate"):
                for listed in sessions:
                    assert (Path(listed["worktree_path"]) / WORK_FILE).exists(), (step, listed)
            if kind == "delete":
                assert session is not None
                assert session["id"] not in {s["id"] for s in sessions}, step
                session = await prepare(http, kind, repo)
            for listed in sessions:
                await restore(http, listed, archived=kind == "unarchive")
            await settled(http, data_dir)
        daemon.signal(signal.SIGKILL)


@pytest.mark.parametrize("kind", list(STEPS))
async def test_sigkill_at_every_journaled_step(
    kind: str, daemon_dir: Path, busybox_image: str, git_repo: Path
) -> None:
    await run_chain(kind, daemon_dir, busybox_image, git_repo)
