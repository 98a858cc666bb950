"""/ws/events fan-out: 10 subscribers to one session, events published with persistence on,
against a minimal unpersisted aiohttp broadcaster measured in the same run.

Each server runs in its own process (bench/_events.py): corral's real app (create_app, its
SQLite store in a temporary data dir, the EventHub with its group commit, /ws/events) or
the baseline, a tiny aiohttp app whose /ws/events sends each event, serialised once, to
every connected socket and stores nothing. The server publishes chat_message events
(200-character content) stamped with ``time.time()``; the 10 subscribers, in the bench
process, take each event's latency on arrival and check that every seq comes once, in
order. Each step connects 10 fresh subscribers, publishes, and waits until all of them
have every event (or the step times out).

- Latency: 1,000 events/s for 5 s, 3 interleaved rounds; p50 and p99 over all subscribers'
  events, median of the rounds. Target: p99 <= 20 ms and 0 gaps (seqs skipped, repeated or
  out of order, summed over subscribers and rounds).
- Highest delivered rate: open-loop steps of 2 s starting at 1,000 events/s, x1.5 a step,
  until a step is incomplete (a subscriber missed events, e.g. closed as too slow) or
  delivers under 90% of its offered rate, then two bisecting steps between the last good
  and the first bad rate. A step's delivered rate is its events / (last arrival at the
  slowest subscriber - first publish); the figure is the best complete step. 3 interleaved
  rounds, median. Target: corral >= 50% of the broadcaster.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from typing import Any

from _common import emit, log, median, metric, percentile, setup, workdir
from _events import ServerProcess, Subscriber, connect

SUBSCRIBERS = 10
RATE = 1000.0
PAD = 200
GOOD_FRACTION = 0.9  # a step delivering less than this share of its offered rate is saturated
RAMP_FACTOR = 1.5
DRAIN_SECONDS = 10.0  # how long subscribers may take after the last publish


def gaps(sub: Subscriber, first: int, last: int) -> int:
    """Seqs of first..last this subscriber did not get exactly once and in order."""
    if sub.count == 0:
        return last - first + 1
    return sub.anomalies + max(0, sub.first_seq - first) + max(0, last - sub.last_seq)


async def run_step(server: ServerProcess, rate: float, count: int) -> dict[str, Any]:
    """Connect fresh subscribers, have the server publish ``count`` events at ``rate``."""
    loop = asyncio.get_running_loop()
    subs = list(
        await asyncio.gather(*(connect(server.port, server.session_id) for _ in range(SUBSCRIBERS)))
    )
    try:
        for sub in subs:
            sub.expect(count)
        server_cpu0, client_cpu0, wall0 = server.cpu(), time.process_time(), time.perf_counter()
        reply = await loop.run_in_executor(
            None, functools.partial(server.request, "publish", rate=rate, count=count, pad=PAD)
        )
        await asyncio.wait([sub.done for sub in subs], timeout=DRAIN_SECONDS)
        wall = time.perf_counter() - wall0
        server_cpu_s = server.cpu() - server_cpu0
        client_cpu_s = time.process_time() - client_cpu0
    finally:
        for sub in subs:
            sub.close()
    first, last = reply["first_seq"], reply["last_seq"]
    missed = sum(gaps(sub, first, last) for sub in subs)
    complete = missed == 0 and all(sub.count == count for sub in subs)
    slowest = max(sub.last_receive for sub in subs)
    delivered = min(sub.count for sub in subs) / max(slowest - reply["t_first"], 1e-9)
    latencies = [x for sub in subs for x in sub.latencies]
    step = {
        "offered": round(rate, 1),
        "events": count,
        "delivered": round(delivered, 1),
        "complete": complete,
        "gaps": missed,
        "closed": sorted(sub.closed_code for sub in subs if sub.closed_code is not None),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "max_ms": round(max(latencies, default=math.nan) * 1e3, 3),
        "latency_samples": len(latencies),
        "publish_s": round(reply["t_published"] - reply["t_first"], 3),
        # Fractions of one core while the step ran, and CPU time per event, which moves
        # less with what else the machine runs.
        "server_cpu": round(server_cpu_s / wall, 3),
        "client_cpu": round(client_cpu_s / wall, 3),
        "server_cpu_us_per_event": round(server_cpu_s / count * 1e6, 1),
    }
    log.info("%-8s %7.0f/s offered  %7.0f/s delivered  %s  gaps %d  p50 %.2f ms  p99 %.2f ms"
             "  server cpu %3.0f%%  client cpu %3.0f%%", server.mode, rate, delivered,
             "complete" if complete else "INCOMPLETE", missed, step["p50_ms"], step["p99_ms"],
             step["server_cpu"] * 100, step["client_cpu"] * 100)  # fmt: skip
    await asyncio.sleep(0.2)  # let the closed sockets go before the next step
    return step


def good(step: dict[str, Any]) -> bool:
    return bool(step["complete"]) and step["delivered"] >= GOOD_FRACTION * step["offered"]


async def ramp(
    server: ServerProcess, seconds: float, max_steps: int, refine: int
) -> tuple[float, list[dict[str, Any]]]:
    """The best delivered rate of a complete step, and every step taken."""
    steps: list[dict[str, Any]] = []
    low: float | None = None
    high: float | None = None
    rate = RATE
    for _ in range(max_steps):
        step = await run_step(server, rate, max(1, int(rate * seconds)))
        steps.append(step)
        if not good(step):
            high = rate
            break
        low = rate
        rate *= RAMP_FACTOR
    for _ in range(refine):
        if low is None or high is None:
            break
        rate = math.sqrt(low * high)
        step = await run_step(server, rate, max(1, int(rate * seconds)))
        steps.append(step)
        if good(step):
            low = rate
        else:
            high = rate
    best = max((s["delivered"] for s in steps if s["complete"]), default=0.0)
    return float(best), steps


async def measure(servers: dict[str, ServerProcess], quick: bool) -> dict[str, Any]:
    rounds = 1 if quick else 3
    ramp_rounds = 1 if quick else 3
    latency_seconds = 0.5 if quick else 5.0
    step_seconds = 0.3 if quick else 2.0
    max_steps = 2 if quick else 12
    refine = 0 if quick else 2
    latency: dict[str, list[dict[str, Any]]] = {label: [] for label in servers}
    rates: dict[str, list[float]] = {label: [] for label in servers}
    ramps: dict[str, list[list[dict[str, Any]]]] = {label: [] for label in servers}
    for server in servers.values():  # warm-up, not reported
        await run_step(server, RATE, int(RATE * (0.2 if quick else 1.0)))
    labels = list(servers)
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            log.info("latency round %d: %s", r + 1, label)
            latency[label].append(await run_step(servers[label], RATE, int(RATE * latency_seconds)))
    for r in range(ramp_rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            log.info("ramp round %d: %s", r + 1, label)
            best, steps = await ramp(servers[label], step_seconds, max_steps, refine)
            rates[label].append(best)
            ramps[label].append(steps)
            log.info("ramp round %d: %s best %.0f events/s", r + 1, label, best)

    def med(label: str, key: str) -> float:
        return median([step[key] for step in latency[label]])

    def cpu(label: str) -> float:
        return round(med(label, "server_cpu"), 3)

    events = sum(step["events"] for step in latency["corral"])
    metrics = {
        "latency_p99_1000eps": metric(
            measured=med("corral", "p99_ms"), baseline=med("baseline", "p99_ms"), unit="ms",
            target_field="measured", target_op="<=", target=20.0, samples=rounds,
            measured_p50=round(med("corral", "p50_ms"), 3),
            baseline_p50=round(med("baseline", "p50_ms"), 3),
            measured_max=max(step["max_ms"] for step in latency["corral"]),
            baseline_max=max(step["max_ms"] for step in latency["baseline"]),
            latency_samples=sum(step["latency_samples"] for step in latency["corral"]),
            server_cpu=cpu("corral"), baseline_server_cpu=cpu("baseline"),
            server_cpu_us_per_event=round(med("corral", "server_cpu_us_per_event"), 1),
            baseline_server_cpu_us_per_event=round(med("baseline", "server_cpu_us_per_event"), 1),
            rounds_p99_ms=[step["p99_ms"] for step in latency["corral"]],
            baseline_rounds_p99_ms=[step["p99_ms"] for step in latency["baseline"]],
        ),
        "gaps_1000eps": metric(
            measured=sum(step["gaps"] for step in latency["corral"]),
            baseline=sum(step["gaps"] for step in latency["baseline"]), unit="events",
            target_field="measured", target_op="<=", target=0, samples=rounds,
            events_per_subscriber=events, subscribers=SUBSCRIBERS,
            complete_rounds=sum(1 for step in latency["corral"] if step["complete"]),
        ),
        "max_delivered_rate": metric(
            measured=median(rates["corral"]), baseline=median(rates["baseline"]),
            unit="events/s", target_field="ratio", target_op=">=", target=0.5,
            samples=ramp_rounds, rounds=rates["corral"], baseline_rounds=rates["baseline"],
            messages_per_s=round(median(rates["corral"]) * SUBSCRIBERS, 1),
            baseline_messages_per_s=round(median(rates["baseline"]) * SUBSCRIBERS, 1),
            steps=ramps["corral"], baseline_steps=ramps["baseline"],
        ),
    }  # fmt: skip
    return metrics


def main() -> None:
    args = setup(__doc__ or "")
    load_before = os.getloadavg()[0]  # the machine's own load, to read the figures by
    with workdir("corral-bench-events-") as root:
        servers = {
            "corral": ServerProcess("corral", root / "data"),
            "baseline": ServerProcess("baseline", root / "baseline"),
        }
        try:
            for server in servers.values():
                server.wait_ready()
            metrics = asyncio.run(measure(servers, args.quick))
        finally:
            for server in servers.values():
                server.stop()
    emit("events_fanout", args.quick, metrics, subscribers=SUBSCRIBERS, rate=RATE,
         content_chars=PAD, loadavg=[load_before, os.getloadavg()[0]])  # fmt: skip


if __name__ == "__main__":
    main()
