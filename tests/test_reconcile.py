"""Reconciliation against the real engine: events, recovery, crash loops, orphans, stalls."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.app import create_app
from daemon.core.models import AgentState
from daemon.keys import BACKENDS, MANAGER, RECONCILER, TASKS
from daemon.settings import ReconcileSettings, Settings
from tests.conftest import container_state, create_running, sweep_containers, wait_for
from tests.test_events import Events, connect

pytestmark = pytest.mark.docker

# Tiny waits so recovery happens within a test; the periodic pass stays out of the way
# unless a test asks for it.
FAST = {
    "interval_seconds": 60.0,
    "backoff_seconds": [0.1],
    "healthy_reset_seconds": 600.0,
    "reconnect_min_seconds": 0.1,
    "reconnect_max_seconds": 0.5,
    "stall_seconds": 0.0,
}

Start = Callable[..., Awaitable[Any]]


@pytest.fixture
async def daemon(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Start]:
    """Start the test daemon with reconcile settings of the test's choosing."""
    clients = []

    async def start(**reconcile: Any) -> Any:
        settings.reconcile = ReconcileSettings(**{**FAST, **reconcile})
        client = await aiohttp_client(create_app(settings))
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.app[TASKS].wait(timeout=30)
            # Closed before the sweep: a daemon still running would recover what is swept.
            await client.close()
        sweep_containers(settings.data_dir)


@pytest.fixture(scope="session")
def crash_image(busybox_image: str) -> str:
    """The busybox image whose command exits 3 at once: a container that never stays up."""
    tag = f"corral-test-crash:{busybox_image.rsplit(':', 1)[-1]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode:
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, "-"],
            input=f'FROM {busybox_image}\nCMD ["sh", "-c", "exit 3"]\n',
            text=True,
            capture_output=True,
            check=True,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    return tag


async def subscribed(client: Any) -> Events:
    events = await connect(client)
    await events.send(type="subscribe", session_id="*")
    await events.next("subscribed")
    return events


async def health_of(client: Any, session_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/sessions/{session_id}/health")
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    """Poll ``check`` until it answers something true; fail with its last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached within {timeout} s; last: {last}")


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


async def full_pass(client: Any) -> None:
    """Wait for a whole reconciliation pass that starts now: what it would plan, it has."""
    reconciler = client.app[RECONCILER]
    done = reconciler.passes
    reconciler.request_pass()
    await asyncio.wait_for(reconciler.wait_pass(done), 30)


@pytest.mark.parametrize(
    ("how", "health"), [(("kill",), "error"), (("rm", "-f"), "missing")], ids=["kill", "rm"]
)
async def test_container_killed_or_removed_is_published_then_recreated(
    daemon: Start, git_repo: Path, how: tuple[str, ...], health: str
) -> None:
    client = await daemon()
    session = await create_running(client, git_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    (worktree / "work.txt").write_text("precious\n")
    events = await subscribed(client)
    docker(*how, session["container_id"])
    # From the engine's events: the periodic pass is far away (bench/reconcile_kill_to_event.py
    # measures how soon).
    status = await events.next("session_status", session_id=sid, health=health, timeout=15)
    assert status["archived"] is False
    # Then recreated on its own, on the same worktree.
    back = await events.next("session_status", session_id=sid, health="healthy", timeout=30)
    assert back["status"] == "running"
    recreated = await wait_for(
        client,
        sid,
        lambda s: s["status"] == "running" and s["container_id"] != session["container_id"],
    )
    assert recreated["worktree_path"] == session["worktree_path"]
    assert (worktree / "work.txt").read_text() == "precious\n"
    assert container_state(recreated["container_id"])["State"]["Running"] is True
    report = await health_of(client, sid)
    assert report["health"] == "healthy"
    assert report["reconciliation"]["attempts"] == 1
    assert report["reconciliation"]["last_attempt"] is not None
    assert report["reconciliation"]["next_attempt"] is None
    expected = "exited with code 137" if health == "error" else "the container is gone"
    assert expected in report["reconciliation"]["last_error"]
    assert set(report["reconciliation"]) == {"attempts", "last_attempt", "last_error",
                                             "next_attempt"}  # fmt: skip
    # The old container is gone: every container of ours belongs to a session, once.
    listed = await client.app[BACKENDS]["docker"].list_managed(
        str(client.app[MANAGER].settings.data_dir)
    )
    assert [c.id for c in listed] == [recreated["container_id"]]


async def test_attempts_reset_after_a_healthy_while(daemon: Start, git_repo: Path) -> None:
    client = await daemon(healthy_reset_seconds=1.0, interval_seconds=0.2)
    session = await create_running(client, git_repo)
    docker("kill", session["container_id"])
    await until(lambda: _attempts(client, session["id"], 1))
    seen_healthy = time.monotonic()
    # Healthy for longer than healthy_reset_seconds: the next pass forgets the attempts.
    await until(lambda: _attempts(client, session["id"], 0))
    assert time.monotonic() - seen_healthy >= 0.8
    stored = await client.app[MANAGER].store.load_reconciliation()
    assert session["id"] not in stored


async def _attempts(client: Any, session_id: str, count: int) -> bool:
    report = await health_of(client, session_id)
    return bool(report["health"] == "healthy" and report["reconciliation"]["attempts"] == count)


async def test_clean_exit_is_the_users_stop_and_is_not_recovered(
    daemon: Start, git_repo: Path
) -> None:
    client = await daemon()
    session = await create_running(client, git_repo)
    events = await subscribed(client)
    attachment = client.app[MANAGER].consoles.get(session["id"])
    assert attachment is not None
    await attachment.write(b"exit 0\r")
    await events.next("session_status", session_id=session["id"], status="stopped")
    await full_pass(client)  # a pass sees it: nothing is planned
    assert not client.app[RECONCILER].recovery.pending(session["id"])
    report = await health_of(client, session["id"])
    assert report["health"] == "stopped"
    assert report["recommended_action"] == "start"
    assert report["reconciliation"]["attempts"] == 0
    assert container_state(session["container_id"])["State"]["ExitCode"] == 0


async def test_crash_loop_ends_after_the_attempts_with_the_reason(
    daemon: Start, git_repo: Path, crash_image: str
) -> None:
    client = await daemon(max_attempts=3)
    events = await subscribed(client)
    response = await client.post(
        "/api/sessions", json={"repo_path": str(git_repo), "prompt": "x", "image": crash_image}
    )
    assert response.status == 201
    sid = (await response.json())["session"]["id"]
    final = await events.next("session_status", session_id=sid, health="crash_loop", timeout=60)
    assert final["archived"] is False
    report = await health_of(client, sid)
    assert report["health"] == "crash_loop"
    assert report["recommended_action"] == "recreate_fresh"
    assert "recreate" in report["available_actions"]
    reconciliation = report["reconciliation"]
    assert reconciliation["attempts"] == 3
    assert reconciliation["next_attempt"] is None
    assert "crash loop" in reconciliation["last_error"]
    assert "exited with code 3" in reconciliation["last_error"]
    assert report["details"]["reason"] == reconciliation["last_error"]
    # No more restarts: the container stays the one that died last.
    container_id = (await (await client.get(f"/api/sessions/{sid}")).json())["session"][
        "container_id"
    ]
    await full_pass(client)
    assert not client.app[RECONCILER].recovery.pending(sid)
    again = (await (await client.get(f"/api/sessions/{sid}")).json())["session"]
    assert again["container_id"] == container_id
    assert again["health"] == "crash_loop"
    summary = await (await client.get("/api/health")).json()
    assert summary["counts"]["blocked"] == 1
    assert summary["status"] == "degraded"
    [entry] = summary["sessions"]
    assert entry["session_id"] == sid
    assert entry["category"] == "blocked"
    assert entry["reconciliation"]["attempts"] == 3
    # The outcome survives a restart of the daemon's memory: it is stored.
    stored = await client.app[MANAGER].store.load_reconciliation()
    assert stored[sid]["outcome"] == "crash_loop"
    # The user acting on it starts afresh.
    archived = await client.post(f"/api/sessions/{sid}/archive")
    assert archived.status == 200, await archived.text()
    report = await health_of(client, sid)
    assert report["health"] == "archived"
    assert report["reconciliation"]["attempts"] == 0
    assert sid not in await client.app[MANAGER].store.load_reconciliation()


async def test_worktree_deleted_by_hand_is_reported_not_recovered(
    daemon: Start, git_repo: Path
) -> None:
    client = await daemon(interval_seconds=0.2)
    session = await create_running(client, git_repo)
    events = await subscribed(client)
    subprocess.run(["rm", "-rf", session["worktree_path"]], check=True)
    status = await events.next(
        "session_status", session_id=session["id"], health="worktree_missing", timeout=10
    )
    assert status["status"] == "running"
    report = await health_of(client, session["id"])
    assert report["health"] == "worktree_missing"
    assert report["available_actions"] == ["recreate", "recreate_fresh", "cleanup", "delete"]
    assert report["recommended_action"] == "recreate"
    assert report["data_preservation"] == {
        "recreate": True, "recreate_fresh": False, "cleanup": False, "delete": False,
    }  # fmt: skip
    assert report["details"]["missing_worktrees"] == [session["repositories"][0]["mount_name"]]
    await full_pass(client)  # a pass comes and goes: no automatic recreate
    assert not client.app[RECONCILER].recovery.pending(session["id"])
    now = (await (await client.get(f"/api/sessions/{session['id']}")).json())["session"]
    assert now["container_id"] == session["container_id"]
    assert now["health"] == "worktree_missing"
    assert (await health_of(client, session["id"]))["reconciliation"]["attempts"] == 0
    summary = await (await client.get("/api/health")).json()
    assert summary["counts"]["blocked"] == 1


async def test_orphan_and_stray_containers_are_removed(
    daemon: Start, git_repo: Path, busybox_image: str, settings: Settings
) -> None:
    client = await daemon()
    session = await create_running(client, git_repo)
    labels = ["--label", "corral.managed=true",
              "--label", f"corral.daemon_instance={settings.data_dir}"]  # fmt: skip
    orphan = docker("run", "-d", "--network", "none", *labels,
                    "--label", f"corral.session_id={uuid.uuid4()}", busybox_image,
                    "sleep", "600").strip()  # fmt: skip
    stray = docker("create", "--network", "none", *labels, "--label",
                   f"corral.session_id={session['id']}", busybox_image).strip()  # fmt: skip
    # Another daemon's container (other data dir) is none of our business.
    foreign = docker("create", "--network", "none", "--label", "corral.managed=true",
                     "--label", f"corral.daemon_instance={settings.data_dir}-other",
                     busybox_image).strip()  # fmt: skip
    try:
        await full_pass(client)
        assert container_state(orphan) == {}
        assert container_state(stray) == {}
        assert container_state(foreign) != {}
        assert container_state(session["container_id"])["State"]["Running"] is True
        summary = await (await client.get("/api/health")).json()
        assert summary["orphans"]["removed_containers"] == 2
        assert summary["orphans"]["containers"] == []
        assert summary["counts"] == {"healthy": 1, "idle": 0, "needs_attention": 0,
                                     "blocked": 0, "total": 1}  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", orphan, stray, foreign], capture_output=True)


def git_out(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


async def test_orphan_worktrees_kept_with_work_removed_without(
    daemon: Start, git_repo: Path, settings: Settings
) -> None:
    worktrees = settings.data_dir / "worktrees"
    with_work = worktrees / "ghost" / "repo"
    clean = worktrees / "empty-ghost" / "repo"
    committed = worktrees / "committed-ghost" / "repo"
    for path, branch in ((with_work, "corral/ghost"), (clean, "corral/empty-ghost"),
                         (committed, "corral/committed-ghost")):  # fmt: skip
        git_out(git_repo, "worktree", "add", "-q", "-b", branch, str(path), "main")
    (with_work / "notes.txt").write_text("not committed anywhere\n")
    (committed / "c.txt").write_text("c\n")
    git_out(committed, "add", "c.txt")
    git_out(committed, "commit", "-qm", "only here")
    plain = worktrees / "plain" / "stuff"
    plain.mkdir(parents=True)
    (plain / "file").write_text("x\n")
    client = await daemon()
    reconciler = client.app[RECONCILER]
    await asyncio.wait_for(reconciler.wait_pass(0), 30)
    assert not clean.exists()
    assert not clean.parent.exists()
    assert git_out(git_repo, "branch", "--list", "corral/empty-ghost")  # branches stay
    assert (with_work / "notes.txt").read_text() == "not committed anywhere\n"
    assert (committed / "c.txt").exists()
    assert (plain / "file").exists()
    summary = await (await client.get("/api/health")).json()
    kept = {w["path"]: w for w in summary["orphans"]["worktrees"]}
    assert set(kept) == {str(with_work), str(committed), str(plain)}
    assert kept[str(with_work)]["uncommitted"] == 1
    assert kept[str(with_work)]["branch"] == "corral/ghost"
    assert kept[str(with_work)]["repository"] == str(git_repo)
    assert kept[str(committed)]["unique_commits"] == 1
    assert kept[str(committed)]["uncommitted"] == 0
    assert "not a git worktree" in kept[str(plain)]["reason"]
    assert summary["orphans"]["removed_worktrees"] == 1
    assert summary["status"] == "degraded"


async def test_periodic_pass_costs_the_same_engine_calls_for_1_and_20_sessions(
    daemon: Start, git_repo: Path
) -> None:
    client = await daemon()
    reconciler = client.app[RECONCILER]
    backend = client.app[BACKENDS]["docker"]

    async def calls_of_one_pass() -> int:
        # Events of the sessions just made (their start) cost one inspection each: let
        # them be looked at first, so the pass is measured alone.
        await until(lambda: _quiet(client))
        await asyncio.sleep(0.5)
        await until(lambda: _quiet(client))
        before = backend.engine_calls
        await reconciler.full_pass()
        return int(backend.engine_calls - before)

    await create_running(client, git_repo)
    one = await calls_of_one_pass()
    for batch in range(0, 19, 5):
        await asyncio.gather(*(create_running(client, git_repo) for _ in range(min(5, 19 - batch))))
    assert len(client.app[MANAGER].records) == 20
    twenty = await calls_of_one_pass()
    assert one == twenty == 1
    summary = await (await client.get("/api/health")).json()
    assert summary["counts"]["healthy"] == 20


async def _quiet(client: Any) -> bool:
    """No reconcile check and no session operation under way."""
    manager = client.app[MANAGER]
    reconciler = client.app[RECONCILER]
    return not reconciler.checks_pending() and not any(
        manager.is_busy(sid) for sid in manager.records
    )


async def test_stall_watchdog_reports_a_silent_working_agent(daemon: Start, git_repo: Path) -> None:
    client = await daemon(stall_seconds=0.3)
    session = await create_running(client, git_repo)
    sid = session["id"]
    manager = client.app[MANAGER]
    attachment = manager.consoles.get(sid)
    assert attachment is not None
    await attachment.write(b"echo ready-$((1+1))\r")
    events = await subscribed(client)
    # The agent's hooks would say so; the busybox shell has none.
    record = manager.get(sid)
    record.agent_state = AgentState.WORKING
    await manager.save(record, "agent_state")
    started = time.monotonic()
    await until(lambda: _stalled(client, sid), timeout=10)
    assert time.monotonic() - started >= 0.3
    report = await health_of(client, sid)
    assert report["health"] == "healthy"  # reported, nothing done
    status = await events.next("session_status", session_id=sid, agent_state="working")
    assert status["health"] == "healthy"
    summary = await (await client.get("/api/health")).json()
    assert summary["counts"]["needs_attention"] == 1
    assert summary["sessions"][0]["stalled_since"] is not None
    # Output again: no longer stalled, and said so.
    await attachment.write(b"echo again-$((2+2))\r")
    await until(lambda: _not_stalled(client, sid), timeout=10)
    await events.next("session_status", session_id=sid, agent_state="working")


async def _stalled(client: Any, session_id: str) -> bool:
    return "stalled_since" in (await health_of(client, session_id))["details"]


async def _not_stalled(client: Any, session_id: str) -> bool:
    return not await _stalled(client, session_id)


async def test_events_stream_outlives_the_shared_client(
    busybox_image: str, settings: Settings
) -> None:
    """A call that finds the engine gone closes the shared client; the stream is its own."""
    from backends.docker import DockerBackend

    backend = DockerBackend()
    instance = str(settings.data_dir)
    container = ""
    try:
        async with backend.events(instance) as stream:
            await backend._discard(backend._client())  # what a call losing the engine does
            labels = ["corral.managed=true", f"corral.daemon_instance={instance}",
                      "corral.session_id=s1"]  # fmt: skip
            flags = [arg for label in labels for arg in ("--label", label)]
            container = docker("create", "--network", "none", *flags, busybox_image, "true")
            container = container.strip()
            docker("start", container)
            event = await asyncio.wait_for(anext(stream), 10)
            assert (event.action, event.container_id, event.session_id) == (
                "start",
                container,
                "s1",
            )
            died = await asyncio.wait_for(anext(stream), 10)
            assert (died.action, died.exit_code) == ("die", 0)
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        await backend.close()
