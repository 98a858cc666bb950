"""The daemon's resident memory with 100 running Docker sessions vs the idle daemon.

Starts the daemon, reads its VmRSS from /proc/<pid>/status when idle (the baseline, after
one /health and one list), creates 100 busybox sessions through the API in batches of 10
at once (each batch polled until running), then reads VmRSS again. Target: <= 150 MB with
100 sessions (decimal MB, 10^6 bytes). Afterwards every session is deleted with force
and the engine is swept by the daemon's instance label (also on failure).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    Daemon,
    api,
    bench_daemon,
    busybox_image,
    create_batch,
    delete_session,
    emit,
    log,
    metric,
    rss_kib,
    setup,
)


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def measure(daemon: Daemon, repo: Path, count: int, batch: int) -> dict[str, Any]:
    mib = 1024.0
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await api(http, "GET", f"{daemon.url}/health")
        await api(http, "GET", f"{daemon.url}/api/sessions")
        await asyncio.sleep(1.0)
        out["idle_kib"] = rss_kib(daemon.pid)
        ids: list[str] = []
        try:
            t0 = time.perf_counter()
            for start in range(0, count, batch):
                names = [f"mem{i:03d}" for i in range(start, min(start + batch, count))]
                ids += await create_batch(http, daemon.url, repo, names)
                log.info("%d running, rss %.1f MiB", len(ids), rss_kib(daemon.pid) / mib)
            out["create_s"] = time.perf_counter() - t0
            await asyncio.sleep(1.0)
            out["loaded_kib"] = rss_kib(daemon.pid)
            out["hwm_kib"] = vm_hwm_kib(daemon.pid)
            _, body = await api(http, "GET", f"{daemon.url}/api/sessions", params={"limit": "1000"})
            out["running"] = sum(1 for s in body["sessions"] if s["status"] == "running")
        finally:
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                await asyncio.gather(*(delete_session(http, daemon.url, i, timeout=120)
                                       for i in chunk))  # fmt: skip
            if ids:
                log.info("deleted %d sessions", len(ids))
        out["after_delete_kib"] = rss_kib(daemon.pid)
    return out


def main() -> None:
    args = setup(__doc__ or "")
    count, batch = (5, 5) if args.quick else (100, 10)
    image = busybox_image()
    with bench_daemon("corral-bench-mem-", image) as (daemon, repo, _root):
        m = asyncio.run(measure(daemon, repo, count, batch))
    if m["running"] != count:
        raise SystemExit(f"only {m['running']} of {count} sessions were running")
    mb = 1e6 / 1024  # VmRSS is in KiB; report decimal MB as the target is given
    metrics = {
        "rss_with_sessions": metric(
            measured=m["loaded_kib"] / mb, baseline=m["idle_kib"] / mb, unit="MB",
            target_field="measured", target_op="<=", target=150.0, samples=1,
            sessions=count, per_session_kib=round((m["loaded_kib"] - m["idle_kib"]) / count, 1),
            peak_hwm_mb=round(m["hwm_kib"] / mb, 2),
            after_delete_mb=round(m["after_delete_kib"] / mb, 2),
            create_all_s=round(m["create_s"], 2), batch=batch,
        ),
    }  # fmt: skip
    emit("memory", args.quick, metrics, image=image)


if __name__ == "__main__":
    main()
