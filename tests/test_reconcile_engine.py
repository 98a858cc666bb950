"""The engine stopped and started again under a running daemon.

The machine's own dockerd serves every other test, so this test runs a private one of its
own (its own socket, data root and exec root, no bridge, no iptables), loads the busybox
image into it and points the daemon at its socket.

The private engine runs in a network namespace of its own: a dockerd started with
``--bridge none`` deletes the ``docker0`` interface of the namespace it runs in, and in
the host's that is the main engine's bridge (every later bridged container on the main
engine fails with "could not find bridge docker0" until that engine restarts). The test
checks that the main engine's bridge is still there and still starts a container.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import ReconcileSettings, Settings
from tests.conftest import TEST_LABEL, create_running, wait_for
from tests.test_reconcile import FAST, health_of, subscribed, until

pytestmark = pytest.mark.docker


class PrivateEngine:
    """A dockerd of the test's own, started and stopped at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as log:
            # unshare execs dockerd in a fresh network namespace (no --fork): the pid is
            # dockerd's own, so stop() signals the engine itself.
            self.proc = subprocess.Popen(
                ["unshare", "--net",
                 "dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"),
                 "--bridge", "none", "--iptables=false", "--ip6tables=false"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}: {self.tail()}")
            if subprocess.run(["docker", "-H", self.url, "info"],
                              capture_output=True).returncode == 0:  # fmt: skip
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {timeout} s: {self.tail()}")

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it; it stops its containers first."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def docker(self, *args: str) -> str:
        return subprocess.run(
            ["docker", "-H", self.url, *args], check=True, capture_output=True, text=True
        ).stdout

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


@pytest.fixture
def private_engine(busybox_image: str) -> Iterator[PrivateEngine]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed: no private engine can run")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no private network namespace")
    if os.geteuid() != 0:
        pytest.skip("a private dockerd needs root here (rootless docker is not set up)")
    # Short: the engine's and containerd's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    engine = PrivateEngine(root)
    try:
        try:
            engine.start()
        except RuntimeError as exc:
            pytest.skip(f"a private dockerd cannot run here: {exc}")
        with subprocess.Popen(["docker", "save", busybox_image], stdout=subprocess.PIPE) as save:
            subprocess.run(["docker", "-H", engine.url, "load", "-q"], stdin=save.stdout,
                           check=True, capture_output=True)  # fmt: skip
        assert save.returncode == 0
        yield engine
    finally:
        if engine.proc is not None:
            ids = subprocess.run(["docker", "-H", engine.url, "ps", "-aq"],
                                 capture_output=True, text=True).stdout.split()  # fmt: skip
            if ids:
                subprocess.run(["docker", "-H", engine.url, "rm", "-f", *ids], capture_output=True)
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)


def assert_main_engine_bridge_works(image: str) -> None:
    """The main engine's default bridge still exists on the host and still starts a container.

    Its interface name comes from the main engine's network (the name outlives the
    interface, so this works after the damage too).
    """
    name = subprocess.run(
        ["docker", "network", "inspect", "bridge", "--format",
         '{{index .Options "com.docker.network.bridge.name"}}'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert name.returncode == 0, f"the main engine has no bridge network: {name.stderr}"
    bridge = name.stdout.strip() or "docker0"
    link = subprocess.run(["ip", "link", "show", bridge], capture_output=True, text=True)
    assert link.returncode == 0, (
        f"the host's {bridge} is gone ({link.stderr.strip()}): a private engine touched the "
        "host's network namespace; only restarting the main dockerd brings it back"
    )
    run = subprocess.run(
        ["docker", "run", "--rm", "--label", f"{TEST_LABEL}=reconcile-engine",
         "--network", "bridge", image, "ip", "-4", "addr", "show", "eth0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"a bridged container on the main engine fails: {run.stderr}"
    assert "inet " in run.stdout, run.stdout


async def engine_state(client: Any) -> dict[str, Any]:
    summary = await (await client.get("/api/health")).json()
    return dict(summary["engines"]["docker"])


async def test_engine_stopped_and_started_again_while_sessions_run(
    aiohttp_client: Any,
    settings: Settings,
    git_repo: Path,
    private_engine: PrivateEngine,
    busybox_image: str,
) -> None:
    settings.docker.url = private_engine.url
    # A stopping engine kills its containers and then, for a moment, still answers but
    # cannot start any: a recreate within that moment would fail. A second of back-off
    # (30 s by default) lets it go first, so the attempt meets an engine away (not counted)
    # or an engine back.
    settings.reconcile = ReconcileSettings(**{**FAST, "backoff_seconds": [1.0]})
    client = await aiohttp_client(create_app(settings))
    try:
        session = await create_running(client, git_repo)
        sid = session["id"]
        worktree = Path(session["worktree_path"])
        (worktree / "work.txt").write_text("precious\n")
        assert (await engine_state(client))["available"] is True
        events = await subscribed(client)

        # The engine goes away (it stops its containers on the way out).
        stopping = asyncio.create_task(asyncio.to_thread(private_engine.stop))
        try:
            away = await until(lambda: _engine_is(client, available=False), timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; stopped: {stopping.done()}; dockerd log: "
                                 f"{private_engine.tail()}") from exc  # fmt: skip
        assert away["last_error"]
        daemon_health = await (await client.get("/health")).json()
        assert daemon_health["docker"]["available"] is False
        assert daemon_health["status"] == "degraded"
        report = await health_of(client, sid)
        assert report["details"]["backend_available"] is False
        assert report["available_actions"] == []
        summary = await (await client.get("/api/health")).json()
        assert summary["status"] == "degraded"
        await stopping

        # It comes back: the daemon reconnects, runs a pass and recovers the session.
        await asyncio.to_thread(private_engine.start)
        back = await until(lambda: _engine_is(client, available=True), timeout=30)
        assert back["reconnects"] == 1
        recreated = await wait_for(
            client,
            sid,
            lambda s: s["status"] == "running" and s["container_id"] != session["container_id"],
            timeout=60,
        )
        assert recreated["health"] == "healthy"
        assert recreated["worktree_path"] == session["worktree_path"]
        assert (worktree / "work.txt").read_text() == "precious\n"
        ours = private_engine.docker(
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            f"label=corral.daemon_instance={settings.data_dir}",
        ).split()
        assert ours == [recreated["container_id"]]
        report = await health_of(client, sid)
        assert report["reconciliation"]["attempts"] == 1

        # The events stream works again after the reconnection: the news comes within
        # seconds, long before the periodic pass (30 s) could have found it.
        private_engine.docker("kill", recreated["container_id"])
        await events.next("session_status", session_id=sid, health="error", timeout=5)

        # The private engine has started twice: the main engine's network is untouched.
        await asyncio.to_thread(assert_main_engine_bridge_works, busybox_image)
    finally:
        await client.app[TASKS].wait(timeout=30)
        await client.close()


async def _engine_is(client: Any, *, available: bool) -> dict[str, Any] | None:
    state = await engine_state(client)
    return state if state["available"] is available else None
