"""Daemon start with 100 running sessions until every console is reattached.

Creates SESSIONS busybox sessions through the API (10 at once), then, ROUNDS times:
SIGKILL the daemon (its containers keep running), start it again on the same data dir and
time from the ``corral serve`` spawn to its ``consoles_reattached`` log event (every
running session's terminal attached again, its screen rebuilt from the TTY log). After
each start every console must echo a fresh marker (all sockets at once), so a quick but
broken reattach cannot pass. Baseline, in the same run: a daemon with an empty store,
from spawn to ``consoles_reattached`` (the fixed cost of starting). Target: median <= 5 s
with 100 sessions.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    ConsoleViewer,
    Daemon,
    bench_daemon,
    busybox_image,
    create_batch,
    drain,
    emit,
    log,
    median,
    metric,
    read_until,
    setup,
    shell_marker,
    stop_process,
    workdir,
)

LOG_ENV = {"CORRAL_LOGGING__LEVEL": "info", "CORRAL_LOGGING__FORMAT": "json"}
EVENT = "consoles_reattached"
ECHO_TIMEOUT = 60.0


def find_event(path: Path, offset: int) -> dict[str, Any] | None:
    """The first ``consoles_reattached`` line written after ``offset``, if any yet."""
    with path.open("rb") as handle:
        handle.seek(offset)
        for line in handle:
            if EVENT.encode() not in line:
                continue
            try:
                event: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == EVENT:
                return event
    return None


def timed_start(daemon: Daemon, timeout: float = 120.0) -> tuple[float, dict[str, Any]]:
    """Seconds from spawn to the reattach event, and the event."""
    assert daemon.log_path is not None
    offset = daemon.log_path.stat().st_size if daemon.log_path.exists() else 0
    t0 = time.perf_counter()
    daemon.start(timeout=timeout)
    while time.perf_counter() - t0 < timeout:
        event = find_event(daemon.log_path, offset)
        if event is not None:
            return time.perf_counter() - t0, event
        time.sleep(0.005)
    raise SystemExit(f"no {EVENT} event within {timeout} s (log: {daemon.log_path})")


def kill(daemon: Daemon) -> None:
    """SIGKILL: the harshest stop; the containers survive it."""
    assert daemon.proc is not None
    daemon.proc.kill()
    daemon.proc.wait(timeout=30)
    daemon.proc = None


async def echo_everywhere(base: str, ids: list[str]) -> float:
    """Every console echoes a fresh marker; seconds until the last one has."""
    async with aiohttp.ClientSession() as http:

        async def one(session_id: str) -> None:
            viewer = await ConsoleViewer.connect(base, session_id, http)
            try:
                await drain(viewer.read, quiet=0.05, limit=2.0)
                expr, marker = shell_marker("up")
                await viewer.send(f"echo {expr}\r".encode())
                await read_until(viewer.read, marker, ECHO_TIMEOUT)
            finally:
                await viewer.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in ids))
        return time.perf_counter() - t0


async def create_all(daemon: Daemon, repo: Path, count: int) -> list[str]:
    ids: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for start in range(0, count, 10):
            names = [f"re{i:03d}" for i in range(start, min(start + 10, count))]
            ids += await create_batch(http, daemon.url, repo, names)
            log.info("%d sessions running", len(ids))
    return ids


def main() -> None:
    args = setup(__doc__ or "")
    count, rounds = (3, 1) if args.quick else (100, 3)
    image = busybox_image()
    starts: list[float] = []
    empty: list[float] = []
    echoes: list[float] = []
    attached: list[int] = []
    with bench_daemon("corral-bench-restart-", image, extra_env=LOG_ENV) as (daemon, repo, root):
        daemon.log_path = root / "daemon.log"
        ids = asyncio.run(create_all(daemon, repo, count))
        with workdir("corral-bench-empty-") as empty_root:
            bare = Daemon(empty_root / "data", image, extra_env=LOG_ENV,
                          log_path=empty_root / "daemon.log")  # fmt: skip
            for round_no in range(rounds):
                kill(daemon)
                seconds, event = timed_start(daemon)
                starts.append(seconds)
                attached.append(int(event.get("count", -1)))
                echoes.append(asyncio.run(echo_everywhere(daemon.url, ids)))
                empty_seconds, _ = timed_start(bare)
                empty.append(empty_seconds)
                assert bare.proc is not None
                stop_process(bare.proc)
                bare.proc = None
                log.info("round %d: %d consoles reattached in %.2f s (empty store %.2f s), "
                         "all echoed %.2f s later", round_no, attached[-1], seconds,
                         empty_seconds, echoes[-1])  # fmt: skip
    if any(n != count for n in attached):
        raise SystemExit(f"reattached {attached} consoles, expected {count} each time")
    metrics = {
        "start_to_consoles_reattached": metric(
            measured=median(starts), baseline=median(empty), unit="s",
            target_field="measured", target_op="<=", target=5.0, samples=len(starts),
            sessions=count, runs_s=[round(s, 3) for s in starts],
            baseline_runs_s=[round(s, 3) for s in empty],
            all_consoles_echo_s=round(median(echoes), 3),
        ),
    }  # fmt: skip
    emit("startup_reattach", args.quick, metrics, image=image)


if __name__ == "__main__":
    main()
