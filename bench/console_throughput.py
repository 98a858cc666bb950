"""Console output throughput: bytes/s at a /ws/console viewer vs the terminal read directly.

The terminal runs ``head -c SIZE /dev/zero | base64 -w0; echo; echo end-<token>-$((n+1))``
(SIZE = 100,000,000: 133 MB of output); a reader counts the bytes from sending the command
to seeing ``end-<token>-<n+1>`` (a new token every run, so the marker never comes from a
replayed buffer) and divides by the time.

1. Docker: a Docker session's /ws/console read by an aiohttp client in this process (the
   daemon is a separate process) vs the raw Engine API TTY stream of an equivalent
   container of the same image (hijacked ``POST /containers/{id}/attach?...`` with
   ``Upgrade: tcp`` over the unix socket, plain asyncio streams, 256 KiB reads), read
   in this process. Target: ratio >= 0.95.
2. Local: a local session (``$SHELL=/bin/sh``) vs ``/bin/sh`` spawned here in a PTY with
   ptyprocess, the master read non-blocking from ``loop.add_reader`` (64 KiB reads).
   Target: ratio >= 0.85.

Each pair is run REPS times, interleaved (order alternating), after one warm-up each;
medians are reported, with the daemon's CPU use (fraction of one core) during its runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from _common import (
    CONSOLE_SIZE,
    LABEL_BENCH,
    ConsoleViewer,
    Daemon,
    MarkerScanner,
    RawAttach,
    bench_daemon,
    busybox_image,
    cpu_seconds,
    create_session,
    docker_sweep,
    drain,
    emit,
    log,
    median,
    metric,
    read_until,
    setup,
    shell_marker,
    start_raw_container,
)

RUN_TIMEOUT = 180.0  # one run, seconds
PTY_READ_BYTES = 64 * 1024


def flood_command(size: int, expr: str) -> bytes:
    return f"head -c {size} /dev/zero | base64 -w0; echo; echo {expr}\r".encode()


class Timed:
    def __init__(
        self, nbytes: int, seconds: float, client_cpu: float, daemon_cpu: float | None = None
    ) -> None:
        self.nbytes = nbytes
        self.seconds = seconds
        self.client_cpu = client_cpu  # this process, fraction of one core during the run
        self.daemon_cpu = daemon_cpu  # the daemon, fraction of one core during the run

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


async def stream_run(send: Any, read: Any, size: int, daemon_pid: int | None = None) -> Timed:
    """One run over a (send, read) pair: viewer or raw attach."""
    await drain(read, quiet=0.15)
    expr, marker = shell_marker("end")
    cpu0 = cpu_seconds(daemon_pid) if daemon_pid else 0.0
    own0 = time.process_time()
    t0 = time.perf_counter()
    await send(flood_command(size, expr))
    nbytes = await read_until(read, marker, RUN_TIMEOUT)
    seconds = time.perf_counter() - t0
    own = (time.process_time() - own0) / seconds
    cpu = (cpu_seconds(daemon_pid) - cpu0) / seconds if daemon_pid else None
    return Timed(nbytes, seconds, own, cpu)


class RawPty:
    """``/bin/sh`` in a PTY spawned here; the master is read from the loop (add_reader)."""

    def __init__(self, cwd: Path) -> None:
        from ptyprocess import PtyProcess

        cols, rows = CONSOLE_SIZE
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
               "TERM": "xterm-256color", "LANG": "C.UTF-8"}  # fmt: skip
        self.proc = PtyProcess.spawn(["/bin/sh"], cwd=str(cwd), env=env, dimensions=(rows, cols))
        self.fd = self.proc.fd
        os.set_blocking(self.fd, False)

    async def run(self, size: int) -> Timed:
        loop = asyncio.get_running_loop()
        await self._drain(0.15)
        expr, marker = shell_marker("end")
        scanner = MarkerScanner(marker)
        done: asyncio.Future[None] = loop.create_future()
        count = 0

        def readable() -> None:
            nonlocal count
            try:
                data = os.read(self.fd, PTY_READ_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                loop.remove_reader(self.fd)
                if not done.done():
                    done.set_exception(exc)
                return
            count += len(data)
            if scanner.feed(data) and not done.done():
                done.set_result(None)

        own0 = time.process_time()
        t0 = time.perf_counter()
        loop.add_reader(self.fd, readable)
        try:
            os.write(self.fd, flood_command(size, expr))
            await asyncio.wait_for(done, RUN_TIMEOUT)
        finally:
            loop.remove_reader(self.fd)
        seconds = time.perf_counter() - t0
        return Timed(count, seconds, (time.process_time() - own0) / seconds)

    async def _drain(self, quiet: float) -> None:
        deadline = time.monotonic() + 10
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < quiet:
            try:
                if os.read(self.fd, PTY_READ_BYTES):
                    last = time.monotonic()
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def close(self) -> None:
        self.proc.terminate(force=True)


async def interleave(pair: dict[str, Any], reps: int, size: int) -> tuple[list[Timed], list[Timed]]:
    """Warm-up, then ``reps`` runs of corral and baseline in alternating order."""
    corral, base = pair["corral"], pair["baseline"]
    await corral(size // 10)
    await base(size // 10)
    measured: list[Timed] = []
    baseline: list[Timed] = []
    for rep in range(reps):
        order = [(corral, measured), (base, baseline)]
        if rep % 2:
            order.reverse()
        for run, out in order:
            timed = await run(size)
            out.append(timed)
        m, b = measured[-1], baseline[-1]
        log.info("%s rep %d: corral %.1f MB/s (cpu: daemon %.2f, client %.2f), "
                 "baseline %.1f MB/s (cpu: reader %.2f)", pair["name"], rep, m.mbps,
                 m.daemon_cpu or 0, m.client_cpu, b.mbps, b.client_cpu)  # fmt: skip
    return measured, baseline


async def bench(daemon: Daemon, repo: Path, root: Path, image: str, quick: bool) -> dict[str, Any]:
    size = 5_000_000 if quick else 100_000_000
    reps = 1 if quick else 5
    tag = str(root)
    results: dict[str, Any] = {"size": size, "reps": reps}
    docker = aiodocker.Docker()
    viewers: list[ConsoleViewer] = []
    raws: list[RawAttach] = []
    pty: RawPty | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            # Docker
            sid = await create_session(http, daemon.url, repo, backend="docker", name="tput-d")
            viewer = await ConsoleViewer.connect(daemon.url, sid)
            viewers.append(viewer)
            raw = await RawAttach.open(await start_raw_container(docker, image, tag))
            raws.append(raw)
            await raw.send(b"\r")
            pair = {
                "name": "docker",
                "corral": lambda n: stream_run(viewer.send, viewer.read, n, daemon.pid),
                "baseline": lambda n: stream_run(raw.send, raw.read, n),
            }
            results["docker"] = await interleave(pair, reps, size)
            await viewer.close()
            await raw.close()

            # Local
            sid = await create_session(http, daemon.url, repo, backend="local", name="tput-l")
            lviewer = await ConsoleViewer.connect(daemon.url, sid)
            viewers.append(lviewer)
            (root / "pty-home").mkdir(exist_ok=True)
            pty = RawPty(root / "pty-home")
            pair = {
                "name": "local",
                "corral": lambda n: stream_run(lviewer.send, lviewer.read, n, daemon.pid),
                "baseline": pty.run,
            }
            results["local"] = await interleave(pair, reps, size)
    finally:
        for v in viewers:
            await v.close()
        for r in raws:
            await r.close()
        if pty is not None:
            pty.close()
        await docker.close()
        docker_sweep(LABEL_BENCH, tag)
    return results


def throughput_metric(
    runs: tuple[list[Timed], list[Timed]], target: float, size: int
) -> dict[str, Any]:
    measured, baseline = runs
    return metric(
        measured=median([t.mbps for t in measured]),
        baseline=median([t.mbps for t in baseline]),
        unit="MB/s", target_field="ratio", target_op=">=", target=target,
        samples=len(measured), baseline_samples=len(baseline),
        runs_mbps=[round(t.mbps, 1) for t in measured],
        baseline_runs_mbps=[round(t.mbps, 1) for t in baseline],
        daemon_cpu=round(median([t.daemon_cpu or 0.0 for t in measured]), 3),
        client_cpu=round(median([t.client_cpu for t in measured]), 3),
        baseline_reader_cpu=round(median([t.client_cpu for t in baseline]), 3),
        output_bytes=measured[0].nbytes, input_bytes=size,
    )  # fmt: skip


def main() -> None:
    args = setup(__doc__ or "")
    image = busybox_image()
    with bench_daemon("corral-bench-tput-", image, {"SHELL": "/bin/sh"}) as (daemon, repo, root):
        r = asyncio.run(bench(daemon, repo, root, image, args.quick))
    metrics = {
        "docker_throughput": throughput_metric(r["docker"], 0.95, r["size"]),
        "local_throughput": throughput_metric(r["local"], 0.85, r["size"]),
    }
    emit("console_throughput", args.quick, metrics, image=image)


if __name__ == "__main__":
    main()
