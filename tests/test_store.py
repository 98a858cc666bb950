"""The SQLite store: migrations, WAL, the operations journal and recovery after a crash."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.app import create_app
from daemon.core.models import Repository, SessionStatus
from daemon.core.session import SessionRecord
from daemon.core.store import MIGRATIONS, Store, StoreError
from daemon.keys import MANAGER, TASKS
from tests.conftest import sweep_containers, wait_for


def record(session_id: str = "s1", status: SessionStatus = SessionStatus.RUNNING) -> SessionRecord:
    now = datetime(2026, 1, 28, 12, 30, tzinfo=UTC)
    return SessionRecord(
        id=session_id,
        name=f"name-{session_id}",
        backend="docker",
        agent="claude",
        status=status,
        prompt="p",
        tags=["t"],
        created_at=now,
        updated_at=now,
        repositories=[
            Repository(path="/r", mount_name="r", worktree_path="/w", branch_name="corral/x",
                       base_branch="main", is_primary=True, subdir="a/b")
        ],
    )  # fmt: skip


async def test_fresh_store_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "corral.db")
    await store.open()
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        async with store.db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    store = Store(path)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.close()


async def test_session_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "corral.db")
    await store.open()
    original = record()
    await store.insert_session(original)
    original.description = "changed"
    await store.update_session(original, ["description"])
    await store.close()
    reopened = Store(tmp_path / "corral.db")
    await reopened.open()
    try:
        (loaded,) = await reopened.load_sessions()
        assert loaded == original
        with pytest.raises(StoreError):
            await reopened.insert_session(record())  # same id and name
    finally:
        await reopened.close()


async def _seed_interrupted(data_dir: Path, status: SessionStatus, kind: str) -> None:
    store = Store(data_dir / "corral.db")
    await store.open()
    await store.insert_session(record("cut", status))
    await store.begin_operation("cut", kind, "container")
    await store.close()


async def test_interrupted_create_becomes_failed_with_reason(
    aiohttp_client: Any, settings: Any
) -> None:
    await _seed_interrupted(settings.data_dir, SessionStatus.CREATING, "create")
    client = await aiohttp_client(create_app(settings))
    session = (await (await client.get("/api/sessions/cut")).json())["session"]
    assert session["status"] == "failed"
    assert "interrupted" in session["error_message"]
    assert "container" in session["error_message"]
    ops = await client.app[MANAGER].store.operations_for("cut")
    assert [op["state"] for op in ops] == ["interrupted"]


@pytest.mark.docker
async def test_interrupted_delete_is_finished(aiohttp_client: Any, settings: Any) -> None:
    await _seed_interrupted(settings.data_dir, SessionStatus.DELETING, "delete")
    app = create_app(settings)
    client = await aiohttp_client(app)
    await app[TASKS].wait(timeout=30)
    assert (await client.get("/api/sessions/cut")).status == 404


@pytest.mark.docker
async def test_create_is_journaled_step_by_step(
    aiohttp_client: Any, settings: Any, git_repo: Path
) -> None:
    app = create_app(settings)
    client = await aiohttp_client(app)
    try:
        response = await client.post(
            "/api/sessions", json={"repo_path": str(git_repo), "prompt": "x"}
        )
        sid = (await response.json())["session"]["id"]
        await wait_for(client, sid, lambda s: s["status"] == "running")
        await app[TASKS].wait(timeout=10)
        ops = await app[MANAGER].store.operations_for(sid)
        assert [(op["kind"], op["step"], op["state"]) for op in ops] == [
            ("create", "start", "done")
        ]
        # Steps are visible in the events table, one progress event per step, in order.
        events = await app[MANAGER].store.events_after(sid, 0, 100)
        assert [e["progress"]["step"] for e in events if e["type"] == "session_progress"] == [
            1, 2, 3, 4
        ]  # fmt: skip
    finally:
        await app[TASKS].wait(timeout=30)
        sweep_containers(settings.data_dir)
