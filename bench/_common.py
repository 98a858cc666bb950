"""Helpers shared by the benchmarks: a daemon subprocess, real git repositories, docker
sweeps by label, percentiles, a small HTTP load generator and the one-line JSON result.

Every benchmark prints exactly one JSON line on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LABEL_INSTANCE = "corral.daemon_instance"
LABEL_BENCH = "corral.bench"

log = logging.getLogger("bench")


# --- command line, logging and the result line --------------------------------------------


def setup(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sample counts (smoke test)")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(name)s %(message)s",
        datefmt="%H:%M:%S",
    )
    return args


def metric(
    *,
    measured: float,
    baseline: float | None,
    unit: str,
    target_field: str,
    target_op: str,
    target: float,
    samples: int,
    baseline_samples: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One measured figure against its baseline and target.

    ``target_field`` names what the target is about: "measured", "overhead" (measured minus
    baseline) or "ratio" (measured / baseline); ``target_op`` is "<=" or ">=".
    """
    out: dict[str, Any] = {"measured": round(measured, 3), "unit": unit}
    if baseline is not None:
        out["baseline"] = round(baseline, 3)
        out["overhead"] = round(measured - baseline, 3)
        out["ratio"] = round(measured / baseline, 4) if baseline else None
    value = {"measured": measured}.get(target_field)
    if target_field == "overhead" and baseline is not None:
        value = measured - baseline
    elif target_field == "ratio" and baseline:
        value = measured / baseline
    ok = value is not None and (value <= target if target_op == "<=" else value >= target)
    out.update(
        target={"field": target_field, "op": target_op, "value": target},
        samples=samples,
        baseline_samples=baseline_samples if baseline_samples is not None else samples,
        **extra,
    )
    out["pass"] = bool(ok)
    return out


def emit(bench: str, quick: bool, metrics: dict[str, dict[str, Any]], **extra: Any) -> None:
    """Print the one result line on stdout."""
    result = {
        "bench": bench,
        "quick": quick,
        "pass": all(m["pass"] for m in metrics.values()),
        "metrics": metrics,
        **extra,
    }
    sys.stdout.write(json.dumps(result, sort_keys=False) + "\n")
    sys.stdout.flush()


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --- processes and ports ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop on SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait(timeout=10)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all threads) from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- the test image and git repositories -----------------------------------------------------


def busybox_image() -> str:
    tag = os.environ.get("CORRALTEST_BUSYBOX_IMAGE")
    if tag:
        return tag
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-busybox-image.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=corral bench", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def make_repo(path: Path, branch: str = "main") -> Path:
    """A real git repository with one commit on ``branch``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    (path / "README.md").write_text("hello from the corral benchmarks\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial")
    return path


# --- docker sweeps -----------------------------------------------------------------------------


def insert_session_rows(
    db_path: Path, sessions: list[tuple[Any, ...]], repos: list[tuple[Any, ...]]
) -> None:
    """Write session and repository rows straight into a stopped daemon's store (fast)."""
    db = sqlite3.connect(db_path)
    try:
        with db:
            db.executemany(
                "INSERT INTO sessions (id, name, description, tags, backend, agent, model, "
                "status, archived, archived_at, agent_state, prompt, no_plan_mode, image, "
                "image_paths, container_id, progress, error_message, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                sessions,
            )
            db.executemany(
                "INSERT INTO repositories (session_id, position, path, mount_name, "
                "worktree_path, branch_name, base_branch, is_primary, subdir) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                repos,
            )
    finally:
        db.close()


def docker_sweep(label: str, value: str) -> int:
    """Remove every container labelled ``label=value``; return how many were removed."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}={value}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False, timeout=120)
    return len(ids)


# --- the daemon ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    """``corral serve`` in a subprocess on a free port with its own data dir."""

    data_dir: Path
    image: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None  # the daemon's stderr goes here instead of ours
    # the program and arguments before "serve" (default: the venv's corral entry point)
    command: list[str] = field(default_factory=lambda: [str(VENV_BIN / "corral")])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update(
            CORRAL_CONFIG=str(self.data_dir.parent / "no-config.toml"),
            CORRAL_DATA_DIR=str(self.data_dir),
            CORRAL_DOCKER__DEFAULT_IMAGE=self.image,
            CORRAL_DOCKER__NETWORK_MODE="none",
            CORRAL_LOGGING__LEVEL="warning",
            **SHELL_SESSIONS_ENV,  # the bench images have no agent CLI: they run a shell
        )
        env.update(self.extra_env)
        stderr: Any = sys.stderr if self.log_path is None else self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--host", "127.0.0.1", "--port",
             str(self.port), "--data-dir", str(self.data_dir)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )  # fmt: skip
        if stderr is not sys.stderr:
            stderr.close()  # the child holds its own copy
        wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        log.info("daemon pid %d on %s (data %s)", self.proc.pid, self.url, self.data_dir)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def sweep(self) -> int:
        return docker_sweep(LABEL_INSTANCE, str(self.data_dir))


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed at the end (worktrees and homes included)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def bench_daemon(
    prefix: str, image: str, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Daemon, Path, Path]]:
    """A running daemon, a real repository and the temporary root they live in.

    On the way out the daemon stops, and every container it or the benchmark made (labelled
    with the root) is swept, whatever happened in between.
    """
    with workdir(prefix) as root:
        repo = make_repo(root / "repo")
        daemon = Daemon(root / "data", image, extra_env=extra_env or {})
        try:
            daemon.start()
            yield daemon, repo, root
        finally:
            daemon.stop()
            swept = daemon.sweep() + docker_sweep(LABEL_BENCH, str(root))
            if swept:
                log.info("swept %d leftover containers", swept)


# --- the HTTP client side ---------------------------------------------------------------------


class ApiError(RuntimeError):
    pass


async def api(session: Any, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    """One JSON request with aiohttp; returns (status, parsed body or None)."""
    async with session.request(method, url, **kw) as resp:
        body = await resp.read()
        data = json.loads(body) if body else None
        return resp.status, data


async def delete_session(session: Any, base: str, session_id: str, timeout: float = 60.0) -> None:
    """DELETE with force (retrying while another operation holds it), then wait until gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body = await api(session, "DELETE", f"{base}/api/sessions/{session_id}",
                                 params={"force": "true"})  # fmt: skip
        if status in (202, 404):
            break
        if status != 409 or loop.time() > deadline:
            raise ApiError(f"DELETE {session_id}: {status} {body}")
        await asyncio.sleep(0.02)
    while loop.time() < deadline:
        status, _ = await api(session, "GET", f"{base}/api/sessions/{session_id}")
        if status == 404:
            return
        await asyncio.sleep(0.02)
    raise ApiError(f"session {session_id} was not deleted within {timeout} s")


# --- a small keep-alive HTTP/1.1 load generator --------------------------------------------------
#
# A bare asyncio buffered protocol instead of aiohttp's client: a request costs the client a
# few tens of microseconds, so one client process is not the bottleneck of a Python server.
# The benchmarks run it in a separate process and report its CPU time to show that.


@dataclass
class LoadResult:
    requests: int
    errors: int
    duration: float
    latencies: dict[str, list[float]]
    client_cpu: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration else 0.0


class _HttpClient(asyncio.BufferedProtocol):
    """One keep-alive connection issuing GETs back to back (closed loop).

    A buffered protocol rather than streams: the socket is read into one reused buffer and
    the body is counted, never copied or parsed, so a request costs the client little more
    than its system calls.
    """

    def __init__(
        self,
        port: int,
        paths: list[tuple[str, str, float]],
        ids: list[str],
        stop_at: float,
        result: dict[str, Any],
        rng: random.Random,
        done: asyncio.Future[None],
    ) -> None:
        self.host = f"127.0.0.1:{port}"
        self.paths = paths
        self.weights = [w for _, _, w in paths]
        self.ids = ids
        self.stop_at = stop_at
        self.result = result
        self.rng = rng
        self.done = done
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray(1 << 18)
        self.view = memoryview(self.buffer)
        self.head = bytearray()
        self.remaining = -1  # body bytes still to come; -1 while reading the head
        self.status = 0
        self.kind = ""
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.loop.time() >= self.stop_at:
            self.transport.close()
            return
        kind, path, _ = self.rng.choices(self.paths, self.weights)[0]
        if "{id}" in path:
            path = path.replace("{id}", self.rng.choice(self.ids))
        self.kind = kind
        self.head.clear()
        self.remaining = -1
        self.t0 = time.perf_counter()
        self.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: application/json\r\n\r\n".encode()
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.remaining >= 0:
            self.remaining -= nbytes
        else:
            if self.head:  # the head came in pieces (rare): gather it
                self.head += self.view[:nbytes]
                data, size = self.head, len(self.head)
            else:  # the usual case: look for the head's end in place, copy nothing
                data, size = self.buffer, nbytes
            end = data.find(b"\r\n\r\n", 0, size)
            if end < 0:
                if data is self.buffer:
                    self.head += self.view[:nbytes]
                return
            head = bytes(data[:end])
            self.head.clear()
            self.status = int(head[9:12])
            length = -1
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            if length < 0:
                self._fail(RuntimeError(f"no Content-Length: {head[:200]!r}"))
                return
            self.remaining = length - (size - end - 4)
        if self.remaining == 0:
            elapsed = time.perf_counter() - self.t0
            if self.status == 200:
                self.result["latencies"][self.kind].append(elapsed)
                self.result["requests"] += 1
            else:
                self.result["errors"] += 1
            self._send()
        elif self.remaining < 0:
            self._fail(RuntimeError("more bytes than Content-Length (pipelining?)"))

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if self.loop.time() < self.stop_at:
                self.done.set_exception(exc or ConnectionError("server closed the connection"))
            else:
                self.done.set_result(None)


async def _http_load(
    host: str,
    port: int,
    paths: list[tuple[str, str, float]],
    concurrency: int,
    duration: float,
    ids: list[str],
    seed: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "requests": 0, "errors": 0,
        "latencies": {kind: [] for kind, _, _ in paths},
    }  # fmt: skip
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    start = loop.time()
    stop_at = start + duration
    futures = []
    for i in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        rng = random.Random(seed + i)
        await loop.create_connection(
            lambda d=done, r=rng: _HttpClient(port, paths, ids, stop_at, result, r, d),  # type: ignore[misc]
            host,
            port,
        )
        futures.append(done)
    async with asyncio.timeout(duration + 30):
        await asyncio.gather(*futures)
    result["duration"] = loop.time() - start
    result["client_cpu"] = time.process_time() - cpu0
    return result


def _load_child(args: dict[str, Any], conn: Any) -> None:
    try:
        conn.send(("ok", asyncio.run(_http_load(**args))))
    except BaseException as exc:  # the parent reports it
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


def run_load(
    port: int,
    paths: list[tuple[str, str, float]],
    *,
    concurrency: int,
    duration: float,
    ids: list[str] | None = None,
    seed: int = 1,
) -> LoadResult:
    """Run the load generator in a fresh process; ``paths`` is [(kind, path, weight)]."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    args = {
        "host": "127.0.0.1", "port": port, "paths": paths, "concurrency": concurrency,
        "duration": duration, "ids": ids or [], "seed": seed,
    }  # fmt: skip
    proc = ctx.Process(target=_load_child, args=(args, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(duration + 60):
            raise TimeoutError("the load generator did not report in time")
        state, data = parent.recv()
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    if state != "ok":
        raise RuntimeError(f"load generator failed: {data}")
    return LoadResult(
        requests=data["requests"],
        errors=data["errors"],
        duration=data["duration"],
        latencies=data["latencies"],
        client_cpu=data["client_cpu"],
    )


# --- consoles: sessions, WebSocket viewers, the raw engine stream, PTYs ----------------------
#
# Used by console_throughput.py, console_latency.py and console_memory.py. Each console
# benchmark reads terminals until a marker that the typed command does not contain:
# ``echo end-<token>-$((n+1))`` prints ``end-<token>-<n+1>``; the token is new for every
# run, so a marker can never come from output replayed out of a ring buffer.

ENGINE_URL = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
RAW_READ_BYTES = 256 * 1024  # what the daemon's own attach reads at most, per read
CONSOLE_SIZE = (80, 24)  # cols, rows: the size every console benchmark terminal gets
# The busybox image has no agent CLI: sessions run the image's own command (a shell).
SHELL_SESSIONS_ENV = {"CORRAL_SESSIONS__START_AGENT": "false"}


def shell_marker(prefix: str) -> tuple[str, bytes]:
    """(shell expression to echo, the bytes it prints): unique per call."""
    token = uuid_token()
    n = random.randrange(1000, 9000)
    return f"{prefix}-{token}-$(({n}+1))", f"{prefix}-{token}-{n + 1}".encode()


def uuid_token() -> str:
    import uuid

    return uuid.uuid4().hex[:10]


class MarkerScanner:
    """Finds ``marker`` in a stream fed in pieces, without joining the pieces."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self._tail = b""
        self.found = False

    def feed(self, data: bytes) -> bool:
        if not self.found:
            keep = len(self.marker) - 1
            if self.marker in data or (keep and self.marker in self._tail + data[:keep]):
                self.found = True
            elif keep:
                self._tail = (self._tail + data[-keep:])[-keep:]
        return self.found


async def create_session(
    http: Any,
    base: str,
    repo: Path,
    *,
    backend: str = "docker",
    name: str | None = None,
    timeout: float = 90.0,
) -> str:
    """POST /api/sessions and poll until the session is running; returns its id."""
    payload: dict[str, Any] = {"repo_path": str(repo), "prompt": "x", "backend": backend}
    if name is not None:
        payload["name"] = name
    status, body = await api(http, "POST", f"{base}/api/sessions", json=payload)
    if status != 201:
        raise ApiError(f"POST /api/sessions: {status} {body}")
    session_id = str(body["session"]["id"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        status, body = await api(http, "GET", f"{base}/api/sessions/{session_id}")
        state = body["session"]["status"] if status == 200 else f"http {status}"
        if state == "running":
            return session_id
        if state != "creating":
            raise ApiError(f"session {session_id} is {state}: {body}")
        await asyncio.sleep(0.02)
    raise ApiError(f"session {session_id} not running within {timeout} s")


async def create_batch(
    http: Any, base: str, repo: Path, names: list[str], timeout: float = 120.0
) -> list[str]:
    """Create the sessions at once, then poll the list until every one is running."""

    async def post(name: str) -> str:
        payload = {"repo_path": str(repo), "prompt": "x", "name": name}
        status, body = await api(http, "POST", f"{base}/api/sessions", json=payload)
        if status != 201:
            raise ApiError(f"POST {name}: {status} {body}")
        return str(body["session"]["id"])

    ids = await asyncio.gather(*(post(n) for n in names))
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = await api(http, "GET", f"{base}/api/sessions", params={"limit": "1000"})
        states = {s["id"]: s["status"] for s in body["sessions"] if s["id"] in wanted}
        bad = {k: v for k, v in states.items() if v not in ("creating", "running")}
        if bad:
            raise ApiError(f"sessions failed: {bad}")
        if len(states) == len(wanted) and all(v == "running" for v in states.values()):
            return list(ids)
        await asyncio.sleep(0.05)
    raise ApiError(f"batch {names[0]}.. not running within {timeout} s")


class ConsoleViewer:
    """A /ws/console client (aiohttp) reading binary frames; control frames are kept aside."""

    def __init__(self, ws: Any, http: Any) -> None:
        self.ws = ws
        self.http = http
        self.controls: list[Any] = []

    @classmethod
    async def connect(cls, base: str, session_id: str, http: Any | None = None) -> ConsoleViewer:
        import aiohttp

        own = http is None
        if http is None:
            http = aiohttp.ClientSession()
        cols, rows = CONSOLE_SIZE
        url = f"{base.replace('http', 'ws', 1)}/ws/console/{session_id}?cols={cols}&rows={rows}"
        try:
            ws = await http.ws_connect(url, max_msg_size=0, autoping=True)
        except BaseException:
            if own:
                await http.close()
            raise
        return cls(ws, http if own else None)

    async def read(self, timeout: float | None = None) -> bytes | None:
        """The next binary frame; None when the socket closed (or nothing within timeout)."""
        import aiohttp

        while True:
            try:
                message = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                return None
            if message.type is aiohttp.WSMsgType.BINARY:
                return bytes(message.data)
            if message.type is aiohttp.WSMsgType.TEXT:
                self.controls.append(json.loads(message.data))
                continue
            raise ConnectionError(f"console closed: {message.type.name} {message.data!r} "
                                  f"{message.extra!r} controls={self.controls}")  # fmt: skip

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.http is not None:
            await self.http.close()


class RawAttach:
    """The Engine API TTY stream of a container, hijacked, with plain asyncio streams.

    ``POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1`` with ``Upgrade:
    tcp``; after ``101`` the connection is the container's terminal, both ways.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, container_id: str, engine_url: str = ENGINE_URL) -> RawAttach:
        if engine_url.startswith("unix://"):
            reader, writer = await asyncio.open_unix_connection(
                engine_url[len("unix://") :], limit=RAW_READ_BYTES
            )
        else:
            from urllib.parse import urlsplit

            parts = urlsplit(engine_url)
            reader, writer = await asyncio.open_connection(
                parts.hostname, parts.port or 2375, limit=RAW_READ_BYTES
            )
        writer.write(
            f"POST /containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 "
            "HTTP/1.1\r\nHost: docker\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise RuntimeError(f"attach refused: {head[:200]!r}")
        return cls(reader, writer)

    async def read(self, timeout: float | None = None) -> bytes | None:
        try:
            async with asyncio.timeout(timeout):  # no extra task per read, unlike wait_for
                data = await self.reader.read(RAW_READ_BYTES)
        except TimeoutError:
            return None
        if not data:
            raise ConnectionError("the engine closed the attach stream")
        return data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def raw_container_config(image: str, tag: str) -> dict[str, Any]:
    """The terminal-relevant part of the daemon's container body, no mounts, labelled
    ``corral.bench=<tag>`` for the sweep."""
    return {
        "Image": image,
        "WorkingDir": "/tmp",
        "Env": ["HOME=/tmp", "TERM=xterm-256color"],
        "Labels": {LABEL_BENCH: tag},
        "User": f"{os.getuid()}:{os.getgid()}",
        "Tty": True,
        "OpenStdin": True,
        "StdinOnce": False,
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "HostConfig": {"Init": True, "NetworkMode": "none", "RestartPolicy": {"Name": "no"}},
    }


async def start_raw_container(docker: Any, image: str, tag: str) -> str:
    """Create and start a busybox shell container like a session's; returns its id.

    The caller removes it (``docker_sweep(LABEL_BENCH, tag)`` in a finally)."""
    container = await docker.containers.create(raw_container_config(image, tag))
    await container.start()
    cols, rows = CONSOLE_SIZE
    await container.resize(h=rows, w=cols)
    return str(container.id)


async def drain(read: Any, quiet: float = 0.2, limit: float = 10.0) -> int:
    """Read (``read(timeout)`` -> bytes | None) until ``quiet`` s pass with nothing; bytes read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    total = 0
    while loop.time() < deadline:
        data = await read(quiet)
        if data is None:
            return total
        total += len(data)
    return total


async def read_until(read: Any, marker: bytes, timeout: float) -> int:
    """Read until ``marker`` shows; returns the bytes read (marker's piece included)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    scanner = MarkerScanner(marker)
    total = 0
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{marker!r} not seen within {timeout} s ({total} bytes read)")
        data = await read(left)
        if data is None:
            continue
        total += len(data)
        if scanner.feed(data):
            return total


def schedstat(pid: int) -> tuple[float, float, int]:
    """(seconds on CPU, seconds runnable but waiting for a CPU, time slices) of a process's
    main thread, from /proc/<pid>/schedstat: the wait tells "busy" from "not scheduled"."""
    on_cpu, waited, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
    return int(on_cpu) / 1e9, int(waited) / 1e9, int(slices)
