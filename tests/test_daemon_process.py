"""The real `corral serve` process: SIGTERM leaves agents running, SIGKILL mid-create."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import container_state, sweep_containers

pytestmark = pytest.mark.docker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    # What runs the daemon (the crash tests run one with a fault hook: tests/crash_daemon.py).
    module = "daemon.cli"

    def __init__(self, data_dir: Path, image: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CORRAL_CONFIG": str(data_dir / "absent.toml"),
            "CORRAL_DOCKER__DEFAULT_IMAGE": image,
            "CORRAL_DOCKER__NETWORK_MODE": "none",
            "CORRAL_SESSIONS__START_AGENT": "false",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"daemon-{self.port}.log"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError("daemon did not answer /health")

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "data"
    yield data_dir
    sweep_containers(data_dir)


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    await daemon.start()
    try:
        async with aiohttp.ClientSession(base_url=daemon.url) as http:
            yield http
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)


async def post_session(http: aiohttp.ClientSession, repo: Path) -> str:
    async with http.post("/api/sessions", json={"repo_path": str(repo), "prompt": "x"}) as response:
        assert response.status == 201, await response.text()
        session_id: str = (await response.json())["session"]["id"]
        return session_id


async def poll(http: aiohttp.ClientSession, session_id: str, statuses: set[str]) -> dict[str, Any]:
    for _ in range(400):
        async with http.get(f"/api/sessions/{session_id}") as response:
            session: dict[str, Any] = (await response.json())["session"]
        if session["status"] in statuses:
            return session
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {statuses}: {session}")


async def test_sigterm_leaves_containers_running_and_restart_adopts_them(
    daemon_dir: Path, busybox_image: str, git_repo: Path
) -> None:
    daemon = Daemon(daemon_dir, busybox_image)
    async with running(daemon) as http:
        sid = await post_session(http, git_repo)
        session = await poll(http, sid, {"running", "failed"})
        assert session["status"] == "running", session
        assert daemon.signal(signal.SIGTERM) == 0
    assert container_state(session["container_id"])["State"]["Running"] is True

    again = Daemon(daemon_dir, busybox_image)
    async with running(again) as http:
        async with http.get(f"/api/sessions/{sid}/health") as response:
            report = await response.json()
        assert report["health"] == "healthy", report
        async with http.get("/api/sessions") as response:
            assert [s["id"] for s in (await response.json())["sessions"]] == [sid]


async def test_sigkill_during_create_leaves_a_consistent_store(
    daemon_dir: Path, busybox_image: str, git_repo: Path
) -> None:
    daemon = Daemon(daemon_dir, busybox_image)
    async with running(daemon) as http:
        sid = await post_session(http, git_repo)
        daemon.signal(signal.SIGKILL)

    again = Daemon(daemon_dir, busybox_image)
    async with running(again) as http:
        async with http.get(f"/api/sessions/{sid}") as response:
            session = (await response.json())["session"]
        # Either the create finished before the kill, or it is recorded as interrupted.
        assert session["status"] in ("running", "failed"), session
        if session["status"] == "failed":
            assert "interrupted" in session["error_message"]
            async with http.post(f"/api/sessions/{sid}/recreate") as response:
                assert response.status == 200, await response.text()
            session = await poll(http, sid, {"running"})
        # Every labelled container belongs to this session, and it runs.
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter",
             f"label=corral.daemon_instance={daemon_dir}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert ids == [session["container_id"]]


def test_startup_failure_exits_instead_of_hanging(tmp_path: Path) -> None:
    import sqlite3

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "corral.db") as db:
        db.execute("PRAGMA user_version = 999")
    env = {**os.environ, "CORRAL_CONFIG": str(tmp_path / "absent.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(data_dir)],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "newer than this corral" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to bind 0.0.0.0"),
        (["--config", "/nonexistent/corral.toml"], "does not exist"),
    ],
)
def test_refuses_to_start_with_a_clear_reason(
    tmp_path: Path, args: list[str], message: str
) -> None:
    env = {**os.environ, "CORRAL_CONFIG": str(tmp_path / "absent.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "data"), *args],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr


async def test_console_reattaches_after_sigkill(
    daemon_dir: Path, busybox_image: str, git_repo: Path
) -> None:
    daemon = Daemon(daemon_dir, busybox_image)
    async with running(daemon) as http:
        sid = await post_session(http, git_repo)
        await poll(http, sid, {"running"})
        ws = await http.ws_connect(f"/ws/console/{sid}?cols=80&rows=24")
        await ws.send_bytes(b"echo before-$((20+1))\r")
        seen = b""
        while b"before-21" not in seen:
            seen += (await ws.receive(timeout=10)).data
        daemon.signal(signal.SIGKILL)

    again = Daemon(daemon_dir, busybox_image)
    async with running(again) as http:
        ws = await http.ws_connect(f"/ws/console/{sid}?cols=80&rows=24")
        screen = b""
        # The screen is rebuilt from the container's TTY log, then the same shell echoes.
        while b"before-21" not in screen:
            screen += (await ws.receive(timeout=10)).data
        await ws.send_bytes(b"echo after-$((30+3))\r")
        while b"after-33" not in screen:
            message = await ws.receive(timeout=10)
            if message.type == aiohttp.WSMsgType.BINARY:
                screen += message.data
        await ws.close()
