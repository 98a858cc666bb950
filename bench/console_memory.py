"""Daemon memory per running Docker session whose console ring buffer is full.

Starts the daemon (default ``console.buffer_bytes``: 1 MiB) and reads its VmRSS when idle
(after one /health and one list), creates N busybox sessions (5 at once), reads VmRSS
again (buffers nearly empty), then makes every session print >= 1.5 MiB through a
/ws/console viewer (``head -c 1200000 /dev/zero | base64; echo mem-<token>-$((n+1))``:
about 1.64 MB with the terminal's CRLFs), waits for each marker, closes the viewers and,
after a settle, reads VmRSS with N full buffers.

measured = (RSS with N full sessions - idle RSS) / N, in MiB; baseline = the ring buffer's
own payload (buffer_bytes, 1 MiB): the least a session with a full buffer can cost.
Target: measured <= 2 MiB. The replay a new viewer gets from one session is read at the
end to show its buffer really is full. Sessions are deleted and swept at the end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    ConsoleViewer,
    Daemon,
    bench_daemon,
    busybox_image,
    create_session,
    delete_session,
    drain,
    emit,
    log,
    metric,
    read_until,
    rss_kib,
    setup,
    shell_marker,
)

BUFFER_BYTES = 1024 * 1024  # the daemon's default console.buffer_bytes
PRINT_INPUT = 1_200_000  # base64 of this is 1.6 MB, plus CRLFs
CONCURRENCY = 5
SETTLE = 1.5


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def fill(base: str, session_id: str) -> int:
    """Print >= 1.5 MiB in the session's terminal through a viewer; returns bytes seen."""
    viewer = await ConsoleViewer.connect(base, session_id)
    try:
        await viewer.send(b"\r")
        await drain(viewer.read, quiet=0.1)
        expr, marker = shell_marker("mem")
        await viewer.send(f"head -c {PRINT_INPUT} /dev/zero | base64; echo {expr}\r".encode())
        return await read_until(viewer.read, marker, 120)
    finally:
        await viewer.close()


async def gather_bounded(items: list[Any], make: Any) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(items), CONCURRENCY):
        out += await asyncio.gather(*(make(i) for i in items[start : start + CONCURRENCY]))
    return out


async def measure(daemon: Daemon, repo: Path, count: int) -> dict[str, Any]:
    pid = daemon.pid
    out: dict[str, Any] = {}
    ids: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await http.get(f"{daemon.url}/health")
        await http.get(f"{daemon.url}/api/sessions")
        await asyncio.sleep(SETTLE)
        out["idle_kib"] = rss_kib(pid)
        try:
            names = [f"mem{i:03d}" for i in range(count)]

            async def make(name: str) -> str:
                session_id = await create_session(http, daemon.url, repo, name=name)
                ids.append(session_id)
                return session_id

            await gather_bounded(names, make)
            await asyncio.sleep(SETTLE)
            out["empty_kib"] = rss_kib(pid)
            log.info("%d sessions running, rss %.1f MiB", len(ids), out["empty_kib"] / 1024)
            t0 = time.perf_counter()
            printed = await gather_bounded(ids, lambda i: fill(daemon.url, i))
            out["fill_s"] = time.perf_counter() - t0
            out["printed_min"] = min(printed)
            await asyncio.sleep(SETTLE)
            out["full_kib"] = rss_kib(pid)
            out["hwm_kib"] = status_kib(pid, "VmHWM")
            log.info("buffers full, rss %.1f MiB", out["full_kib"] / 1024)
            # A new viewer's replay: the buffer's content (cut at a line start).
            viewer = await ConsoleViewer.connect(daemon.url, ids[0])
            try:
                out["replay_bytes"] = await drain(viewer.read, quiet=0.3)
            finally:
                await viewer.close()
        finally:
            for start in range(0, len(ids), CONCURRENCY):
                await asyncio.gather(*(delete_session(http, daemon.url, i, timeout=120)
                                       for i in ids[start : start + CONCURRENCY]))  # fmt: skip
            if ids:
                log.info("deleted %d sessions", len(ids))
    out["sessions"] = len(ids)
    return out


def main() -> None:
    args = setup(__doc__ or "")
    count = 3 if args.quick else 20
    image = busybox_image()
    with bench_daemon("corral-bench-cmem-", image) as (daemon, repo, _root):
        m = asyncio.run(measure(daemon, repo, count))
    mib = 1024.0
    per_session = (m["full_kib"] - m["idle_kib"]) / count / mib
    metrics = {
        "rss_per_full_session": metric(
            measured=per_session, baseline=BUFFER_BYTES / 1024 / mib, unit="MiB",
            target_field="measured", target_op="<=", target=2.0, samples=count,
            baseline_samples=1, sessions=count,
            idle_mib=round(m["idle_kib"] / mib, 2),
            empty_buffers_mib=round(m["empty_kib"] / mib, 2),
            full_buffers_mib=round(m["full_kib"] / mib, 2),
            per_session_empty_mib=round((m["empty_kib"] - m["idle_kib"]) / count / mib, 3),
            buffer_fill_per_session_mib=round((m["full_kib"] - m["empty_kib"]) / count / mib, 3),
            peak_hwm_mib=round(m["hwm_kib"] / mib, 2),
            printed_min_bytes=m["printed_min"], replay_bytes=m["replay_bytes"],
            fill_all_s=round(m["fill_s"], 2),
        ),
    }  # fmt: skip
    emit("console_memory", args.quick, metrics, image=image)


if __name__ == "__main__":
    main()
