"""Time from ``docker kill`` to the ``session_status`` event on ``/ws/events``.

N busybox sessions are created through the API (automatic recovery off, so nothing moves
but what is measured). A ``/ws/events`` client subscribes to every session, and a raw
``/events`` stream of the engine (aiodocker, in this process) watches the same containers.
For each session in turn the bench kills its container with a raw aiodocker call and
times, from just before the call:

* measured: the first ``session_status`` for that session whose health is ``error`` (the
  daemon's verdict from the engine's ``die`` event and one inspection; a ``stopped``
  status from the terminal ending may come first and is reported apart);
* baseline: the engine's own ``die`` event on the raw stream (what any watcher could know).

Target: p99 <= 1 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiodocker
import aiohttp
from _common import (
    ApiError,
    api,
    bench_daemon,
    busybox_image,
    create_session,
    emit,
    log,
    median,
    metric,
    percentile,
    setup,
)

TIMEOUT = 10.0  # per kill


class EventsClient:
    """A /ws/events subscriber keeping the arrival time of every event."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.seen.append((time.perf_counter(), json.loads(message.data)))

    async def first(self, after: float, **match: Any) -> float:
        deadline = time.perf_counter() + TIMEOUT
        while time.perf_counter() < deadline:
            for at, event in self.seen:
                if at >= after and all(event.get(k) == v for k, v in match.items()):
                    return at
            await asyncio.sleep(0.001)
        raise ApiError(f"no event {match} within {TIMEOUT} s")

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()


class RawEvents:
    """The engine's /events stream for the daemon's containers, read in this process."""

    def __init__(self, docker: aiodocker.Docker, instance: str) -> None:
        self.docker = docker
        self.instance = instance
        self.died: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        filters = {"type": ["container"], "event": ["die"],
                   "label": [f"corral.daemon_instance={self.instance}"]}  # fmt: skip
        response = await self.docker._do_query(
            "events", method="GET", params={"filters": json.dumps(filters)}, timeout=None
        )
        self.ready.set()
        try:
            while line := await response.content.readline():
                event = json.loads(line)
                self.died.setdefault(event["Actor"]["ID"], time.perf_counter())
        finally:
            response.close()

    async def wait_ready(self) -> None:
        assert self._task is not None
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait([ready, self._task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()  # raises what went wrong
        if not self.ready.is_set():
            raise ApiError("the engine's events stream did not open")

    async def died_at(self, container_id: str) -> float:
        deadline = time.perf_counter() + TIMEOUT
        while container_id not in self.died:
            if time.perf_counter() > deadline:
                raise ApiError(f"no die event for {container_id}")
            await asyncio.sleep(0.001)
        return self.died[container_id]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def run(base: str, repo: Any, instance: str, count: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"status": [], "first_status": [], "die": []}
    async with aiohttp.ClientSession() as http:
        sessions = []
        for _ in range(count):
            sid = await create_session(http, base, repo)
            _, body = await api(http, "GET", f"{base}/api/sessions/{sid}")
            sessions.append((sid, body["session"]["container_id"]))
        log.info("%d sessions running", len(sessions))
        ws = await http.ws_connect(f"{base.replace('http', 'ws', 1)}/ws/events")
        await ws.send_str(json.dumps({"type": "subscribe", "session_id": "*"}))
        events = EventsClient(ws)
        await events.first(0.0, type="subscribed")
        docker = aiodocker.Docker()
        raw = RawEvents(docker, instance)
        raw.start()
        try:
            await raw.wait_ready()
            for sid, container_id in sessions:
                t0 = time.perf_counter()
                await docker.containers.container(container_id).kill()
                status = await events.first(t0, type="session_status", session_id=sid,
                                            health="error")  # fmt: skip
                first = await events.first(t0, type="session_status", session_id=sid)
                died = await raw.died_at(container_id)
                out["status"].append((status - t0) * 1000)
                out["first_status"].append((first - t0) * 1000)
                out["die"].append((died - t0) * 1000)
                await asyncio.sleep(0.05)  # one kill at a time: each is timed alone
        finally:
            await raw.close()
            await events.close()
            await docker.close()
    return out


def main() -> None:
    args = setup(__doc__ or "")
    count = 3 if args.quick else 20
    image = busybox_image()
    # Nothing recreated behind the bench's back: only the detection is measured.
    env = {"CORRAL_RECONCILE__AUTO_RECOVER": "false"}
    with bench_daemon("corral-bench-kill-", image, extra_env=env) as (daemon, repo, _):
        times = asyncio.run(run(daemon.url, repo, str(daemon.data_dir), count))
    status, die = times["status"], times["die"]
    log.info("kill -> session_status(error) p50 %.1f ms p99 %.1f ms; raw die p99 %.1f ms",
             percentile(status, 50), percentile(status, 99), percentile(die, 99))  # fmt: skip
    metrics = {
        "kill_to_status_p99": metric(
            measured=percentile(status, 99),
            baseline=percentile(die, 99),
            unit="ms",
            target_field="measured",
            target_op="<=",
            target=1000.0,
            samples=len(status),
            measured_p50=round(median(status), 3),
            baseline_p50=round(median(die), 3),
            first_status_p99=round(percentile(times["first_status"], 99), 3),
        )
    }
    emit("reconcile_kill_to_event", args.quick, metrics, sessions=count)


if __name__ == "__main__":
    main()
