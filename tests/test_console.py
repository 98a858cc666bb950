"""/ws/console against real containers running a busybox shell."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.keys import CONSOLES
from tests.conftest import create_running

pytestmark = pytest.mark.docker


class Screen:
    """A console client that gathers terminal bytes and control messages."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.data = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed = False

    async def pump(self, timeout: float) -> None:
        try:
            message = await self.ws.receive(timeout=timeout)
        except TimeoutError:
            return
        if message.type == aiohttp.WSMsgType.BINARY:
            self.data += message.data
        elif message.type == aiohttp.WSMsgType.TEXT:
            self.controls.append(json.loads(message.data))
        else:
            self.closed = True

    async def until(self, marker: bytes, timeout: float = 15) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while marker not in self.data:
            if self.closed or loop.time() > deadline:
                raise AssertionError(
                    f"{marker!r} not seen; screen tail: {bytes(self.data[-300:])!r}"
                )
            await self.pump(max(0.01, deadline - loop.time()))
        return bytes(self.data)

    async def control(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for message in self.controls:
                if message.get("type") == kind:
                    self.controls.remove(message)
                    return message
            if self.closed or loop.time() > deadline:
                raise AssertionError(f"no {kind} control message; got {self.controls}")
            await self.pump(max(0.01, deadline - loop.time()))

    async def settle(self, quiet: float = 1.5, timeout: float = 30) -> None:
        """Wait until the screen has printed nothing for ``quiet`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            size = len(self.data)
            await self.pump(quiet)
            if len(self.data) == size and not self.controls:
                return
        raise AssertionError("the screen never settled")

    async def run(self, command: str, marker: str) -> bytes:
        await self.ws.send_bytes(command.encode() + b"\r")
        return await self.until(marker.encode())


async def open_console(client: Any, session_id: str, query: str = "cols=80&rows=24") -> Screen:
    ws = await client.ws_connect(f"/ws/console/{session_id}?{query}")
    return Screen(ws)


async def test_round_trip_resize_and_two_viewers(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    first = await open_console(client, session["id"])
    await first.run("echo x-$((40+2))", "x-42")

    second = await open_console(client, session["id"], "cols=100&rows=30")
    # The late viewer gets the recent screen first: the earlier output is already there.
    await second.until(b"x-42")
    await first.run("stty size", "30 100")
    await first.ws.send_str(json.dumps({"type": "resize", "cols": 132, "rows": 50}))
    await asyncio.sleep(0.2)
    await first.run("stty size", "50 132")
    # Both viewers see the same bytes from the moment the second joined.
    await first.run("echo both-$((1+1))", "both-2")
    await second.until(b"both-2")
    tail_first = bytes(first.data).rsplit(b"both-2", 1)[0][-200:]
    tail_second = bytes(second.data).rsplit(b"both-2", 1)[0][-200:]
    assert tail_first == tail_second
    # Input from the second viewer reaches the same shell.
    await second.run("echo from-two-$((2+1))", "from-two-3")
    await first.until(b"from-two-3")
    await first.ws.close()
    await second.ws.close()


async def test_detach_and_reconnect_while_output_continues(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    viewer = await open_console(client, session["id"])
    await viewer.run("i=0; while [ $i -lt 40 ]; do echo tick-$i; i=$((i+1)); sleep 0.05; done; "
                     "echo done-$((7*6))", "tick-3")  # fmt: skip
    await viewer.ws.close()
    # Rejoin only once the loop has finished, unwatched: then everything after tick-3 that
    # the new viewer gets can only come from the daemon's buffer, not from live output.
    consoles = client.app[CONSOLES]
    attachment = consoles.get(session["id"])
    assert attachment is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while attachment.viewers or b"done-42" not in attachment.buffer.snapshot():
        assert loop.time() < deadline, "the loop never finished while nobody watched"
        await asyncio.sleep(0.05)
    again = await open_console(client, session["id"])
    screen = await again.until(b"done-42")
    assert b"tick-20" in screen  # printed while nobody watched, replayed from the buffer
    state = await (await client.get(f"/api/sessions/{session['id']}")).json()
    assert state["session"]["status"] == "running"
    await again.ws.close()


async def test_bad_control_messages_keep_the_socket_open(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    viewer = await open_console(client, session["id"])
    for bad in ("{not json", "[1]", json.dumps({"type": "dance"}),
                json.dumps({"type": "resize", "cols": 0, "rows": 24}),
                json.dumps({"type": "resize", "cols": 100000, "rows": 24}),
                json.dumps({"type": "resize", "cols": "80", "rows": 24})):  # fmt: skip
        await viewer.ws.send_str(bad)
        error = await viewer.control("error")
        assert error["message"]
    await viewer.run("echo still-$((3*3))", "still-9")
    await viewer.run("stty size", "24 80")  # the refused resizes changed nothing
    await viewer.ws.close()


async def test_unknown_and_not_running_sessions_are_refused(client: Any, git_repo: Path) -> None:
    ws = await client.ws_connect("/ws/console/00000000-0000-4000-8000-000000000000")
    message = await ws.receive_json(timeout=5)
    assert message == {"type": "error", "message": "Session not found"}
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4404

    session = await create_running(client, git_repo)
    assert (await client.post(f"/api/sessions/{session['id']}/archive")).status == 200
    ws = await client.ws_connect(f"/ws/console/{session['id']}")
    message = await ws.receive_json(timeout=5)
    assert message["type"] == "error"
    await ws.receive(timeout=5)
    assert ws.close_code == 4409


async def test_hostile_origin_cannot_open_the_console(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(
            f"/ws/console/{session['id']}", headers={"Origin": "http://evil.example"}
        )
    assert refused.value.status == 403


async def test_agent_exit_sends_exit_code_and_session_stops(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    viewer = await open_console(client, session["id"])
    await viewer.run("echo ready-$((5+5))", "ready-10")
    await viewer.ws.send_bytes(b"exit 3\r")
    assert await viewer.control("exit") == {"type": "exit", "code": 3}
    for _ in range(100):
        state = (await (await client.get(f"/api/sessions/{session['id']}")).json())["session"]
        if state["status"] == "stopped":
            break
        await asyncio.sleep(0.05)
    assert state["status"] == "stopped"
    # Started again, the terminal is back.
    assert (await client.post(f"/api/sessions/{session['id']}/start")).status == 200
    again = await open_console(client, session["id"])
    await again.run("echo back-$((6+6))", "back-12")
    await again.ws.close()


def raw_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket handshake by hand, for a client that then never reads a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    )  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    return sock


@pytest.mark.timeout(180)
async def test_stalled_viewer_never_holds_back_the_others(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    stalled = await asyncio.to_thread(raw_websocket, client.port, f"/ws/console/{session['id']}")
    try:
        reader = await open_console(client, session["id"])
        await reader.run("echo go-$((2*21))", "go-42")
        start = len(reader.data)
        # 75 MB of zeros is 100 MB of base64 on one line, then a marker.
        await reader.ws.send_bytes(b"head -c 75000000 /dev/zero | base64 -w0; echo; "
                                   b"echo end-$((50+50))\r")  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 150
        rest_latencies = []
        while b"end-100" not in reader.data[-4096:]:
            assert loop.time() < deadline, "flood did not finish"
            await reader.pump(1)
            if len(rest_latencies) < 20 and len(reader.data) % 7 == 0:
                began = loop.time()
                assert (await client.get("/api/sessions")).status == 200
                rest_latencies.append(loop.time() - began)
        received = bytes(reader.data[start:])
        assert received.count(b"A") >= 100_000_000
        assert rest_latencies, "REST was never tried during the flood"
    finally:
        stalled.close()
    await reader.ws.close()


async def test_pause_holds_only_that_viewer(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    paused = await open_console(client, session["id"])
    live = await open_console(client, session["id"])
    await live.run("echo ready-$((4+4))", "ready-8")
    await paused.until(b"ready-8")
    await paused.ws.send_str(json.dumps({"type": "pause"}))
    # The daemon reads one socket's frames in order: the answer to a frame sent after the
    # pause proves the pause has been applied.
    await paused.ws.send_str(json.dumps({"type": "after-pause"}))
    await paused.control("error")
    held_at = len(paused.data)
    await live.run("echo during-$((9+9))", "during-18")
    # The output reached both viewers' queues at once, before the live one could read it.
    # A text frame still passes held bytes; unpaused, the bytes would arrive first.
    await paused.ws.send_str(json.dumps({"type": "after-output"}))
    await paused.control("error")
    assert b"during-18" not in bytes(paused.data[held_at:])
    await paused.ws.send_str(json.dumps({"type": "resume"}))
    await paused.until(b"during-18")
    await paused.ws.close()
    await live.ws.close()


async def test_viewer_leaving_mid_frame_hurts_nobody(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo)
    other = await open_console(client, session["id"])
    sock = await asyncio.to_thread(raw_websocket, client.port, f"/ws/console/{session['id']}")
    # A masked binary frame header announcing 1000 bytes, then only 3 of them, then gone.
    await asyncio.to_thread(sock.sendall, b"\x82\xfe\x03\xe8" + b"\x00\x00\x00\x00" + b"abc")
    sock.close()
    await other.run("echo alive-$((11+11))", "alive-22")
    assert (await client.get("/api/sessions")).status == 200
    await other.ws.close()


async def test_stopping_session_tells_viewers_and_refuses_input(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo)
    viewer = await open_console(client, session["id"])
    await viewer.run("echo up-$((1+2))", "up-3")
    assert (await client.post(f"/api/sessions/{session['id']}/archive")).status == 200
    error = await viewer.control("error")
    assert "detached" in error["message"]
    with contextlib.suppress(ConnectionError):
        await viewer.ws.send_bytes(b"echo nope\r")
    for _ in range(50):
        await viewer.pump(0.1)
        if viewer.closed:
            break
    assert viewer.closed


async def test_flood_yields_to_typing_elsewhere_and_loses_nothing(
    client: Any, git_repo: Path
) -> None:
    flooding = await create_running(client, git_repo, name="flooding")
    typed = await create_running(client, git_repo, name="typed")
    flood = await open_console(client, flooding["id"])
    keys = await open_console(client, typed["id"])
    await flood.run("echo ready-$((20+1))", "ready-21")
    await keys.run("echo ready-$((20+2))", "ready-22")
    start = len(flood.data)
    # 3 MB of zeros: 4,000,000 base64 characters on one line, then a marker.
    await flood.ws.send_bytes(b"head -c 3000000 /dev/zero | base64 -w0; echo; echo end-$((9*9))\r")
    typing = client.app[CONSOLES].typing
    turn = 0
    while b"end-81" not in flood.data[-4096:]:
        turn += 1
        await keys.run(f"echo key-$((1000+{turn}))", f"key-{1000 + turn}")
        # While someone types into "typed", the flooding terminal is the one that waits.
        assert typing.elsewhere(flooding["id"])
        assert not typing.elsewhere(typed["id"])
        await flood.pump(0.05)
        assert turn < 2000, "the flood never finished"
    assert bytes(flood.data[start:]).count(b"A") >= 4_000_000
    await flood.ws.close()
    await keys.ws.close()
