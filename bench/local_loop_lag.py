"""Event-loop lag while the local backend moves a flood: how late a 10 ms tick comes.

The local backend reads and writes the agent's PTY from the event loop (non-blocking fds,
``loop.add_reader``/``add_writer``); a blocking read or write would hold the loop, and with
it every other session, until the flood drained. The tests prove that by structure; the
figure lives here, where a busy machine makes it a number instead of a failed test.

Two phases, each with a ticker in the same loop (``asyncio.sleep(0.01)``, lateness = time
between wake-ups minus 10 ms):

1. ``flood_read``: ``/bin/sh`` in a local-backend session (``LocalBackend`` in this process,
   its public contract: create, start, attach, read) runs ``head -c SIZE /dev/zero |
   base64 -w0; echo; echo end-<token>-$((n+1))``, read until the marker.
2. ``input_write``: 1 MiB of input typed into ``head -c 1048576 | wc -c`` while the echo is
   drained, until ``wc`` reports every byte.

Baseline, same run, interleaved: ``/bin/sh`` spawned here with ptyprocess, the master fd
non-blocking and read from ``loop.add_reader`` (written from ``loop.add_writer``), the same
commands. Reported: each run's worst and p99 tick lateness, medians over the runs.
Target: worst lateness no more than 25 ms above the baseline's. Measured here (2 cores):
corral 2-5 ms, baseline 1-4 ms; a reader that keeps reading while data is there, never
giving the loop a turn, held it 45-240 ms on the same 20 MB flood, and a blocking write
holds it until the agent has read everything.

No Docker engine is needed. The tests (``tests/test_local_backend.py``) keep only a bound
a loaded machine never reaches; the figure is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
from _common import (
    CONSOLE_SIZE,
    MarkerScanner,
    emit,
    log,
    median,
    metric,
    percentile,
    setup,
    shell_marker,
)

from backends.base import ContainerSpec, Mount, TerminalStream
from backends.local import LocalBackend

TICK = 0.01
READ_BYTES = 64 * 1024
INPUT_BYTES = 1 << 20
RUN_TIMEOUT = 120.0
TARGET_OVERHEAD_MS = 25.0


@contextlib.asynccontextmanager
async def ticker() -> AsyncIterator[list[float]]:
    """Yields the list of every tick's lateness (seconds), filled while the block runs."""
    late: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(TICK)
            now = loop.time()
            late.append(max(0.0, now - last - TICK))
            last = now

    task = asyncio.create_task(tick())
    try:
        yield late
    finally:
        done.set()
        await task


Read = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


async def read_until(read: Read, marker: bytes, timeout: float = RUN_TIMEOUT) -> int:
    scanner = MarkerScanner(marker)
    total = 0
    async with asyncio.timeout(timeout):
        while True:
            chunk = await read()
            if not chunk:
                raise RuntimeError(f"the terminal ended before {marker!r}")
            total += len(chunk)
            if scanner.feed(chunk):
                return total


async def flood(read: Read, write: Write, size: int) -> list[float]:
    expr, marker = shell_marker("end")
    async with ticker() as late:
        await write(f"head -c {size} /dev/zero | base64 -w0; echo; echo {expr}\r".encode())
        await read_until(read, marker)
    return late


async def typed(read: Read, write: Write) -> list[float]:
    expr, marker = shell_marker("wc")
    await write(f"head -c {INPUT_BYTES} | wc -c; echo {expr}\r".encode())
    reader = asyncio.create_task(read_until(read, marker))
    payload = (b"y" * 63 + b"\n") * (INPUT_BYTES // 64)
    async with ticker() as late:
        await write(payload)
        await reader
    return late


class Local:
    """A local-backend session running ``/bin/sh``."""

    stream: TerminalStream

    def __init__(self, backend: LocalBackend, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir

    async def start(self) -> None:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        spec = ContainerSpec(
            session_id="bench-local-loop-lag",
            session_name="loop-lag",
            image="none",
            working_dir="/workspace",
            mounts=(Mount(str(self.workdir), "/workspace"), Mount(str(home), "/home/agent")),
            env={"HOME": "/home/agent", "TERM": "xterm-256color"},
            user=f"{os.getuid()}:{os.getgid()}",
            command=("/bin/sh",),
            daemon_instance=str(self.workdir),
        )
        info = await self.backend.create(spec)
        await self.backend.start(info.id)
        self.stream = await self.backend.attach(info.id)
        await self.backend.resize(info.id, *CONSOLE_SIZE)

    async def read(self) -> bytes:
        return await self.stream.read()

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)


class Raw:
    """``/bin/sh`` in a PTY spawned here, the master driven from the loop."""

    def __init__(self, workdir: Path) -> None:
        from ptyprocess import PtyProcess

        cols, rows = CONSOLE_SIZE
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
               "TERM": "xterm-256color", "LANG": "C.UTF-8"}  # fmt: skip
        self.proc = PtyProcess.spawn(
            ["/bin/sh"], cwd=str(workdir), env=env, dimensions=(rows, cols)
        )
        self.fd = self.proc.fd
        os.set_blocking(self.fd, False)

    async def read(self) -> bytes:
        # One read per wake-up of the loop, as a reader callback gets: never a tight loop.
        loop = asyncio.get_running_loop()
        while True:
            ready = loop.create_future()
            loop.add_reader(self.fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            try:
                return os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the shell is gone
                return b""

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self.fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.fd)

    def close(self) -> None:
        self.proc.terminate(force=True)


def figures(late: list[float]) -> tuple[float, float]:
    """(worst, p99) lateness in ms."""
    return max(late, default=0.0) * 1000, percentile(late, 99) * 1000


async def main() -> None:
    args = setup(__doc__ or "")
    # The backend runs in this process: its log lines go to stderr, stdout has one line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    reps = 1 if args.quick else 5
    size = 2_000_000 if args.quick else 20_000_000
    backend = LocalBackend(close_grace=1.0)
    results: dict[str, dict[str, dict[str, list[float]]]] = {
        phase: {way: {"worst": [], "p99": []} for way in ("local", "raw")}
        for phase in ("flood_read", "input_write")
    }
    with tempfile.TemporaryDirectory(prefix="corral-bench-lag-") as tmp:
        local = Local(backend, Path(tmp))
        await local.start()
        raw = Raw(Path(tmp))
        ways = {"local": (local.read, local.write), "raw": (raw.read, raw.write)}
        try:
            for read, write in ways.values():  # warm-up: the shells' first prompt
                await flood(read, write, 100_000)
            for rep in range(reps):
                order = ["local", "raw"] if rep % 2 == 0 else ["raw", "local"]
                for way in order:
                    read, write = ways[way]
                    for phase, run in (
                        ("flood_read", flood(read, write, size)),
                        ("input_write", typed(read, write)),
                    ):
                        began = time.monotonic()
                        worst, p99 = figures(await run)
                        results[phase][way]["worst"].append(worst)
                        results[phase][way]["p99"].append(p99)
                        log.info("%s %s: worst %.1f ms, p99 %.1f ms (%.1f s)", phase, way,
                                 worst, p99, time.monotonic() - began)  # fmt: skip
        finally:
            raw.close()
            await backend.close()
    metrics = {}
    for phase, ways_of in results.items():
        mine, base = ways_of["local"], ways_of["raw"]
        metrics[f"{phase}_tick_lateness_worst"] = metric(
            measured=median(mine["worst"]),
            baseline=median(base["worst"]),
            unit="ms",
            target_field="overhead",
            target_op="<=",
            target=TARGET_OVERHEAD_MS,
            samples=len(mine["worst"]),
            baseline_samples=len(base["worst"]),
            p99_ms=round(median(mine["p99"]), 3),
            baseline_p99_ms=round(median(base["p99"]), 3),
        )
    emit("local_loop_lag", args.quick, metrics, flood_bytes=size, input_bytes=INPUT_BYTES)


if __name__ == "__main__":
    asyncio.run(main())
