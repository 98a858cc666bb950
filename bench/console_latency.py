"""Keystroke echo latency through /ws/console vs terminado vs the raw Engine API stream.

Three ways to one busybox shell in a container of the same image, all read and written
from this process, one at a time:

- corral: a Docker session's ``/ws/console`` (binary frames), through the daemon;
- terminado (PyPI ``terminado``, pinned ``terminado==0.18.1``; a tornado server in its own
  process) serving ``docker exec -it <container> sh`` on ``/lat`` with its JSON protocol
  (``["stdin", text]`` in, ``["stdout", text]`` out);
- raw: the container's Engine API TTY stream, hijacked (``POST /containers/{id}/attach``,
  ``Upgrade: tcp``) over the unix socket with plain asyncio streams.

Each shell first runs ``stty -icanon echo; cat >/dev/null``, so the terminal's own line
discipline echoes every key at once and the figure is the transport's, not a program's.
A probe sends one printable byte and times until that byte comes back; keys are 2-6 ms
apart. ROUNDS x KEYS keys per way (5 x 100 = 500), the ways in rotating order each round.

Two phases: idle, and while ANOTHER terminal of the same way floods (``while :; do head -c
1000000 /dev/zero | base64; done``) with its own viewer reading everything in a separate
process: for corral another session of the same daemon, for terminado another terminal
(``/flood``, ``docker exec`` into another container) of the same tornado server, for raw
another container's raw stream. A flood runs only while its own way is measured, and is
stopped (Ctrl-C, then a marker) before the next way starts.

Targets: corral p99 <= terminado p99 (ratio <= 1), and corral p99 - raw p99 <= 1 ms, in
both phases. p50s are reported alongside, with, for the daemon while corral's keys were
timed, its CPU use and its run-queue wait (seconds per second it was runnable but not
running, from /proc/<pid>/schedstat: high means the machine, not the daemon, was busy), and
each way's flood rate (corral's is lower by design: while a terminal is typed into, the
daemon reads a flooding neighbour at 2 MB/s; docs/decisions.md, "The console").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any

try:
    import terminado  # noqa: F401 - the baseline; pinned: terminado==0.18.1
except ImportError as exc:  # pragma: no cover - a clear message instead of a traceback
    raise SystemExit(
        "console_latency.py needs terminado for its baseline: pip install 'terminado==0.18.1'"
    ) from exc

import aiodocker
import aiohttp
from _common import (
    LABEL_BENCH,
    ConsoleViewer,
    Daemon,
    MarkerScanner,
    RawAttach,
    bench_daemon,
    busybox_image,
    create_session,
    docker_sweep,
    drain,
    emit,
    free_port,
    log,
    median,
    metric,
    percentile,
    read_until,
    schedstat,
    setup,
    shell_marker,
    start_raw_container,
)

WAYS = ("corral", "terminado", "raw")
KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789"
KEY_TIMEOUT = 10.0
GAP = (0.002, 0.006)  # seconds between keys, uniform
FLOOD = b"while :; do head -c 1000000 /dev/zero | base64; done\r"
FLOOD_STARTED_BYTES = 512 * 1024  # the flood counts as running once this much came
STOP_TIMEOUT = 60.0


# --- the three ways to a terminal, one interface: send(bytes), read(timeout) -> bytes | None ---


class TerminadoClient:
    """terminado's /websocket protocol: JSON text frames ``[kind, data]``."""

    def __init__(self, http: aiohttp.ClientSession, ws: Any) -> None:
        self.http = http
        self.ws = ws

    @classmethod
    async def connect(cls, port: int, path: str) -> TerminadoClient:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}/{path}", max_msg_size=0)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def read(self, timeout: float | None = None) -> bytes | None:
        while True:
            try:
                message = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                return None
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"terminado closed: {message.type.name} {message.data!r}")
            kind, *rest = json.loads(message.data)
            if kind == "stdout":
                return str(rest[0]).encode()
            if kind == "disconnect":
                raise ConnectionError("terminado: the terminal ended")

    async def send(self, data: bytes) -> None:
        await self.ws.send_str(json.dumps(["stdin", data.decode()]))

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def connect_way(way: str, spec: dict[str, Any], role: str) -> Any:
    """A client of ``way`` to its ``role`` ("lat" or "flood") terminal."""
    if way == "corral":
        return await ConsoleViewer.connect(spec["daemon_url"], spec["sessions"][role])
    if way == "terminado":
        return await TerminadoClient.connect(spec["terminado_port"], role)
    return await RawAttach.open(spec["raw"][role])


async def shell_ready(client: Any) -> None:
    """Wait for the shell (a prompt), then put its terminal in kernel-echo mode under cat."""
    await client.send(b"\r")
    expr, marker = shell_marker("up")
    await client.send(f"echo {expr}\r".encode())
    await read_until(client.read, marker, 30)
    expr, marker = shell_marker("ready")
    await client.send(f"stty -icanon echo; echo {expr}; cat >/dev/null\r".encode())
    await read_until(client.read, marker, 30)
    await drain(client.read, quiet=0.3)


# --- the terminado server (its own process) ---------------------------------------------------


def terminado_server(port: int, commands: dict[str, list[str]], conn: Any) -> None:
    """tornado + terminado: one UniqueTermManager per path; stops when ``conn`` closes."""
    import tornado.web
    from terminado.management import UniqueTermManager
    from terminado.websocket import TermSocket

    async def serve() -> None:
        managers = {path: UniqueTermManager(shell_command=argv) for path, argv in commands.items()}
        app = tornado.web.Application(
            [(f"/{path}", TermSocket, {"term_manager": m}) for path, m in managers.items()]
        )
        server = app.listen(port, address="127.0.0.1")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)
        conn.send("ready")
        await stop.wait()
        server.stop()
        for manager in managers.values():
            await manager.shutdown()

    asyncio.run(serve())


# --- the flood worker (its own process): every way's flooding terminal and its viewer -------


async def _flood_main(spec: dict[str, Any], conn: Any) -> None:
    loop = asyncio.get_running_loop()
    clients = {way: await connect_way(way, spec, "flood") for way in WAYS}
    counts = dict.fromkeys(WAYS, 0)
    watch: dict[str, tuple[bytes, asyncio.Future[None]]] = {}

    async def pump(way: str) -> None:
        client = clients[way]
        scanner: MarkerScanner | None = None
        while True:
            data = await client.read(None)
            if data is None:
                continue
            counts[way] += len(data)
            if way in watch:
                marker, done = watch[way]
                if scanner is None or scanner.marker != marker:
                    scanner = MarkerScanner(marker)
                if scanner.feed(data) and not done.done():
                    done.set_result(None)

    for way in WAYS:
        await shell_ready_flood(clients[way])
    tasks = [asyncio.create_task(pump(way)) for way in WAYS]
    conn.send(("ready",))
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "quit":
                break
            kind, way = command
            client = clients[way]
            if kind == "start":
                start = counts[way]
                await client.send(FLOOD)
                deadline = loop.time() + 30
                while counts[way] - start < FLOOD_STARTED_BYTES:
                    if loop.time() > deadline:
                        raise TimeoutError(f"{way}: the flood did not start")
                    await asyncio.sleep(0.01)
                conn.send(("started", counts[way], loop.time()))
            elif kind == "stop":
                t0 = loop.time()
                expr, marker = shell_marker("calm")
                done: asyncio.Future[None] = loop.create_future()
                watch[way] = (marker, done)
                while not done.done():
                    if loop.time() - t0 > STOP_TIMEOUT:
                        raise TimeoutError(f"{way}: the flood did not stop")
                    await client.send(b"\x03")
                    await asyncio.sleep(0.05)
                    await client.send(f"echo {expr}\r".encode())
                    await asyncio.wait({done}, timeout=5)
                watch.pop(way)
                conn.send(("stopped", counts[way], loop.time()))
    finally:
        for task in tasks:
            task.cancel()
        for client in clients.values():
            await client.close()


async def shell_ready_flood(client: Any) -> None:
    await client.send(b"\r")
    expr, marker = shell_marker("up")
    await client.send(f"echo {expr}\r".encode())
    await read_until(client.read, marker, 30)
    await drain(client.read, quiet=0.2)


def flood_worker(spec: dict[str, Any], conn: Any) -> None:
    try:
        asyncio.run(_flood_main(spec, conn))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        raise


class FloodControl:
    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=flood_worker, args=(spec, child), daemon=True)
        self.proc.start()
        child.close()

    async def ask(self, *command: str, timeout: float = STOP_TIMEOUT + 10) -> tuple[Any, ...]:
        if command:
            self.conn.send(command)
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self.conn.poll, timeout)
        if not ready:
            raise TimeoutError(f"flood worker: no answer to {command}")
        answer: tuple[Any, ...] = self.conn.recv()
        if answer[0] == "error":
            raise RuntimeError(f"flood worker failed: {answer[1]}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("quit",))
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


# --- measuring ----------------------------------------------------------------------------------


async def keystrokes(client: Any, count: int, rng: random.Random) -> list[float]:
    """Echo latencies in ms: send one byte, read until it comes back."""
    out: list[float] = []
    await drain(client.read, quiet=0.05)
    for i in range(count):
        key = KEYS[i % len(KEYS) : i % len(KEYS) + 1]
        t0 = time.perf_counter()
        await client.send(key)
        while True:
            data = await client.read(KEY_TIMEOUT)
            if data is None:
                raise TimeoutError(f"key {key!r} not echoed within {KEY_TIMEOUT} s")
            if key in data:
                break
        out.append((time.perf_counter() - t0) * 1000.0)
        await asyncio.sleep(rng.uniform(*GAP))
    return out


async def bench(daemon: Daemon, repo: Path, root: Path, image: str, quick: bool) -> dict[str, Any]:
    rounds, per_round = (1, 20) if quick else (5, 100)
    tag = str(root)
    rng = random.Random(7)
    docker = aiodocker.Docker()
    probes: dict[str, Any] = {}
    flood: FloodControl | None = None
    server = None
    server_conn = None
    result: dict[str, Any] = {"rounds": rounds, "keys_per_round": per_round}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            sessions = {role: await create_session(http, daemon.url, repo, name=f"lat-{role}")
                        for role in ("lat", "flood")}  # fmt: skip
        containers = {f"{way}-{role}": await start_raw_container(docker, image, tag)
                      for way in ("terminado", "raw") for role in ("lat", "flood")}  # fmt: skip
        port = free_port()
        ctx = multiprocessing.get_context("spawn")
        server_conn, child = ctx.Pipe()
        commands = {role: ["docker", "exec", "-it", containers[f"terminado-{role}"], "sh"]
                    for role in ("lat", "flood")}  # fmt: skip
        server = ctx.Process(target=terminado_server, args=(port, commands, child), daemon=True)
        server.start()
        child.close()
        if not server_conn.poll(30) or server_conn.recv() != "ready":
            raise RuntimeError("the terminado server did not start")
        spec = {
            "daemon_url": daemon.url, "sessions": sessions, "terminado_port": port,
            "raw": {"lat": containers["raw-lat"], "flood": containers["raw-flood"]},
        }  # fmt: skip
        flood = FloodControl(spec)
        for way in WAYS:
            probes[way] = await connect_way(way, spec, "lat")
            await shell_ready(probes[way])
        await flood.ask(timeout=90)  # ("ready",)
        log.info("all terminals ready")

        samples: dict[str, dict[str, list[float]]] = {
            p: {w: [] for w in WAYS} for p in ("idle", "flood")
        }
        flood_rates: dict[str, list[float]] = {w: [] for w in WAYS}
        # the daemon while its own way is measured: (on-CPU, run-queue wait) per second
        daemon_sched: dict[str, list[tuple[float, float]]] = {"idle": [], "flood": []}
        for phase in ("idle", "flood"):
            for r in range(rounds):
                order = list(WAYS[r % 3 :] + WAYS[: r % 3])
                for way in order:
                    if phase == "flood":
                        _, c0, t0 = await flood.ask("start", way)
                    s0, w0 = schedstat(daemon.pid), time.perf_counter()
                    lat = await keystrokes(probes[way], per_round, rng)
                    s1, w1 = schedstat(daemon.pid), time.perf_counter()
                    samples[phase][way] += lat
                    if way == "corral":
                        daemon_sched[phase].append(
                            ((s1[0] - s0[0]) / (w1 - w0), (s1[1] - s0[1]) / (w1 - w0))
                        )
                    if phase == "flood":
                        _, c1, t1 = await flood.ask("stop", way)
                        flood_rates[way].append((c1 - c0) / (t1 - t0) / 1e6)
                    log.info(
                        "%s round %d %-9s p50 %.2f ms p99 %.2f ms",
                        phase, r, way, percentile(lat, 50), percentile(lat, 99),
                    )  # fmt: skip
        result.update(samples=samples, flood_mbps=flood_rates, daemon_sched=daemon_sched)
    finally:
        for client in probes.values():
            with contextlib.suppress(Exception):
                await client.close()
        if flood is not None:
            flood.close()
        if server_conn is not None:
            server_conn.close()  # the server stops when its pipe closes
        if server is not None:
            server.join(timeout=15)
            if server.is_alive():
                server.kill()
                server.join(timeout=5)
        await docker.close()
        docker_sweep(LABEL_BENCH, tag)
    return result


def stats(values: list[float]) -> dict[str, float]:
    return {f"p{p}": round(percentile(values, p), 3) for p in (50, 90, 99)} | {
        "max": round(max(values), 3)
    }


def main() -> None:
    args = setup(__doc__ or "")
    image = busybox_image()
    with bench_daemon("corral-bench-lat-", image) as (daemon, repo, root):
        r = asyncio.run(bench(daemon, repo, root, image, args.quick))
    metrics: dict[str, Any] = {}
    for phase in ("idle", "flood"):
        s = r["samples"][phase]
        corral = percentile(s["corral"], 99)
        extra: dict[str, Any] = {"corral": stats(s["corral"]), "terminado": stats(s["terminado"]),
                                 "raw": stats(s["raw"])}  # fmt: skip
        sched = r["daemon_sched"][phase]
        # the daemon during corral's keys: CPU it used, and time it was runnable but waited
        extra["daemon_cpu"] = round(median([c for c, _ in sched]), 3)
        extra["daemon_runqueue_wait"] = round(median([w for _, w in sched]), 3)
        if phase == "flood":
            extra["flood_mbps_median"] = {
                w: round(median(v), 2) for w, v in r["flood_mbps"].items()
            }
        metrics[f"{phase}_p99_vs_terminado"] = metric(
            measured=corral, baseline=percentile(s["terminado"], 99), unit="ms",
            target_field="ratio", target_op="<=", target=1.0, samples=len(s["corral"]),
            baseline_samples=len(s["terminado"]), **extra,
        )  # fmt: skip
        metrics[f"{phase}_p99_vs_raw"] = metric(
            measured=corral, baseline=percentile(s["raw"], 99), unit="ms",
            target_field="overhead", target_op="<=", target=1.0, samples=len(s["corral"]),
            baseline_samples=len(s["raw"]),
            p50=round(percentile(s["corral"], 50), 3),
            baseline_p50=round(percentile(s["raw"], 50), 3),
        )  # fmt: skip
    emit("console_latency", args.quick, metrics, image=image, terminado=_terminado_version(),
         keys=r["rounds"] * r["keys_per_round"])  # fmt: skip


def _terminado_version() -> str:
    from importlib.metadata import version

    return version("terminado")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
