"""The session lifecycle end to end: real engine, real git, real SQLite, action by action."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import container_state, create_running, make_repo, wait_for

pytestmark = pytest.mark.docker


def docker_exec(container_id: str, *cmd: str) -> str:
    out = subprocess.run(
        ["docker", "exec", container_id, *cmd], capture_output=True, text=True, check=True
    )
    return out.stdout


def git_out(cwd: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


async def create_two_repository_session(
    client: Any, tmp_path: Path, **extra: Any
) -> dict[str, Any]:
    first = make_repo(tmp_path / "first")
    second = make_repo(tmp_path / "second")
    return await create_running(
        client,
        first,
        repo_path=None,
        repositories=[
            {"path": str(first), "mount_name": "first"},
            {"path": str(second), "mount_name": "second"},
        ],
        **extra,
    )


async def act(client: Any, session_id: str, action: str, status: int = 200) -> dict[str, Any]:
    response = await client.post(f"/api/sessions/{session_id}/{action}")
    body = await response.json()
    assert response.status == status, body
    return body


async def test_create_runs_container_on_its_own_worktree_and_branch(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, name="alpha")
    assert session["status"] == "running", session
    assert session["health"] == "healthy"
    assert session["branch_name"] == "corral/alpha"
    assert session["base_branch"] == "main"
    worktree = Path(session["worktree_path"])
    assert (worktree / "README.md").read_text() == "hello\n"
    assert git_out(worktree, "rev-parse", "--abbrev-ref", "HEAD") == "corral/alpha"

    state = container_state(session["container_id"])
    assert state["State"]["Running"] is True
    assert state["Name"] == "/corral-alpha"
    labels = state["Config"]["Labels"]
    assert labels["corral.session_id"] == session["id"]
    assert labels["corral.managed"] == "true"
    assert state["HostConfig"]["Init"] is True
    assert state["Config"]["Tty"] is True
    assert state["Config"]["OpenStdin"] is True
    assert state["Config"]["WorkingDir"] == "/workspace"
    # The worktree is the container's /workspace: a file written inside shows on the host.
    docker_exec(session["container_id"], "sh", "-c", "echo from-container > /workspace/inside")
    assert (worktree / "inside").read_text() == "from-container\n"

    health = await (await client.get(f"/api/sessions/{session['id']}/health")).json()
    assert health["health"] == "healthy"
    assert "archive" in health["available_actions"]
    assert health["data_preservation"]["recreate"] is True
    assert health["data_preservation"]["recreate_fresh"] is False


async def test_files_survive_archive_unarchive_recreate_and_refresh(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    (worktree / "work.txt").write_text("precious\n")

    archived = (await act(client, sid, "archive"))["session"]
    assert archived["archived"] is True
    assert archived["health"] == "archived"
    assert archived["container_id"] is None
    assert container_state(session["container_id"]) == {}
    assert (worktree / "work.txt").read_text() == "precious\n"
    # Archived sessions leave the default list, not the store.
    listed = await (await client.get("/api/sessions")).json()
    assert sid not in [s["id"] for s in listed["sessions"]]
    listed = await (await client.get("/api/sessions?include_archived=true")).json()
    assert sid in [s["id"] for s in listed["sessions"]]
    # Archived: only unarchive and delete are offered; start is refused with 409.
    refused = await act(client, sid, "start", status=409)
    assert refused["error"]["code"] == "CONFLICT"
    assert refused["error"]["details"]["available_actions"] == ["unarchive", "delete"]

    unarchived = (await act(client, sid, "unarchive"))["session"]
    assert unarchived["archived"] is False
    assert unarchived["status"] == "running"
    assert container_state(unarchived["container_id"])["State"]["Running"] is True
    assert docker_exec(unarchived["container_id"], "cat", "/workspace/work.txt") == "precious\n"

    recreated = (await act(client, sid, "recreate"))["session"]
    assert recreated["container_id"] != unarchived["container_id"]
    assert container_state(unarchived["container_id"]) == {}
    assert docker_exec(recreated["container_id"], "cat", "/workspace/work.txt") == "precious\n"

    # No registry answers here: refresh keeps the local image and recreates.
    refreshed = (await act(client, sid, "refresh"))["session"]
    assert refreshed["status"] == "running"
    assert refreshed["container_id"] != recreated["container_id"]
    assert (worktree / "work.txt").read_text() == "precious\n"


async def test_start_after_container_stopped(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    subprocess.run(["docker", "stop", "-t", "0", session["container_id"]], check=True,
                   capture_output=True)  # fmt: skip
    health = await (await client.get(f"/api/sessions/{session['id']}/health")).json()
    assert health["health"] in ("stopped", "error")
    assert "start" in health["available_actions"]
    stored = await wait_for(client, session["id"], lambda s: s["status"] == "stopped")
    assert stored["status"] == "stopped"
    started = (await act(client, session["id"], "start"))["session"]
    assert started["status"] == "running"
    assert container_state(session["container_id"])["State"]["Running"] is True


async def test_recreate_fresh_resets_worktree_and_keeps_commits(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, name="fresh")
    worktree = Path(session["worktree_path"])
    (worktree / "committed.txt").write_text("keep me\n")
    git_out(worktree, "add", "committed.txt")
    git_out(worktree, "commit", "-qm", "session work")
    commit = git_out(worktree, "rev-parse", "HEAD")
    (worktree / "scratch.txt").write_text("uncommitted\n")

    fresh = (await act(client, session["id"], "recreate-fresh"))["session"]
    assert fresh["status"] == "running"
    assert not (worktree / "scratch.txt").exists()
    assert not (worktree / "committed.txt").exists()
    assert git_out(worktree, "rev-parse", "HEAD") == git_out(git_repo, "rev-parse", "main")
    # The commit is not lost: it lives on a kept branch.
    holders = git_out(git_repo, "branch", "--contains", commit)
    assert "corral/fresh-prev-" in holders


async def test_git_works_inside_container_for_primary_and_secondary(
    client: Any, tmp_path: Path
) -> None:
    session = await create_two_repository_session(client, tmp_path)
    assert [r["mount_name"] for r in session["repositories"]] == ["first", "second"]
    assert [r["is_primary"] for r in session["repositories"]] == [True, False]
    # busybox has no git: check the mounts git needs instead, then run git from the host
    # image's view by reading the .git file's target through the container.
    cid = session["container_id"]
    assert docker_exec(cid, "cat", "/workspace/README.md") == "hello\n"
    assert docker_exec(cid, "cat", "/repos/second/README.md") == "hello\n"
    for mount in ("/workspace", "/repos/second"):
        gitfile = docker_exec(cid, "cat", f"{mount}/.git").strip()
        target = gitfile.removeprefix("gitdir: ")
        assert docker_exec(cid, "cat", f"{target}/HEAD").startswith("ref: refs/heads/corral/")


async def test_delete_guards_unsaved_work_and_force_keeps_branch(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, name="guarded")
    sid = session["id"]
    worktree = Path(session["worktree_path"])

    (worktree / "dirty.txt").write_text("x\n")
    refused = await client.delete(f"/api/sessions/{sid}")
    body = await refused.json()
    assert refused.status == 409, body
    assert "details" in body["error"], body
    assert body["error"]["details"]["repositories"][0]["uncommitted"] == ["?? dirty.txt"], body

    git_out(worktree, "add", "dirty.txt")
    git_out(worktree, "commit", "-qm", "unique")
    refused = await client.delete(f"/api/sessions/{sid}")
    body = await refused.json()
    assert refused.status == 409, body
    assert body["error"]["details"]["repositories"][0]["unique_commits"] == 1
    assert container_state(session["container_id"])["State"]["Running"] is True

    accepted = await client.delete(f"/api/sessions/{sid}?force=true")
    assert accepted.status == 202, await accepted.text()
    await wait_for(client, sid, lambda s: s["status"] == "gone")
    assert container_state(session["container_id"]) == {}
    assert not worktree.exists()
    assert git_out(git_repo, "branch", "--list", "corral/guarded") != ""
    assert "guarded" not in git_out(git_repo, "worktree", "list")


async def test_delete_clean_session_without_force(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    response = await client.delete(f"/api/sessions/{session['id']}")
    assert response.status == 202
    await wait_for(client, session["id"], lambda s: s["status"] == "gone")
    assert container_state(session["container_id"]) == {}
    listed = await (await client.get("/api/sessions?include_archived=true")).json()
    assert listed["total"] == 0


async def test_missing_image_fails_and_leaves_nothing(
    client: Any, git_repo: Path, settings: Any
) -> None:
    response = await client.post(
        "/api/sessions",
        json={"repo_path": str(git_repo), "prompt": "x", "image": "corral-no-such-image:404"},
    )
    assert response.status == 201
    sid = (await response.json())["session"]["id"]
    session = await wait_for(client, sid, lambda s: s["status"] != "creating")
    assert session["status"] == "failed"
    assert "corral-no-such-image" in session["error_message"]
    assert session["health"] == "error"
    assert not Path(session["worktree_path"]).exists()
    leftover = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=corral.session_id={sid}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert leftover == ""
    assert session["name"] not in git_out(git_repo, "worktree", "list")
    health = await (await client.get(f"/api/sessions/{sid}/health")).json()
    assert health["available_actions"] == ["recreate", "cleanup", "delete"]
    # Cleanup removes the failed record.
    cleaned = await client.post(f"/api/sessions/{sid}/cleanup")
    assert cleaned.status == 202
    await wait_for(client, sid, lambda s: s["status"] == "gone")


async def test_killed_container_is_reported_missing_and_recreate_restores(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo)
    subprocess.run(["docker", "rm", "-f", session["container_id"]], check=True,
                   capture_output=True)  # fmt: skip
    health = await (await client.get(f"/api/sessions/{session['id']}/health")).json()
    assert health["health"] == "missing"
    assert health["recommended_action"] == "recreate"
    refused = await act(client, session["id"], "start", status=409)
    assert refused["error"]["code"] == "CONFLICT"
    recreated = (await act(client, session["id"], "recreate"))["session"]
    assert recreated["status"] == "running"
    assert container_state(recreated["container_id"])["State"]["Running"] is True


async def test_worktree_deleted_by_hand_is_reported_and_recreate_restores_branch(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, name="lost")
    worktree = Path(session["worktree_path"])
    (worktree / "c.txt").write_text("c\n")
    git_out(worktree, "add", "c.txt")
    git_out(worktree, "commit", "-qm", "c")
    subprocess.run(["rm", "-rf", str(worktree)], check=True)
    health = await (await client.get(f"/api/sessions/{session['id']}/health")).json()
    assert health["health"] == "worktree_missing"
    assert health["details"]["missing_worktrees"] == [session["repositories"][0]["mount_name"]]
    recreated = (await act(client, session["id"], "recreate"))["session"]
    assert recreated["status"] == "running"
    assert (worktree / "c.txt").read_text() == "c\n"


async def test_concurrent_action_is_refused(client: Any, git_repo: Path) -> None:
    import asyncio

    session = await create_running(client, git_repo)
    first, second = await asyncio.gather(
        client.post(f"/api/sessions/{session['id']}/recreate"),
        client.post(f"/api/sessions/{session['id']}/recreate"),
    )
    statuses = sorted([first.status, second.status])
    assert statuses == [200, 409], statuses


async def test_an_action_started_as_creation_ends_keeps_its_hold(
    client: Any, git_repo: Path
) -> None:
    """The moment a new session shows as running a client may act on it; the create's own
    ending must not free the session under that action (two recreates then made the same
    container: 500 instead of 409)."""
    from daemon.keys import MANAGER

    manager = client.app[MANAGER]
    original = manager.lifecycle.mark_running
    held: list[str] = []

    async def running_then_acted_on(record: Any) -> None:
        await original(record)
        manager._busy.add(record.id)  # what an action the client started at once holds
        held.append(record.id)

    manager.lifecycle.mark_running = running_then_acted_on
    session = await create_running(client, git_repo)
    assert held == [session["id"]]
    assert session["id"] in manager._busy  # still the action's, not freed by the create
    refused = await client.post(f"/api/sessions/{session['id']}/recreate")
    assert refused.status == 409, await refused.text()
    manager._busy.discard(session["id"])


async def test_progress_is_published_in_order(client: Any, git_repo: Path) -> None:
    from daemon.keys import HUB

    hub = client.app[HUB]
    events: list[dict[str, Any]] = []
    unlisten = hub.listen(events.append)
    session = await create_running(client, git_repo)
    # GET shows "running" as soon as it is stored; its event follows an instant later.
    async with asyncio.timeout(10):
        while not any(
            e["type"] == "session_status" and e["session_id"] == session["id"] for e in events
        ):
            await asyncio.sleep(0.01)
    unlisten()
    mine = [e for e in events if e["session_id"] == session["id"]]
    kinds = [e["type"] for e in mine]
    assert kinds[0] == "session_created"
    assert kinds[-1] == "session_status"
    steps = [e["progress"]["step"] for e in mine if e["type"] == "session_progress"]
    assert steps == [1, 2, 3, 4]
    seqs = [e["seq"] for e in mine]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert mine[-1]["status"] == "running"


async def test_git_status_inside_agent_image_for_primary_and_secondary(
    client: Any, tmp_path: Path, agent_image: str
) -> None:
    session = await create_two_repository_session(client, tmp_path, image=agent_image)
    first = Path(session["repositories"][0]["path"])
    cid = session["container_id"]
    (Path(session["repositories"][1]["worktree_path"]) / "new.txt").write_text("n\n")
    primary = docker_exec(cid, "git", "-C", "/workspace", "status", "--porcelain", "--branch")
    assert primary.splitlines() == [f"## {session['branch_name']}"]
    secondary = docker_exec(cid, "git", "-C", "/repos/second", "status", "--porcelain", "--branch")
    assert secondary.splitlines() == [f"## {session['branch_name']}", "?? new.txt"]
    # Commits made inside land on the session branch in the user's repository.
    docker_exec(
        cid,
        "sh",
        "-c",
        "cd /workspace && echo x > x && git add x && "
        "git -c user.email=a@b.c -c user.name=agent commit -qm inside",
    )
    log = git_out(first, "log", "--format=%s", session["branch_name"])
    assert log.splitlines()[0] == "inside"
