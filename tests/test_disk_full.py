"""A full disk under the store: the write fails with a clear error, nothing half-written
shows, the store stays readable, and once space is back everything works again.

The data dir is a real 16 MiB tmpfs, filled with a ballast file until the kernel says
ENOSPC, so SQLite meets the genuine error (``database or disk is full``). Needs root (or
CAP_SYS_ADMIN) to mount; elsewhere the test is skipped with that reason.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import create_running, sweep_containers

pytestmark = pytest.mark.docker


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _write_until_error(fd: int, size: int) -> int:
    while True:
        try:
            os.write(fd, b"\0" * size)
        except OSError as exc:
            return exc.errno or 0


def fill(path: Path) -> Path:
    """Write a ballast file until the filesystem is full (large writes, then small ones)."""
    ballast = path / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (64 * 1024, 512, 1):
            assert _write_until_error(fd, size) == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


async def test_disk_full_fails_clearly_and_loses_nothing(
    aiohttp_client: Any, settings: Settings, small_disk: Path, git_repo: Path
) -> None:
    settings.data_dir = small_disk / "data"
    app = create_app(settings)
    client = await aiohttp_client(app)
    try:
        session = await create_running(client, git_repo, name="before-full")
        assert session["status"] == "running", session
        sid = session["id"]
        # An emptied WAL must grow for the next write; a WAL with room would absorb it.
        with sqlite3.connect(settings.db_path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ballast = fill(small_disk)

        response = await client.patch(
            f"/api/sessions/{sid}/metadata", json={"description": "x" * 1000}
        )
        assert response.status == 500, await response.text()
        error = (await response.json())["error"]
        assert error["code"] == "INTERNAL_ERROR"
        assert "full" in error["message"], error

        # Still readable, and what it shows is what is stored: the write did not happen.
        listed = await client.get("/api/sessions")
        assert listed.status == 200
        shown = (await client.get(f"/api/sessions/{sid}")).status
        assert shown == 200
        body = await (await client.get(f"/api/sessions/{sid}")).json()
        assert body["session"]["description"] == session["description"]

        ballast.unlink()
        response = await client.patch(f"/api/sessions/{sid}/metadata", json={"description": "ok"})
        assert response.status == 200, await response.text()
        assert (await response.json())["session"]["description"] == "ok"
    finally:
        await app[TASKS].wait(timeout=30)
        await client.close()
        sweep_containers(settings.data_dir)

    # A new daemon on the same store finds it intact, with the write made after the fault.
    again = create_app(settings)
    client = await aiohttp_client(again)
    try:
        body = await (await client.get(f"/api/sessions/{sid}")).json()
        assert body["session"]["description"] == "ok"
        assert body["session"]["name"] == "before-full"
    finally:
        await again[TASKS].wait(timeout=30)
        await client.close()
        sweep_containers(settings.data_dir)
