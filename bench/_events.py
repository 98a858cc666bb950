"""Shared by the events benchmarks: the server process and a cheap /ws/events subscriber.

The server runs in its own process (multiprocessing, spawn), so the subscribers in the
bench process never take its event loop. It is either corral's real app (``create_app``
with its SQLite store in a temporary data dir, the EventHub and ``/ws/events``) or the
baseline: a minimal aiohttp broadcaster that sends each event to every socket, no store.
Both answer commands over a pipe: publish chat events at a rate, seed stored events, stop.
Every event carries the wall-clock time it was published at (``t``, ``time.time()``), so
subscribers in another process measure publish-to-receive latency on the same clock.

The subscriber is a bare asyncio buffered protocol speaking just enough WebSocket: it
finds each text frame's ``seq`` and ``t`` by searching the bytes instead of parsing JSON,
so ten of them cost the bench process far less than the server costs its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import cpu_seconds, free_port, log

SESSION_NAME = "bench-events"
CONTENT = ("The quick brown fox jumps over the lazy dog; " * 64)[:4096]
READY_TIMEOUT = 60.0
# Frames that answer the client rather than carry an event (json.dumps puts "type" first).
CONTROL_PREFIXES = tuple(
    f'{{"type": "{kind}"'.encode() for kind in ("subscribed", "unsubscribed", "error", "pong")
)
# Live events and replayed ones order their keys differently: find the two fields by name.
SEQ = re.compile(rb'"seq": (\d+)')
STAMP = re.compile(rb'"t": ([0-9.e+-]+)')


def chat_payload(index: int, pad: int) -> dict[str, Any]:
    """A chat_message payload of ``pad`` content characters, stamped with the publish time."""
    return {
        "message": {"id": f"m{index}", "role": "assistant", "content": CONTENT[:pad]},
        "t": time.time(),
    }


# --- the server process ----------------------------------------------------------------------


class ServerProcess:
    """One server (``mode`` "corral" or "baseline") in its own process, driven over a pipe."""

    def __init__(self, mode: str, data_dir: Path) -> None:
        self.mode = mode
        self.data_dir = data_dir
        self.port = free_port()
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child, args=(mode, str(data_dir), self.port, child), daemon=True,
            name=f"events-{mode}",
        )  # fmt: skip
        self.proc.start()
        child.close()
        self.session_id = ""

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def wait_ready(self) -> None:
        ready = self._reply(READY_TIMEOUT)
        self.session_id = ready["session_id"]
        log.info("%s server pid %d on 127.0.0.1:%d", self.mode, self.pid, self.port)

    def request(self, command: str, timeout: float = 300.0, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (blocking: run it in an executor)."""
        self._conn.send((command, args))
        return self._reply(timeout)

    def _reply(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the {self.mode} server did not answer within {timeout} s")
        state, data = self._conn.recv()
        if state != "ok":
            raise RuntimeError(f"the {self.mode} server failed: {data}")
        return dict(data)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(Exception):
                self.request("stop", timeout=30)
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            log.warning("%s server did not stop; killing it", self.mode)
            self.proc.kill()
            self.proc.join(timeout=5)


def _child(mode: str, data_dir: str, port: int, conn: Any) -> None:
    os.dup2(2, 1)  # nothing from this process may reach the bench's one stdout line
    try:
        asyncio.run(_serve(mode, Path(data_dir), port, conn))
    except BaseException as exc:  # the parent reports it
        with contextlib.suppress(Exception):
            conn.send(("error", repr(exc)))
        raise
    finally:
        conn.close()


Publish = Callable[[dict[str, Any]], Awaitable[int]]


async def _serve(mode: str, data_dir: Path, port: int, conn: Any) -> None:
    from aiohttp import web

    if mode == "corral":
        app, session_id, publish = await _corral_app(data_dir, port)
    else:
        app, session_id, publish = _baseline_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        conn.send(("ok", {"session_id": session_id}))
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                conn.send(("ok", {}))
                return
            if command == "publish":
                # As tasks, corral's publishes never hold up the pacing, and every stamp is
                # the time the event was due rather than when the last commit ended.
                result = await _publish_paced(publish, concurrent=mode == "corral", **args)
            elif command == "seed":
                result = await _seed(publish, **args)
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", result))
    finally:
        await runner.cleanup()


async def _publish_paced(
    publish: Publish, *, rate: float, count: int, pad: int, concurrent: bool
) -> dict[str, Any]:
    """Publish ``count`` events at ``rate`` per second, open loop: what falls behind the
    schedule goes out at the next wake-up, so a slow server gets bursts, not less load.

    ``concurrent`` runs each publish as its own task, for corral, whose publish returns
    after its group commit; the broadcaster's publish only waits when a socket is full."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[int]] = set()
    seqs: list[int] = []

    async def one(payload: dict[str, Any]) -> int:
        seq = await publish(payload)
        seqs.append(seq)
        return seq

    start = loop.time()
    t_first = time.time()
    sent = 0
    while sent < count:
        due = min(count, int((loop.time() - start) * rate) + 1)
        while sent < due:
            payload = chat_payload(sent, pad)
            if concurrent:
                task = loop.create_task(one(payload))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                await one(payload)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    t_published = time.time()
    if pending:
        await asyncio.gather(*pending)
    return {
        "first_seq": min(seqs),
        "last_seq": max(seqs),
        "t_first": t_first,
        "t_published": t_published,
    }


async def _seed(publish: Publish, *, count: int, pad: int, batch: int = 500) -> dict[str, Any]:
    """Publish ``count`` events as fast as the store takes them, ``batch`` at a time."""
    last = 0
    for first in range(0, count, batch):
        seqs = await asyncio.gather(
            *(publish(chat_payload(i, pad)) for i in range(first, min(count, first + batch)))
        )
        last = max(last, *seqs)
    return {"last_seq": last}


async def _corral_app(data_dir: Path, port: int) -> tuple[Any, str, Publish]:
    """corral's own app on a fresh store with one stopped local session to publish to."""
    from datetime import UTC, datetime

    from daemon.app import create_app
    from daemon.core.models import Repository, SessionStatus
    from daemon.core.session import SessionRecord
    from daemon.core.store import Store
    from daemon.keys import HUB
    from daemon.log import configure_logging
    from daemon.settings import LoggingSettings, ServerSettings, Settings

    configure_logging("warning")
    settings = Settings(
        data_dir=data_dir,
        server=ServerSettings(host="127.0.0.1", port=port),
        logging=LoggingSettings(level="warning"),
    )
    session_id = str(uuid.uuid4())
    now = datetime.now(UTC).replace(microsecond=0)
    worktree = data_dir / "worktrees" / SESSION_NAME / "repo"
    worktree.mkdir(parents=True)  # a missing worktree would have the daemon report on it
    record = SessionRecord(
        id=session_id, name=SESSION_NAME, backend="local", agent="claude",
        status=SessionStatus.STOPPED, prompt="bench", created_at=now, updated_at=now,
        repositories=[Repository(
            path=str(data_dir.parent), mount_name="repo",
            worktree_path=str(worktree),
            branch_name=f"corral/{SESSION_NAME}", base_branch="main", is_primary=True,
        )],
    )  # fmt: skip
    # The record goes in before the app starts, so the manager loads it like any session.
    store = Store(settings.db_path)
    await store.open()
    try:
        await store.insert_session(record)
    finally:
        await store.close()
    app = create_app(settings)

    async def publish(payload: dict[str, Any]) -> int:
        event = await app[HUB].publish("chat_message", session_id, **payload)
        return int(event["seq"])

    return app, session_id, publish


def _baseline_app() -> tuple[Any, str, Publish]:
    """The least a broadcaster can do: each event serialised once, then sent to every
    connected socket; subscribe is acknowledged so the same subscriber drives both."""
    from datetime import UTC, datetime

    from aiohttp import WSMsgType, web

    session_id = str(uuid.uuid4())
    sockets: set[web.WebSocketResponse] = set()
    seq = 0

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    target = json.loads(message.data).get("session_id")
                    await ws.send_str(json.dumps({"type": "subscribed", "session_id": target,
                                                  "latest_seq": seq}))  # fmt: skip
        finally:
            sockets.discard(ws)
        return ws

    async def publish(payload: dict[str, Any]) -> int:
        nonlocal seq
        seq += 1
        timestamp = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        event = {"type": "chat_message", "session_id": session_id, "seq": seq,
                 "timestamp": timestamp, **payload}  # fmt: skip
        text = json.dumps(event)
        for ws in list(sockets):
            await ws.send_str(text)
        return seq

    app = web.Application()
    app.router.add_get("/ws/events", handler)
    return app, session_id, publish


# --- the subscriber ----------------------------------------------------------------------------


class Subscriber(asyncio.BufferedProtocol):
    """One /ws/events client: handshake, subscribe, then count and time the events.

    ``expect(n)`` arms ``done``, which completes once ``n`` events have come (or the
    socket ends). Every event's seq is checked against the one before it: ``anomalies``
    counts seqs skipped, repeated or out of order.
    """

    def __init__(self, host: str, session_id: str, since_seq: int | None = None) -> None:
        self.host = host
        self.session_id = session_id
        self.since_seq = since_seq
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray(1 << 20)
        self.fill = 0
        self.upgraded = False
        self.subscribed: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.closed_code: int | None = None
        self.controls: list[dict[str, Any]] = []
        self.t_subscribe = 0.0  # time.perf_counter() when subscribe went out
        self.expected = -1
        self.count = 0
        self.first_seq = 0
        self.last_seq = 0
        self.anomalies = 0
        self.latencies: list[float] = []
        self.last_receive = 0.0  # time.time()
        self.completed_at = 0.0  # time.perf_counter() when the expected count came

    def expect(self, count: int) -> None:
        self.expected = count
        self._check_done()

    # the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws/events HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buffer) - self.fill < 65536:
            self.buffer.extend(bytes(len(self.buffer)))
        return memoryview(self.buffer)[self.fill :]

    def buffer_updated(self, nbytes: int) -> None:
        self.fill += nbytes
        buf = self.buffer
        pos = 0
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n", 0, self.fill)
            if end < 0:
                return
            if b" 101 " not in buf[: buf.find(b"\r\n")]:
                self._fail(ConnectionError(f"upgrade refused: {bytes(buf[:200])!r}"))
                return
            self.upgraded = True
            pos = end + 4
            message: dict[str, Any] = {"type": "subscribe", "session_id": self.session_id}
            if self.since_seq is not None:
                message["since_seq"] = self.since_seq
            self.send_text(json.dumps(message))
            self.t_subscribe = time.perf_counter()
        now = time.time()  # one arrival time for every frame of this read
        fill = self.fill
        while fill - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if fill - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if fill - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            start = pos + head
            end = start + length
            if end > fill:
                break
            if opcode == 1:
                self._text(buf, start, end, now)
            elif opcode == 8:
                self.closed_code = int.from_bytes(buf[start : start + 2], "big") if length else 0
            elif opcode == 9:
                self._send_frame(0xA, bytes(buf[start:end]))
            pos = end
        if pos:
            rest = fill - pos
            buf[:rest] = buf[pos:fill]
            self.fill = rest
        self._check_done()

    def _text(self, buf: bytearray, start: int, end: int, now: float) -> None:
        if buf.startswith(CONTROL_PREFIXES, start):
            message = json.loads(bytes(buf[start:end]))
            self.controls.append(message)
            if message["type"] == "subscribed" and not self.subscribed.done():
                self.subscribed.set_result(message)
            elif message["type"] == "error" and not self.subscribed.done():
                self.subscribed.set_exception(RuntimeError(f"subscribe failed: {message}"))
            return
        found = SEQ.search(buf, start, end)
        if found is None:
            raise ValueError(f"an event without a seq: {bytes(buf[start:end])[:200]!r}")
        seq = int(found[1])
        if self.count == 0:
            self.first_seq = seq
        elif seq > self.last_seq + 1:
            self.anomalies += seq - self.last_seq - 1  # skipped
        elif seq <= self.last_seq:
            self.anomalies += 1  # repeated or out of order
        self.last_seq = max(self.last_seq, seq)
        self.count += 1
        self.last_receive = now
        stamp = STAMP.search(buf, start, end)
        if stamp is not None:  # the bench's own events; the daemon may publish others
            self.latencies.append(now - float(stamp[1]))

    def _check_done(self) -> None:
        if 0 <= self.expected <= self.count and not self.done.done():
            self.completed_at = time.perf_counter()
            self.done.set_result(None)

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = bytes([0x80 | opcode, 0x80 | size])
        else:
            head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(head + mask + masked)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self._send_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        for future in (self.subscribed, self.done):
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        ended = exc or ConnectionError(f"socket closed (close code {self.closed_code})")
        if not self.subscribed.done():
            self.subscribed.set_exception(ended)
        if not self.done.done():
            self.done.set_result(None)  # the caller sees the shortfall in count


async def connect(
    port: int, session_id: str, since_seq: int | None = None, timeout: float = 30.0
) -> Subscriber:
    """Open a subscriber; with ``since_seq`` None, wait for the subscribe acknowledgement."""
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    _, sub = await loop.create_connection(
        lambda: Subscriber(host, session_id, since_seq), "127.0.0.1", port
    )
    if since_seq is None:
        await asyncio.wait_for(asyncio.shield(sub.subscribed), timeout)
    return sub
