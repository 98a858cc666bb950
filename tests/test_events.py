"""/ws/events: subscriptions, replay with since_seq, send_message, errors and slow clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.keys import HUB
from tests.conftest import create_running
from tests.test_console import open_console, raw_websocket

UNKNOWN = "00000000-0000-4000-8000-000000000000"


class Events:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def next(self, kind: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.received:
                if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                    self.received.remove(event)
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {kind} {match}; got {self.received[-5:]}")
            await self.pull(remaining)

    async def pull(self, timeout: float) -> None:
        """Receive one more event into ``received``."""
        message = await self.ws.receive(timeout=timeout)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended: {message}")
        self.received.append(json.loads(message.data))

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))


async def connect(client: Any) -> Events:
    return Events(await client.ws_connect("/ws/events"))


async def chat(client: Any, session_id: str, count: int, pad: int = 0) -> None:
    hub = client.app[HUB]
    for index in range(count):
        await hub.publish(
            "chat_message",
            session_id,
            message={"id": f"m{index}", "role": "assistant",
                     "content": f"line {index}" + " " * pad},
        )  # fmt: skip


@pytest.mark.docker
async def test_lifecycle_events_in_order(client: Any, git_repo: Path) -> None:
    events = await connect(client)
    await events.send(type="subscribe", session_id="*")
    assert (await events.next("subscribed"))["session_id"] == "*"
    session = await create_running(client, git_repo)
    created = await events.next("session_created", session_id=session["id"])
    assert created["session"]["name"] == session["name"]
    steps = [(await events.next("session_progress", session_id=session["id"]))["progress"]["step"]
             for _ in range(4)]  # fmt: skip
    assert steps == [1, 2, 3, 4]
    status = await events.next("session_status", session_id=session["id"], status="running")
    assert status["health"] == "healthy"
    assert status["seq"] > created["seq"]
    assert (await client.delete(f"/api/sessions/{session['id']}")).status == 202
    await events.next("session_deleted", session_id=session["id"])


async def test_replay_then_live_without_gap_or_duplicate(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    sid = session["id"]
    await chat(client, sid, 300)
    # Publish more while the subscriber replays, so live and stored events overlap.
    publisher = asyncio.create_task(chat(client, sid, 700))
    events = await connect(client)
    await events.send(type="subscribe", session_id=sid, since_seq=0)
    await events.next("subscribed", session_id=sid)
    await publisher
    latest = client.app[HUB].last_seq(sid)
    seqs: list[int] = []
    while not seqs or seqs[-1] < latest:
        message = await events.ws.receive(timeout=15)
        event = json.loads(message.data)
        if event.get("session_id") == sid and "seq" in event:
            seqs.append(event["seq"])
    assert seqs == list(range(1, latest + 1))


async def test_reconnect_with_since_seq_misses_nothing(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    sid = session["id"]
    first = await connect(client)
    await first.send(type="subscribe", session_id=sid)
    await first.next("subscribed", session_id=sid)
    await chat(client, sid, 5)
    last = await first.next("chat_message", session_id=sid, seq=client.app[HUB].last_seq(sid))
    await first.ws.close()
    await chat(client, sid, 5)  # while disconnected
    second = await connect(client)
    await second.send(type="subscribe", session_id=sid, since_seq=last["seq"])
    await second.next("subscribed", session_id=sid)
    missed = [await second.next("chat_message", session_id=sid, seq=last["seq"] + i)
              for i in range(1, 6)]  # fmt: skip
    assert [m["message"]["content"] for m in missed] == [f"line {i}" for i in range(5)]


async def test_lifecycle_seen_through_star_does_not_hide_earlier_chat(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, backend="local")
    sid = session["id"]
    events = await connect(client)
    await events.send(type="subscribe", session_id="*")
    await events.next("subscribed", session_id="*")
    await chat(client, sid, 3)
    status = await client.app[HUB].publish("session_status", sid, status="running")
    seen = await events.next("session_status", session_id=sid, seq=status["seq"])
    # Only the lifecycle event came through "*"; the chat before it must still replay,
    # and the lifecycle event must not come twice.
    await events.send(type="subscribe", session_id=sid, since_seq=0)
    await events.next("subscribed", session_id=sid)
    latest = client.app[HUB].last_seq(sid)
    replayed: list[int] = []
    await chat(client, sid, 1)  # a live event after the replay marks its end
    while not replayed or replayed[-1] <= latest:
        await events.pull(15)
        event = events.received.pop()
        if event.get("session_id") == sid and "seq" in event:
            replayed.append(event["seq"])
    assert replayed.pop() == latest + 1
    assert seen["seq"] not in replayed
    assert replayed == [n for n in range(1, latest + 1) if n != seen["seq"]]


async def test_messages_endpoint_and_chat_history(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    sid = session["id"]
    await chat(client, sid, 12)
    page = await (await client.get(f"/api/sessions/{sid}/messages?limit=5")).json()
    assert [m["message"]["id"] for m in page["messages"]] == ["m0", "m1", "m2", "m3", "m4"]
    rest = await (
        await client.get(f"/api/sessions/{sid}/messages?after={page['next_after']}&limit=100")
    ).json()
    assert [m["message"]["id"] for m in rest["messages"]][-1] == "m11"
    assert len(rest["messages"]) == 7
    detail = await (await client.get(f"/api/sessions/{sid}")).json()
    assert [m["message"]["id"] for m in detail["session"]["chat_history"]][-1] == "m11"
    assert all(m["type"] == "chat_message" for m in detail["session"]["chat_history"])
    bad = await client.get(f"/api/sessions/{sid}/messages?after=-1")
    assert bad.status == 400
    assert (await client.get(f"/api/sessions/{UNKNOWN}/messages")).status == 404


async def test_bad_messages_get_errors_and_the_socket_stays(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    events = await connect(client)
    cases: list[tuple[str, str]] = [
        ("{broken", "INVALID_REQUEST"),
        ("[1, 2]", "INVALID_REQUEST"),
        (json.dumps({"type": "teleport"}), "INVALID_REQUEST"),
        (json.dumps({"type": "subscribe", "session_id": UNKNOWN}), "SESSION_NOT_FOUND"),
        (json.dumps({"type": "subscribe", "session_id": session["id"], "since_seq": 10**6}),
         "INVALID_REQUEST"),
        (json.dumps({"type": "subscribe", "session_id": session["id"], "since_seq": -1}),
         "INVALID_REQUEST"),
        (json.dumps({"type": "send_message", "session_id": session["id"], "content": "  "}),
         "INVALID_REQUEST"),
        (json.dumps({"type": "send_message", "session_id": UNKNOWN, "content": "hi"}),
         "SESSION_NOT_FOUND"),
        (json.dumps({"type": "send_message", "session_id": session["id"]}), "INVALID_REQUEST"),
    ]  # fmt: skip
    for text, code in cases:
        await events.ws.send_str(text)
        error = await events.next("error")
        assert error["code"] == code, (text, error)
        assert error["message"]
    await events.ws.send_bytes(b"\x00")
    assert (await events.next("error"))["code"] == "INVALID_REQUEST"
    await events.send(type="ping")
    assert await events.next("pong") == {"type": "pong"}


async def test_send_message_reaches_the_terminal(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    viewer = await open_console(client, session["id"])
    await viewer.run("echo ready-$((2+3))", "ready-5")
    events = await connect(client)
    await events.send(type="send_message", session_id=session["id"], content="echo sent-$((6*7))")
    await viewer.until(b"sent-42")
    response = await client.post(
        f"/api/sessions/{session['id']}/message", json={"content": "echo posted-$((7*7))"}
    )
    assert response.status == 202
    await viewer.until(b"posted-49")
    empty = await client.post(f"/api/sessions/{session['id']}/message", json={"content": ""})
    assert empty.status == 400
    assert (await client.post(f"/api/sessions/{session['id']}/archive")).status == 200
    stopped = await client.post(f"/api/sessions/{session['id']}/message", json={"content": "x"})
    assert stopped.status == 409
    assert (await stopped.json())["error"]["code"] == "CONFLICT"
    await events.send(type="send_message", session_id=session["id"], content="hello")
    assert (await events.next("error"))["code"] == "CONFLICT"
    await viewer.ws.close()


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = struct.pack("!BB", 0x81, 0x80 | len(payload))
    elif len(payload) < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, len(payload))
    return head + mask + masked


@pytest.mark.timeout(120)
async def test_client_that_never_reads_is_closed_others_unaffected(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, backend="local")
    sid = session["id"]
    stalled = await asyncio.to_thread(raw_websocket, client.port, "/ws/events")
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    subscribe = json.dumps({"type": "subscribe", "session_id": sid}).encode()
    await asyncio.to_thread(stalled.sendall, masked_text_frame(subscribe))
    reader = await connect(client)
    await reader.send(type="subscribe", session_id=sid)
    await reader.next("subscribed", session_id=sid)
    # The stalled socket's subscribe is not read back: wait until the hub holds both.
    hub = client.app[HUB]
    async with asyncio.timeout(10):
        while sum(sid in getattr(x, "sessions", ()) for x in hub._listeners) < 2:
            await asyncio.sleep(0.01)
    try:
        start = client.app[HUB].last_seq(sid)
        count = 10_000

        async def read_all() -> list[int]:
            seqs = []
            while len(seqs) < count:
                event = await reader.next("chat_message", session_id=sid, timeout=60)
                seqs.append(event["seq"])
            return seqs

        reading = asyncio.create_task(read_all())
        # 10,000 events of 1 KB for a client that reads none: more than the kernel's
        # socket buffers can hide, so they queue up in the daemon.
        for _ in range(10):
            await chat(client, sid, 1000, pad=1000)
            await asyncio.sleep(0)
        assert await reading == list(range(start + 1, start + count + 1))
        # The stalled client was closed by the server: its socket reaches end of file.
        stalled.settimeout(10)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        data = b""
        while chunk := await asyncio.to_thread(stalled.recv, 1 << 20):
            data += chunk
        assert data.count(b'"type": "chat_message"') < count  # it never got everything
    finally:
        stalled.close()


async def test_oversized_client_frame_is_refused(client: Any) -> None:
    events = await connect(client)
    await events.ws.send_str(json.dumps({"type": "ping", "pad": "x" * (1024 * 1024)}))
    message = await events.ws.receive(timeout=10)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert events.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
