"""A periodic reconciliation pass with 1,000 sessions in the store and 100 running containers.

Set-up: the daemon starts once (it migrates the schema) and stops; 100 busybox containers
are created and started with aiodocker, labelled as that daemon's (managed, instance,
session id) and named as the daemon names them; 1,000 sessions are inserted with sqlite3
(the first 100 running on those containers, the other 900 stopped with no container), each
with its worktree folder on disk. The daemon starts again with passes every 0.5 s and
automatic recovery off (the 900 stay "missing", so every pass judges every session).

Measured: the daemon's own timing of each steady-state pass (``last_pass_ms`` in
``GET /api/health``, from its event loop's clock: the worktree stats, the one listing and
judging every session), median over the passes seen; and the engine requests each pass
made (``last_pass_engine_calls``). Baseline, in the same run: the naive pass this design
avoids, one ``GET /containers/corral-<name>/json`` per session (aiodocker, 50 at a time).

Targets: a pass <= 200 ms; engine calls per pass <= 1 (one listing, constant).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiodocker
from _common import (
    LABEL_INSTANCE,
    Daemon,
    busybox_image,
    emit,
    insert_session_rows,
    log,
    median,
    metric,
    raw_container_config,
    setup,
    workdir,
)

INTERVAL = 0.5
NAIVE_CONCURRENCY = 50


async def start_containers(image: str, data_dir: Path, root: Path, names: list[str],
                           ids: list[str]) -> list[str]:  # fmt: skip
    """Create and start one labelled busybox container per (name, session id)."""
    docker = aiodocker.Docker()
    made: list[str] = []
    gate = asyncio.Semaphore(10)

    async def one(name: str, sid: str) -> str:
        config = raw_container_config(image, str(root))
        config["Cmd"] = ["sleep", "3600"]
        config["Labels"].update({"corral.managed": "true", LABEL_INSTANCE: str(data_dir),
                                 "corral.session_id": sid})  # fmt: skip
        async with gate:
            container = await docker.containers.create(config, name=f"corral-{name}")
            await container.start()
        return str(container.id)

    try:
        made = list(await asyncio.gather(*(one(n, s) for n, s in zip(names, ids, strict=True))))
    finally:
        await docker.close()
    return made


def fill_store(db_path: Path, data_dir: Path, repo: Path, image: str, names: list[str],
               ids: list[str], containers: list[str]) -> None:  # fmt: skip
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sessions, repos = [], []
    for i, (name, sid) in enumerate(zip(names, ids, strict=True)):
        ts = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        running = i < len(containers)
        worktree = data_dir / "worktrees" / name / "repo"
        worktree.mkdir(parents=True)
        sessions.append(
            (sid, name, "", "[]", "docker", "claude", None,
             "running" if running else "stopped", 0, None, "unknown", "x", 0, image, "[]",
             containers[i] if running else None, None, None, ts, ts)
        )  # fmt: skip
        repos.append((sid, 0, str(repo), "repo", str(worktree), f"corral/{name}", "main", 1, ""))
    insert_session_rows(db_path, sessions, repos)


def health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/api/health", timeout=10) as response:
        return dict(json.loads(response.read()))


def watch_passes(base: str, wanted: int, skip: int) -> list[dict[str, Any]]:
    """The figures of ``wanted`` consecutive passes, after the first ``skip``."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + (wanted + skip) * INTERVAL * 4 + 60
    while time.monotonic() < deadline:
        summary = health(base)
        number = summary["passes"]
        if number > skip and number not in seen:
            seen[number] = summary
        if len(seen) >= wanted:
            return [seen[n] for n in sorted(seen)]
        time.sleep(INTERVAL / 5)
    raise RuntimeError(f"only {len(seen)} passes seen")


async def naive_pass(names: list[str]) -> tuple[float, int]:
    """One inspection per session, by the container name the daemon gives it."""
    docker = aiodocker.Docker()
    gate = asyncio.Semaphore(NAIVE_CONCURRENCY)
    calls = 0

    async def inspect(name: str) -> None:
        nonlocal calls
        async with gate:
            calls += 1
            try:
                await docker.containers.container(f"corral-{name}").show()
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(inspect(n) for n in names))
        return (time.perf_counter() - t0) * 1000, calls
    finally:
        await docker.close()


def main() -> None:
    args = setup(__doc__ or "")
    count, running = (100, 10) if args.quick else (1000, 100)
    wanted = 3 if args.quick else 20
    image = busybox_image()
    with workdir("corral-bench-pass-") as root:
        data_dir = root / "data"
        repo = root / "repo"  # never touched by a pass: only the worktree folders are
        env = {"CORRAL_RECONCILE__AUTO_RECOVER": "false",
               "CORRAL_RECONCILE__INTERVAL_SECONDS": str(INTERVAL),
               "CORRAL_RECONCILE__JITTER": "0"}  # fmt: skip
        daemon = Daemon(data_dir, image, extra_env=env)
        try:
            daemon.start()
            daemon.stop()  # the schema is in place
            names = [f"bench-{i:04d}" for i in range(count)]
            ids = [str(uuid.uuid4()) for _ in range(count)]
            t0 = time.monotonic()
            containers = asyncio.run(
                start_containers(image, data_dir, root, names[:running], ids[:running])
            )
            log.info("%d containers running in %.1f s", len(containers), time.monotonic() - t0)
            fill_store(data_dir / "corral.db", data_dir, repo, image, names, ids, containers)
            daemon.start()
            # The first pass finds the 900 missing containers and publishes them: skip it.
            passes = watch_passes(daemon.url, wanted, skip=2)
            last = passes[-1]
            log.info("counts %s, by health %s", last["counts"], last["by_health"])
            if last["by_health"].get("healthy") != running:
                raise RuntimeError(f"expected {running} healthy sessions: {last['by_health']}")
            naive = [asyncio.run(naive_pass(names)) for _ in range(3)]
        finally:
            daemon.stop()
            swept = daemon.sweep()
            log.info("swept %d containers", swept)
    pass_ms = [p["last_pass_ms"] for p in passes]
    calls = [p["last_pass_engine_calls"] for p in passes]
    naive_ms = [ms for ms, _ in naive]
    log.info("pass median %.1f ms (max %.1f), engine calls %s; naive %.1f ms, %d calls",
             median(pass_ms), max(pass_ms), sorted(set(calls)), median(naive_ms),
             naive[0][1])  # fmt: skip
    metrics = {
        "pass_time": metric(
            measured=median(pass_ms),
            baseline=median(naive_ms),
            unit="ms",
            target_field="measured",
            target_op="<=",
            target=200.0,
            samples=len(pass_ms),
            baseline_samples=len(naive_ms),
            measured_max=round(max(pass_ms), 3),
            sessions=count,
            running=running,
        ),
        "pass_engine_calls": metric(
            measured=max(calls),
            baseline=naive[0][1],
            unit="calls",
            target_field="measured",
            target_op="<=",
            target=1.0,
            samples=len(calls),
            baseline_samples=1,
            sessions=count,
        ),
    }
    emit("reconcile_pass", args.quick, metrics, sessions=count, running=running,
         interval_s=INTERVAL)  # fmt: skip


if __name__ == "__main__":
    main()
