"""Sessions on the local backend: a host PTY, the same REST and console contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.app import create_app
from daemon.keys import MANAGER, TASKS
from tests.conftest import create_running
from tests.test_console import open_console


async def test_local_session_terminal_cwd_and_home(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local", name="here")
    assert session["status"] == "running", session
    assert session["backend"] == "local"
    viewer = await open_console(client, session["id"])
    await viewer.run("echo x-$((40+2))", "x-42")
    await viewer.run("pwd; echo pwd-done-$((1+1))", "pwd-done-2")
    assert session["worktree_path"].encode() in viewer.data
    await viewer.run("echo home=$HOME; echo home-done-$((2+2))", "home-done-4")
    assert b"/sessions/" + session["id"].encode() + b"/home" in viewer.data
    await viewer.run("stty size", "24 80")
    await viewer.ws.close()
    response = await client.delete(f"/api/sessions/{session['id']}")
    assert response.status == 202


async def test_local_sessions_stop_with_the_daemon_and_start_again(
    aiohttp_client: Any, settings: Any, git_repo: Path
) -> None:
    app = create_app(settings)
    first = await aiohttp_client(app)
    session = await create_running(first, git_repo, backend="local")
    worktree = Path(session["worktree_path"])
    (worktree / "kept.txt").write_text("kept\n")
    await app[TASKS].wait(timeout=10)
    await first.close()

    again_app = create_app(settings)
    again = await aiohttp_client(again_app)
    state = (await (await again.get(f"/api/sessions/{session['id']}")).json())["session"]
    assert state["status"] == "stopped"
    assert state["container_id"] is None
    report = await (await again.get(f"/api/sessions/{session['id']}/health")).json()
    assert report["health"] == "stopped"
    assert report["recommended_action"] == "start"
    started = await again.post(f"/api/sessions/{session['id']}/start")
    assert started.status == 200, await started.text()
    assert (await started.json())["session"]["status"] == "running"
    viewer = await open_console(again, session["id"])
    await viewer.run("cat kept.txt; echo cat-done-$((3+3))", "cat-done-6")
    assert b"kept" in viewer.data
    await viewer.ws.close()


async def test_the_session_list_is_never_served_stale(client: Any, git_repo: Path) -> None:
    """Lists and details are cached; every write of a session invalidates them, whichever
    path makes it (here one straight to the store, as a new feature's might)."""
    session = await create_running(client, git_repo, backend="local", name="fresh")
    sid = session["id"]
    listed = await (await client.get("/api/sessions")).json()
    assert [s["description"] for s in listed["sessions"]] == [""]
    assert (await client.get(f"/api/sessions/{sid}")).status == 200
    manager = client.app[MANAGER]
    record = manager.get(sid)
    record.description = "changed underneath"
    await manager.store.update_session(record, ["description"])
    listed = await (await client.get("/api/sessions")).json()
    assert [s["description"] for s in listed["sessions"]] == ["changed underneath"]
    detail = await (await client.get(f"/api/sessions/{sid}")).json()
    assert detail["session"]["description"] == "changed underneath"
    assert (await client.delete(f"/api/sessions/{sid}?force=true")).status == 202
    await client.app[TASKS].wait(timeout=30)
    assert (await (await client.get("/api/sessions")).json())["sessions"] == []
