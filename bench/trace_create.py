"""Diagnostics for create_to_running.py: where the time of a create goes, serial and 5 at once.

Runs bench/_traced_daemon.py (the daemon with timing wrappers, nothing changed on disk),
makes a few sessions one at a time and then batches of 5 at once, and prints one JSON line:
per phase ("serial", "concurrent"), each wrapped operation's count, total and mean
milliseconds and its total as a share of the summed create-to-running time; the daemon's
CPU seconds; event-loop lag; and the raw baseline's own steps for comparison.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from _common import (
    LABEL_BENCH,
    ROOT,
    Daemon,
    busybox_image,
    cpu_seconds,
    docker_sweep,
    log,
    make_repo,
    median,
    setup,
    workdir,
)
from create_to_running import BATCH, Api, Raw


class StepRaw(Raw):
    """The raw sequence with its steps timed."""

    steps: dict[str, list[float]]

    async def create(self, name: str) -> float:
        self.steps = getattr(self, "steps", defaultdict(list))
        worktree = self.root / "raw-worktrees" / name
        home = self.root / "raw-homes" / name / "home"
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "git", "worktree", "add", "-b", f"raw/{name}", str(worktree), "main", cwd=self.repo,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()
        t1 = time.perf_counter()
        home.mkdir(parents=True, exist_ok=True)
        from create_to_running import raw_config

        config = raw_config(self.image, worktree, self.repo, home, self.tag)
        container = await self.docker.containers.create(config, name=f"corralbench-{name}")
        self.made.append((container.id, worktree))
        t2 = time.perf_counter()
        await container.start()
        t3 = time.perf_counter()
        for k, v in (("git worktree add", t1 - t0), ("docker create", t2 - t1),
                     ("docker start", t3 - t2), ("total", t3 - t0)):  # fmt: skip
            self.steps[k].append(v * 1e3)
        self.timeline = getattr(self, "timeline", {})
        self.timeline[name] = [("git worktree add", t0, t1), ("docker.create", t1, t2),
                               ("docker.start", t2, t3)]  # fmt: skip
        return t3 - t0


def summarise(trace: list[dict[str, Any]], names: set[str], wall_ms: float) -> dict[str, Any]:
    ops: dict[str, list[float]] = defaultdict(list)
    for row in trace:
        if row["s"] in names:
            ops[row["op"]].append(row["dt"] * 1e3)
    return {
        op: {"n": len(v), "total_ms": round(sum(v), 1), "mean_ms": round(sum(v) / len(v), 2),
             "max_ms": round(max(v), 1), "share_of_wall": round(sum(v) / wall_ms, 3)}
        for op, v in sorted(ops.items(), key=lambda kv: -sum(kv[1]))
    }  # fmt: skip


async def run(daemon: Daemon, repo: Path, root: Path, image: str, quick: bool) -> dict[str, Any]:
    serial_n = 2 if quick else 6
    batches = 1 if quick else 3
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http, aiodocker.Docker() as docker:
        through = Api(http, daemon.url, repo)
        raw = StepRaw(docker, repo, root, image)
        await through.create("warm")
        await through.cleanup()
        serial_names, serial_ms = set(), []
        for i in range(serial_n):
            serial_names.add(f"s{i}")
            serial_ms.append(await through.create(f"s{i}") * 1e3)
            await through.cleanup()
        conc_names: set[str] = set()
        conc_ms, cpu_used, raw_ms = [], [], []
        for b in range(batches):
            names = [f"c{b}x{i}" for i in range(BATCH)]
            conc_names.update(names)
            out["_batch_t0"] = time.perf_counter()
            cpu0 = cpu_seconds(daemon.pid)
            conc_ms.append(await through.create_many(names) * 1e3)
            cpu_used.append(cpu_seconds(daemon.pid) - cpu0)
            await through.cleanup()
            t0 = time.perf_counter()
            out["_raw_t0"] = t0
            raw.timeline = {}
            await asyncio.gather(*(raw.create(f"r{b}x{i}") for i in range(BATCH)))
            raw_ms.append((time.perf_counter() - t0) * 1e3)
            await raw.cleanup()
        out["serial_ms"] = [round(x, 1) for x in serial_ms]
        out["concurrent_wall_ms"] = [round(x, 1) for x in conc_ms]
        out["concurrent_daemon_cpu_s"] = [round(x, 3) for x in cpu_used]
        out["raw_concurrent_wall_ms"] = [round(x, 1) for x in raw_ms]
        out["raw_steps_median_ms"] = {k: round(median(v), 1) for k, v in raw.steps.items()}
        out["_names"] = (serial_names, conc_names, sum(serial_ms), sum(conc_ms))
        out["_last_batch"] = names
        t0 = out.pop("_raw_t0")
        out["raw_last_batch_timeline_ms"] = {
            n: [(op, round((a - t0) * 1e3), round((z - t0) * 1e3)) for op, a, z in steps]
            for n, steps in raw.timeline.items()
        }
    return out


def main() -> None:
    args = setup(__doc__ or "")
    image = busybox_image()
    with workdir("corral-bench-trace-") as root:
        repo = make_repo(root / "repo")
        trace_path = root / "trace.jsonl"
        traced = [sys.executable, str(ROOT / "bench" / "_traced_daemon.py"), str(trace_path)]
        daemon = Daemon(root / "data", image, command=traced)
        try:
            daemon.start()
            result = asyncio.run(run(daemon, repo, root, image, args.quick))
        finally:
            daemon.stop()
            daemon.sweep()
            docker_sweep(LABEL_BENCH, str(root))
        trace = [json.loads(line) for line in trace_path.read_text().splitlines()]
    serial_names, conc_names, serial_wall, conc_wall = result.pop("_names")
    # For the concurrent phase each session's own create-to-running is about the batch wall.
    result["serial_ops"] = summarise(trace, serial_names, serial_wall)
    result["concurrent_ops"] = summarise(trace, conc_names, conc_wall * BATCH)
    t0 = result.pop("_batch_t0")
    last = set(result.pop("_last_batch"))
    key_ops = ("manager.create (POST)", "git worktree add", "docker.create", "docker.start",
               "manager._mark_running", "manager._resolve_repositories", "docker.info")  # fmt: skip
    timeline: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for r in trace:
        if r["s"] in last and r["op"] in key_ops:
            a = round((r["t0"] - t0) * 1e3)
            timeline[r["s"]].append((r["op"], a, a + round(r["dt"] * 1e3)))
    result["api_last_batch_timeline_ms"] = {k: sorted(v, key=lambda e: e[1])
                                            for k, v in sorted(timeline.items())}  # fmt: skip
    lags = [r["dt"] * 1e3 for r in trace if r["op"] == "loop_lag"]
    result["loop_lag_over_2ms"] = {"n": len(lags), "max_ms": round(max(lags, default=0), 1),
                                   "total_ms": round(sum(lags), 1)}  # fmt: skip
    log.info("%s", json.dumps(result, indent=1))
    sys.stdout.write(json.dumps({"bench": "trace_create", "quick": args.quick, **result}) + "\n")


if __name__ == "__main__":
    main()
