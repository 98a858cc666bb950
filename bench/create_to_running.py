"""Create-to-running of a Docker session through corral vs the raw steps it wraps.

Raw baseline: ``git worktree add -b <branch> <path> main`` (a subprocess) plus container
create and start of the same image with aiodocker, with the body the daemon sends (Tty,
OpenStdin, Init, the same bind mounts including the git mounts, no capabilities, the default
limits, the host uid:gid, network none).

1. Serial: N interleaved pairs (order alternating), median of each; target: median
   overhead <= 150 ms.
2. Concurrent: 5 creates at once through the API (wall time until all 5 are running) vs 5
   raw sequences under asyncio.gather; R rounds, median; target: ratio <= 1.15.

Status is polled every ~4 ms (the daemon has no event socket yet).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from _common import (
    LABEL_BENCH,
    ApiError,
    Daemon,
    api,
    busybox_image,
    delete_session,
    docker_sweep,
    emit,
    log,
    make_repo,
    median,
    metric,
    percentile,
    setup,
    workdir,
)

from backends.base import ContainerSpec, Mount
from backends.docker_json import container_config
from daemon.core.git_mounts import GitWorktree, git_mounts
from daemon.settings import Settings

POLL = 0.004  # seconds between status polls (plus one round trip)
BATCH = 5
TIMEOUT = 60.0  # per create


# --- the raw baseline -------------------------------------------------------------------------


def raw_config(image: str, worktree: Path, repo: Path, home: Path, tag: str) -> dict[str, Any]:
    """The container body the daemon sends (backends/docker_json.py container_config): its
    mounts (the worktree, the git mounts of daemon/core/git_mounts.py, the home), its
    hardening and default limits, network none; labelled for the bench's sweep."""
    docker = Settings().docker
    mounts = [
        Mount(str(worktree), "/workspace"),
        *git_mounts([GitWorktree(str(repo), str(worktree), "/workspace")]),
        Mount(str(home), "/home/agent"),
    ]
    spec = ContainerSpec(
        session_id=str(uuid.uuid4()),
        session_name=worktree.name,
        image=image,
        working_dir="/workspace",
        mounts=tuple(mounts),
        env={"HOME": "/home/agent", "TERM": "xterm-256color"},
        user=f"{os.getuid()}:{os.getgid()}",
        cpu_limit=min(docker.cpu_limit, os.cpu_count() or 1) if docker.cpu_limit else None,
        memory_limit=docker.memory_limit_mb * 1024 * 1024 or None,
        pids_limit=docker.pids_limit or None,
        network_mode="none",
    )
    config = container_config(spec)
    config["Labels"] = {LABEL_BENCH: tag}
    return config


class Raw:
    def __init__(self, docker: aiodocker.Docker, repo: Path, root: Path, image: str) -> None:
        self.docker = docker
        self.repo = repo
        self.root = root
        self.image = image
        self.tag = str(root)
        self.made: list[tuple[str, Path]] = []  # (container id, worktree)

    async def create(self, name: str) -> float:
        """Worktree + container create + start; returns the seconds it took."""
        worktree = self.root / "raw-worktrees" / name
        home = self.root / "raw-homes" / name / "home"
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "git", "worktree", "add", "-b", f"raw/{name}", str(worktree), "main",
            cwd=self.repo, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"git worktree add failed: {err.decode()}")
        home.mkdir(parents=True, exist_ok=True)
        config = raw_config(self.image, worktree, self.repo, home, self.tag)
        container = await self.docker.containers.create(config, name=f"corralbench-{name}")
        self.made.append((container.id, worktree))
        await container.start()
        return time.perf_counter() - t0

    async def cleanup(self) -> None:
        made, self.made = self.made, []
        for container_id, worktree in made:
            await self.docker.containers.container(container_id).delete(force=True)
            proc = await asyncio.create_subprocess_exec(
                "git", "worktree", "remove", "--force", str(worktree), cwd=self.repo,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await proc.wait()


# --- through the API ----------------------------------------------------------------------------


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str, repo: Path) -> None:
        self.http = http
        self.base = base
        self.repo = repo
        self.made: list[str] = []

    async def post(self, name: str) -> str:
        # egress "open" keeps the daemon's container on network none, as the raw baseline's:
        # the default (allowlist) puts it on corral's sealed bridge, whose veth set-up is
        # the engine's cost, not corral's.
        payload = {"repo_path": str(self.repo), "prompt": "x", "name": name, "egress": "open"}
        status, body = await api(self.http, "POST", f"{self.base}/api/sessions", json=payload)
        if status != 201:
            raise ApiError(f"POST /api/sessions: {status} {body}")
        session_id = str(body["session"]["id"])
        self.made.append(session_id)
        return session_id

    async def create(self, name: str) -> float:
        """POST, then poll the session until it is running; returns the seconds it took."""
        t0 = time.perf_counter()
        session_id = await self.post(name)
        url = f"{self.base}/api/sessions/{session_id}"
        deadline = t0 + TIMEOUT
        while time.perf_counter() < deadline:
            status, body = await api(self.http, "GET", url)
            state = body["session"]["status"] if status == 200 else f"http {status}"
            if state == "running":
                return time.perf_counter() - t0
            if state != "creating":
                raise ApiError(f"session {name} went {state}: {body}")
            await asyncio.sleep(POLL)
        raise ApiError(f"session {name} was not running within {TIMEOUT} s")

    async def create_many(self, names: list[str]) -> float:
        """POST all at once, poll the list until every one is running; the wall seconds."""
        t0 = time.perf_counter()
        ids = set(await asyncio.gather(*(self.post(n) for n in names)))
        deadline = t0 + TIMEOUT
        while time.perf_counter() < deadline:
            _, body = await api(
                self.http, "GET", f"{self.base}/api/sessions", params={"limit": "1000"}
            )
            states = {s["id"]: s["status"] for s in body["sessions"] if s["id"] in ids}
            if len(states) == len(ids) and all(v == "running" for v in states.values()):
                return time.perf_counter() - t0
            bad = {k: v for k, v in states.items() if v not in ("running", "creating")}
            if bad:
                raise ApiError(f"sessions went wrong: {bad}")
            await asyncio.sleep(POLL)
        raise ApiError(f"{len(ids)} sessions were not running within {TIMEOUT} s")

    async def cleanup(self) -> None:
        made, self.made = self.made, []
        await asyncio.gather(*(delete_session(self.http, self.base, i) for i in made))


# --- the benchmark --------------------------------------------------------------------------------


async def measure(
    daemon: Daemon, repo: Path, root: Path, image: str, quick: bool
) -> dict[str, Any]:
    n = 2 if quick else 15
    rounds = 1 if quick else 3
    counter = iter(range(10_000))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, aiodocker.Docker() as docker:
        raw = Raw(docker, repo, root, image)
        through = Api(http, daemon.url, repo)

        async def one_api() -> float:
            try:
                return await through.create(f"api{next(counter)}")
            finally:
                await through.cleanup()

        async def one_raw() -> float:
            try:
                return await raw.create(f"raw{next(counter)}")
            finally:
                await raw.cleanup()

        # warm-up, not counted: the daemon's engine client, git's caches, the image
        await one_api()
        await one_raw()

        api_s: list[float] = []
        raw_s: list[float] = []
        for i in range(n):
            order = (one_api, one_raw) if i % 2 == 0 else (one_raw, one_api)
            for fn in order:
                (api_s if fn is one_api else raw_s).append(await fn())
            log.info("serial %d/%d: api %.1f ms, raw %.1f ms", i + 1, n,
                     api_s[-1] * 1e3, raw_s[-1] * 1e3)  # fmt: skip

        async def many_api() -> float:
            try:
                return await through.create_many([f"api{next(counter)}" for _ in range(BATCH)])
            finally:
                await through.cleanup()

        async def many_raw() -> float:
            try:
                t0 = time.perf_counter()
                await asyncio.gather(*(raw.create(f"raw{next(counter)}") for _ in range(BATCH)))
                return time.perf_counter() - t0
            finally:
                await raw.cleanup()

        c_api: list[float] = []
        c_raw: list[float] = []
        for r in range(rounds):
            order = (many_api, many_raw) if r % 2 == 0 else (many_raw, many_api)
            for fn in order:
                (c_api if fn is many_api else c_raw).append(await fn())
            log.info("concurrent %d/%d: api %.1f ms, raw %.1f ms", r + 1, rounds,
                     c_api[-1] * 1e3, c_raw[-1] * 1e3)  # fmt: skip

    ms = [x * 1e3 for x in api_s]
    rs = [x * 1e3 for x in raw_s]
    pair_diffs = [a - b for a, b in zip(ms, rs, strict=True)]
    return {
        "serial": metric(
            measured=median(ms), baseline=median(rs), unit="ms", target_field="overhead",
            target_op="<=", target=150.0, samples=len(ms),
            measured_p90=round(percentile(ms, 90), 3), baseline_p90=round(percentile(rs, 90), 3),
            median_of_pair_differences=round(median(pair_diffs), 3),
        ),
        f"concurrent{BATCH}": metric(
            measured=median([x * 1e3 for x in c_api]), baseline=median([x * 1e3 for x in c_raw]),
            unit="ms", target_field="ratio", target_op="<=", target=1.15, samples=len(c_api),
            batch=BATCH,
        ),
    }  # fmt: skip


def main() -> None:
    args = setup(__doc__ or "")
    image = busybox_image()
    with workdir("corral-bench-ctr-") as root:
        repo = make_repo(root / "repo")
        daemon = Daemon(root / "data", image)
        try:
            daemon.start()
            metrics = asyncio.run(measure(daemon, repo, root, image, args.quick))
        finally:
            daemon.stop()
            swept = daemon.sweep() + docker_sweep(LABEL_BENCH, str(root))
            if swept:
                log.info("swept %d leftover containers", swept)
            subprocess.run(["git", "worktree", "prune"], cwd=repo, check=False)
    emit("create_to_running", args.quick, metrics, image=image, poll_interval_ms=POLL * 1e3)


if __name__ == "__main__":
    main()
