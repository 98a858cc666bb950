"""Transport limits: open WebSockets per client and in all, deep JSON on the sockets, a
header-read timeout and the own origin on the port actually bound (the real ``corral serve``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import create_running, make_repo
from tests.test_console import open_console

UNKNOWN = "00000000-0000-4000-8000-000000000000"
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def local_settings(tmp_path: Path, **server: Any) -> Settings:
    """A daemon with the local backend only: no engine needed."""
    return Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "server": server,
            "sessions": {"default_backend": "local", "start_agent": False},
        }
    )


@pytest.fixture
async def limited(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Any]:
    settings = local_settings(tmp_path, max_websockets_per_client=2, max_websockets=3)
    app = create_app(settings, backends={"local": LocalBackend()})
    client = await aiohttp_client(app)
    yield client
    await app[TASKS].wait(timeout=10)


async def refusal(client: Any, path: str, status: int, code: str) -> None:
    """The upgrade is refused with the PROTOCOL error body, before any socket exists."""
    response = await client.get(path, headers=UPGRADE)
    body = await response.json()
    assert response.status == status, body
    assert body["error"]["code"] == code, body
    assert int(response.headers["Retry-After"]) > 0


async def eventually_open(connect: Any) -> Any:
    """A socket opens once a closed one's slot is given back (the server sees the close)."""
    for _ in range(200):
        try:
            return await connect()
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status != 429:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("the closed socket's slot was never given back")


async def test_websockets_are_bounded_per_client_and_in_all(limited: Any) -> None:
    first = await limited.ws_connect("/ws/events")
    second = await limited.ws_connect("/ws/events")
    # Both kinds of socket count together.
    await refusal(limited, "/ws/events", 429, "RATE_LIMITED")
    await refusal(limited, f"/ws/console/{UNKNOWN}", 429, "RATE_LIMITED")

    url = f"http://127.0.0.1:{limited.port}/ws/events"
    others: list[aiohttp.ClientSession] = []
    try:
        for address in ("127.0.0.2", "127.0.0.3"):
            connector = aiohttp.TCPConnector(local_addr=(address, 0))
            others.append(aiohttp.ClientSession(connector=connector))
        third = await others[0].ws_connect(url)  # another client: room for it
        with pytest.raises(aiohttp.WSServerHandshakeError) as full:
            await others[1].ws_connect(url)  # the daemon is full for everyone
        assert full.value.status == 503
        async with others[1].get(url, headers=UPGRADE) as response:
            body = await response.json()
            assert response.status == 503
            assert body["error"]["code"] == "SERVER_BUSY"

        # A closed socket gives its place back.
        await first.close()
        again = await eventually_open(lambda: limited.ws_connect("/ws/events"))
        await again.send_json({"type": "ping"})
        assert (await again.receive_json(timeout=5)) == {"type": "pong"}
        for ws in (second, third, again):
            await ws.close()
    finally:
        for session in others:
            await session.close()


async def test_deep_json_on_the_events_socket_answers_an_error_frame(limited: Any) -> None:
    ws = await limited.ws_connect("/ws/events")
    for frame in (
        "[" * 60_000,  # past the parser's recursion: a RecursionError in the old code
        json.dumps({"type": "subscribe", "session_id": "*", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
            [[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}),
    ):  # fmt: skip
        await ws.send_str(frame)
        message = await ws.receive_json(timeout=5)
        assert message["type"] == "error", message
        assert message["code"] == "INVALID_REQUEST"
        assert "nested" in message["message"]
    # The socket is still open and serving.
    await ws.send_json({"type": "ping"})
    assert (await ws.receive_json(timeout=5)) == {"type": "pong"}
    await ws.close()


async def test_deep_json_on_the_console_answers_an_error_frame(
    limited: Any, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    session = await create_running(limited, repo, backend="local")
    assert session["status"] == "running", session
    viewer = await open_console(limited, session["id"])
    await viewer.ws.send_str("[" * 200_000)
    error = await viewer.control("error")
    assert "nested" in error["message"], error
    # Still attached: the shell answers.
    await viewer.run("echo x-$((40+2))", "x-42")
    await viewer.ws.close()


def half_a_body(port: int, give_up_after: float) -> bytes:
    """A POST whose body stops halfway; what the daemon answers while the client waits."""
    head = (f"POST /api/browse-directory HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(give_up_after)
        sock.sendall(head.encode() + b'{"path": ')
        try:
            return sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no answer after {give_up_after} s") from None


async def test_a_body_that_stops_halfway_is_a_client_error(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path, body_timeout=0.5)
    app = create_app(settings, backends={"local": LocalBackend()})
    client = await aiohttp_client(app)
    answer = await asyncio.to_thread(half_a_body, client.port, 20.0)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b'"INVALID_REQUEST"' in answer
    await app[TASKS].wait(timeout=10)


# --- the real daemon process: header-read timeout, own origin with port = 0 -------------


class Serve:
    """``corral serve --port 0`` as a user runs it; the port comes from its own log."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "serve.log"
        self.data_dir = tmp_path / "data"
        self.env = {
            **os.environ,
            "CORRAL_CONFIG": str(tmp_path / "absent.toml"),
            "CORRAL_SERVER__HEADER_TIMEOUT": "1",
            "CORRAL_SESSIONS__DEFAULT_BACKEND": "local",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "serve", "--port", "0",
                 "--data-dir", str(self.data_dir)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        for _ in range(400):
            found = re.search(r"listening.*http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                self.port = int(found.group(1))
                return
            assert self.proc.poll() is None, self.log.read_text()
            await asyncio.sleep(0.05)
        raise AssertionError(f"no listening line: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    daemon = Serve(tmp_path)
    try:
        await daemon.start()
        yield daemon
    finally:
        daemon.stop()


def trickle_until_closed(port: int, give_up_after: float) -> bytes:
    """Send a request head one byte at a time, never finishing it; what came back at close."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100_000
    give_up = time.monotonic() + give_up_after
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.2)
        for byte in head:
            if time.monotonic() > give_up:
                break
            try:
                sock.sendall(bytes([byte]))
                return sock.recv(4096)  # b"" once the daemon closes the connection
            except TimeoutError:
                continue  # nothing back yet: the next byte
            except (BrokenPipeError, ConnectionResetError):
                return b""
    raise AssertionError(f"still open after {give_up_after} s of trickled headers")


async def test_a_trickled_request_head_is_cut_off(serve: Serve) -> None:
    # One byte every 0.2 s: the connection is never idle, yet the head never ends. The
    # daemon (header_timeout = 1 s) closes it; the old one kept it for 75 s.
    answer = await asyncio.to_thread(trickle_until_closed, serve.port, 20.0)
    assert b"200" not in answer
    # Whole requests are still served.
    health = f"http://127.0.0.1:{serve.port}/health"
    async with aiohttp.ClientSession() as http, http.get(health) as response:
        assert response.status == 200


async def test_own_origin_is_the_port_actually_bound(serve: Serve, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{serve.port}/api/browse-directory"
    body = {"path": str(tmp_path)}
    async with aiohttp.ClientSession() as http:
        for name in ("127.0.0.1", "localhost"):
            own = {"Origin": f"http://{name}:{serve.port}"}
            async with http.post(url, json=body, headers=own) as response:
                assert response.status == 200, await response.text()
        for port in (0, serve.port + 1, 3030):
            other = {"Origin": f"http://127.0.0.1:{port}"}
            async with http.post(url, json=body, headers=other) as response:
                assert response.status == 403, await response.text()
                assert (await response.json())["error"]["code"] == "FORBIDDEN"
