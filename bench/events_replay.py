"""/ws/events replay: a new subscriber asks for a session's 10,000 stored events with
``since_seq: 0``, against reading the same rows straight from SQLite in the same run.

The server is corral's real app in its own process (bench/_events.py): a fresh store, one
session, and 10,000 chat_message events (200-character content) published through the
EventHub, so they are stored exactly as the daemon stores them. Each sample opens a new
/ws/events socket and times from sending ``subscribe`` to the arrival of the 10,000th
event (every seq checked once and in order). The baseline, in the bench process, reads
the same 10,000 rows with aiosqlite (``SELECT ... ORDER BY seq`` and ``fetchall``, one
connection kept open as the daemon keeps its own) and json-decodes every payload.
7 interleaved pairs after a warm-up, median. Target: replay <= 1 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiosqlite
from _common import emit, log, median, metric, setup, workdir
from _events import ServerProcess, connect

EVENTS = 10_000
PAD = 200
SELECT = (
    "SELECT session_id, seq, type, payload, timestamp FROM events "
    "WHERE session_id = ? AND seq > ? ORDER BY seq"
)


async def replay(server: ServerProcess, count: int) -> dict[str, Any]:
    """One new subscriber's replay from since_seq 0; the time until the last event came."""
    server_cpu0 = server.cpu()
    sub = await connect(server.port, server.session_id, since_seq=0)
    try:
        sub.expect(count)
        await asyncio.wait_for(asyncio.shield(sub.done), 120)
    finally:
        sub.close()
    if sub.count != count or sub.anomalies or sub.first_seq != 1 or sub.last_seq != count:
        raise RuntimeError(
            f"replay incomplete: {sub.count} events, seqs {sub.first_seq}..{sub.last_seq}, "
            f"{sub.anomalies} out of order, close code {sub.closed_code}"
        )
    return {
        "ms": (sub.completed_at - sub.t_subscribe) * 1e3,
        "server_cpu_s": server.cpu() - server_cpu0,
    }


async def read_rows(db: aiosqlite.Connection, session_id: str, count: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    async with db.execute(SELECT, (session_id, 0)) as cur:
        rows = await cur.fetchall()
    payloads = [json.loads(row[3]) for row in rows]
    elapsed = time.perf_counter() - t0
    if len(payloads) != count:
        raise RuntimeError(f"the store holds {len(payloads)} events, not {count}")
    return {"ms": elapsed * 1e3, "bytes": sum(len(row[3]) for row in rows)}


async def measure(server: ServerProcess, db_path: Path, count: int, pairs: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    seeded = await loop.run_in_executor(None, lambda: server.request("seed", count=count, pad=PAD))
    log.info("seeded %d events in %.2f s", seeded["last_seq"], time.perf_counter() - t0)
    if seeded["last_seq"] != count:
        raise RuntimeError(f"seeded up to seq {seeded['last_seq']}, not {count}")
    corral: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    async with aiosqlite.connect(db_path) as db:
        await replay(server, count)  # warm-up: the store's pages come into the cache
        await read_rows(db, server.session_id, count)
        for i in range(pairs):
            order = ("corral", "baseline") if i % 2 == 0 else ("baseline", "corral")
            for label in order:
                if label == "corral":
                    corral.append(await replay(server, count))
                else:
                    baseline.append(await read_rows(db, server.session_id, count))
            log.info("pair %d: replay %.1f ms, sqlite read %.1f ms", i + 1,
                     corral[-1]["ms"], baseline[-1]["ms"])  # fmt: skip
    replay_ms = [sample["ms"] for sample in corral]
    read_ms = [sample["ms"] for sample in baseline]
    return {
        "replay_10k": metric(
            measured=median(replay_ms), baseline=median(read_ms), unit="ms",
            target_field="measured", target_op="<=", target=1000.0, samples=pairs,
            measured_max=round(max(replay_ms), 3), baseline_max=round(max(read_ms), 3),
            samples_ms=[round(x, 1) for x in replay_ms],
            baseline_samples_ms=[round(x, 1) for x in read_ms],
            events_per_s=round(count / median(replay_ms) * 1e3, 1),
            server_cpu_s=round(median([s["server_cpu_s"] for s in corral]), 3),
            payload_bytes=baseline[0]["bytes"],
        ),
    }  # fmt: skip


def main() -> None:
    args = setup(__doc__ or "")
    load_before = os.getloadavg()[0]  # the machine's own load, to read the figures by
    count = 2_000 if args.quick else EVENTS
    pairs = 2 if args.quick else 7
    with workdir("corral-bench-replay-") as root:
        server = ServerProcess("corral", root / "data")
        try:
            server.wait_ready()
            metrics = asyncio.run(measure(server, root / "data" / "corral.db", count, pairs))
        finally:
            server.stop()
    emit("events_replay", args.quick, metrics, events=count, content_chars=PAD,
         loadavg=[load_before, os.getloadavg()[0]])  # fmt: skip


if __name__ == "__main__":
    main()
