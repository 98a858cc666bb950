"""``corral attach`` against a real in-process daemon, on local-backend sessions (host PTYs).

The bridge is driven with a pipe for input and a capturing sink for output; the command
itself runs as a subprocess, once with piped stdin and once on a real pseudo-terminal
(``pty.openpty``) for raw mode, SIGWINCH and the termios restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import pty
import signal
import socket
import struct
import sys
import termios
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from client.attach import parse_detach_key
from client.bridge import Bridge
from client.protocol import Outcome, console_url
from client.terminal import AltScreen, FdWriter
from tests.conftest import ROOT, create_running, wait_for

pytestmark = pytest.mark.timeout(90)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class _Watched:
    """Bytes that arrive over time, and a wait for a marker among them."""

    data: bytearray
    _grew: asyncio.Event

    async def until(self, marker: bytes, timeout: float = 15) -> None:
        async def seen() -> None:
            while marker not in self.data:
                self._grew.clear()
                await self._grew.wait()

        try:
            await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{marker!r} not seen; tail: {bytes(self.data[-300:])!r}"
            ) from None


class Capture(_Watched):
    """An output sink that keeps everything, for asserting on."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._grew = asyncio.Event()

    @property
    def backlog(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.data += data
        self._grew.set()

    async def wait_below(self, limit: int) -> None:
        return None


class Attached:
    """A bridge running in the background: ``send`` types, ``output`` is the screen."""

    def __init__(self, bridge: Bridge, keys: int, output: Capture) -> None:
        self.bridge = bridge
        self.keys = keys
        self.output = output
        self.task = asyncio.create_task(bridge.run())

    def send(self, data: bytes) -> None:
        os.write(self.keys, data)

    async def run(self, command: str, marker: str) -> None:
        self.send(command.encode() + b"\r")
        await self.output.until(marker.encode())

    async def outcome(self, timeout: float = 15) -> Outcome:
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


@contextlib.asynccontextmanager
async def attached(
    url: Any,
    *,
    size: Callable[[], tuple[int, int] | None] | None = None,
    detach_key: bytes | None = b"\x1c",
) -> AsyncIterator[Attached]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    output = Capture()
    bridge = Bridge(url, input_fd=read_end, output=output, size=size, detach_key=detach_key)
    session = Attached(bridge, write_end, output)
    try:
        yield session
    finally:
        if not session.task.done():
            bridge.stop(Outcome(1, "signal", "test over"))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.task, 10)
        os.close(read_end)
        os.close(write_end)


def url_of(client: Any, session_id: str) -> Any:
    return console_url(str(client.make_url("")), session_id)


async def status_of(client: Any, session_id: str) -> str:
    response = await client.get(f"/api/sessions/{session_id}")
    return str((await response.json())["session"]["status"])


# --- the pieces ------------------------------------------------------------------------


def test_detach_key_spellings() -> None:
    assert parse_detach_key("ctrl-\\") == b"\x1c"
    assert parse_detach_key("ctrl-]") == b"\x1d"
    assert parse_detach_key("ctrl-q") == b"\x11"
    assert parse_detach_key("^Q") == b"\x11"
    assert parse_detach_key("none") is None
    for bad in ("ctrl-m", "ctrl-[", "ctrl-1", "q", "alt-q", "ctrl-qq"):
        with pytest.raises(ValueError, match="detach key"):
            parse_detach_key(bad)


def test_console_url_quotes_the_id() -> None:
    url = console_url("http://127.0.0.1:3030", "a/../b")
    assert url.raw_path == "/ws/console/a%2F%2E%2E%2Fb"
    assert console_url("http://h:1/prefix/", "id").raw_path == "/prefix/ws/console/id"
    with pytest.raises(ValueError, match="daemon URL"):
        console_url("127.0.0.1:3030", "x")


def test_alt_screen_tracking_across_reads() -> None:
    screen = AltScreen()
    screen.feed(b"hello \x1b[?10")
    screen.feed(b"49h full screen")
    assert screen.active
    screen.feed(b"\x1b[?1049l\x1b[?1049h\x1b[?1049l back")
    assert not screen.active


async def test_fd_writer_finishes_partial_writes_on_a_small_pipe() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: a pipe that takes 4 KiB at a time
    writer = FdWriter(write_end)
    try:
        payload = bytes(range(256)) * 2048  # 512 KiB, far more than the pipe holds
        writer.write(payload[:1000])
        writer.write(payload[1000:])
        assert writer.backlog > 0, "the pipe took everything: nothing was left to finish"
        received = bytearray()
        os.set_blocking(read_end, False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(received) < len(payload):
            assert loop.time() < deadline, f"stalled at {len(received)} bytes"
            with contextlib.suppress(BlockingIOError):
                received += os.read(read_end, 65536)
            await asyncio.sleep(0.001)
        await asyncio.wait_for(writer.wait_below(0), 5)
        assert bytes(received) == payload
        assert writer.backlog == 0
    finally:
        writer.close()
        os.close(read_end)
    assert os.get_blocking(write_end), "close did not restore the fd's flags"
    os.close(write_end)


# --- the bridge against the daemon -----------------------------------------------------


async def test_round_trip_and_detach_keeps_the_session(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    assert session["status"] == "running", session
    async with attached(url_of(client, session["id"])) as first:
        await first.run("echo x-$((40+2))", "x-42")
        # Line discipline signals off, so a forwarded Ctrl-\ would land in the read. The
        # marker says stty has run; what is typed from then on waits for the read.
        await first.run("stty -isig; echo set-$((1+1)); read -r line; echo got-${#line}-end",
                        "set-2")  # fmt: skip
        first.send(b"ab\x1cnever-typed")
        outcome = await first.outcome()
    assert outcome.status == 0
    assert outcome.reason == "detached"
    assert await status_of(client, session["id"]) == "running"

    async with attached(url_of(client, session["id"])) as again:
        await again.output.until(b"x-42")  # the screen is replayed on attach
        # "ab" went through before the key; the key and what followed it did not.
        await again.run("cd", "got-4-end")
        assert b"never-typed" not in again.output.data
        await again.run("echo still-$((6*7))", "still-42")
        again.send(b"\x1c")
        assert (await again.outcome()).status == 0
    assert await status_of(client, session["id"]) == "running"


async def test_other_detach_key_and_ctrl_backslash_goes_through(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, backend="local")
    async with attached(url_of(client, session["id"]), detach_key=b"\x1d") as viewer:
        await viewer.run("stty -isig; echo set-$((1+1)); read -r line; echo len-${#line}-end",
                         "set-2")  # fmt: skip
        viewer.send(b"a\x1cb\r")  # Ctrl-\ is an ordinary key now
        await viewer.output.until(b"len-3-end")
        viewer.send(b"\x1d")
        assert (await viewer.outcome()).reason == "detached"


async def test_agent_exit_ends_with_its_code(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    async with attached(url_of(client, session["id"])) as viewer:
        await viewer.run("echo ready-$((2+3))", "ready-5")
        viewer.send(b"exit 5\r")
        outcome = await viewer.outcome()
    assert outcome.status == 5
    assert outcome.reason == "exited"
    assert outcome.exit_code == 5
    await wait_for(client, session["id"], lambda s: s["status"] == "stopped", timeout=15)


async def test_unknown_session_is_status_2(client: Any) -> None:
    async with attached(url_of(client, UNKNOWN_ID)) as viewer:
        outcome = await viewer.outcome()
    assert outcome.status == 2
    assert outcome.message == "session not found"


async def test_session_not_running_is_status_3(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    assert (await client.post(f"/api/sessions/{session['id']}/archive")).status == 200
    async with attached(url_of(client, session["id"])) as viewer:
        outcome = await viewer.outcome()
    assert outcome.status == 3
    assert outcome.message.startswith("session not running")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_unreachable_daemon_is_status_1() -> None:
    port = closed_port()
    async with attached(console_url(f"http://127.0.0.1:{port}", UNKNOWN_ID)) as viewer:
        outcome = await viewer.outcome()
    assert outcome.status == 1
    assert "cannot reach the corral daemon" in outcome.message
    assert str(port) in outcome.message


async def test_resizes_follow_the_size_provider_debounced(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    size = [(90, 25)]
    asked = []

    def provider() -> tuple[int, int]:
        asked.append(size[0])
        return size[0]

    async with attached(url_of(client, session["id"]), size=provider) as viewer:
        await viewer.run("stty size", "25 90")  # from cols/rows on the URL
        asked.clear()
        for cols in (100, 110, 120, 132):  # a window being dragged
            size[0] = (cols, 40)
            viewer.bridge.window_changed()
        await until_sent(viewer.bridge, (132, 40))
        assert asked == [(132, 40)], "not debounced: the size was read more than once"
        await viewer.run("stty size", "40 132")
        size[0] = (5000, 1)  # beyond what the daemon takes: clamped, not refused
        viewer.bridge.window_changed()
        await until_sent(viewer.bridge, (1000, 2))
        await viewer.run("stty size", "2 1000")
        assert viewer.bridge.sent_size == (1000, 2)
        assert b"resize needs" not in viewer.output.data


async def until_sent(bridge: Bridge, size: tuple[int, int], timeout: float = 15) -> None:
    """Wait until the bridge has queued ``size``: keys typed after it go out after it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while bridge.sent_size != size:
        assert loop.time() < deadline, f"size never sent; last sent {bridge.sent_size}"
        await asyncio.sleep(0.01)


# --- the command -----------------------------------------------------------------------


async def read_until(stream: asyncio.StreamReader, marker: bytes, timeout: float = 15) -> bytes:
    seen = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while marker not in seen:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"{marker!r} not seen; tail: {bytes(seen[-300:])!r}")
        try:
            chunk = await asyncio.wait_for(stream.read(65536), remaining)
        except TimeoutError:
            continue
        if not chunk:
            raise AssertionError(f"{marker!r} not seen before EOF; tail: {bytes(seen[-300:])!r}")
        seen += chunk
    return bytes(seen)


async def run_attach(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.attach", *args, cwd=ROOT, **kwargs
    )


PIPES = {
    "stdin": asyncio.subprocess.PIPE,
    "stdout": asyncio.subprocess.PIPE,
    "stderr": asyncio.subprocess.PIPE,
}


def streams(
    proc: asyncio.subprocess.Process,
) -> tuple[asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamReader]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    return proc.stdin, proc.stdout, proc.stderr


async def test_command_with_piped_stdin(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    url = str(client.make_url(""))
    proc = await run_attach(session["id"], "--url", url, **PIPES)
    try:
        stdin, stdout, stderr = streams(proc)
        stdin.write(b"echo x-$((40+2))\r")
        await stdin.drain()
        await read_until(stdout, b"x-42")
        stdin.write(b"\x1c")
        await stdin.drain()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert b"detached" in await stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert await status_of(client, session["id"]) == "running"

    # Ending input does not end the client: the answer to what was sent still arrives.
    proc = await run_attach(session["id"], "--url", url, **PIPES)
    stdin, stdout, stderr = streams(proc)
    stdin.write(b"echo bye-$((3+4)); exit 7\r")
    stdin.close()
    assert await asyncio.wait_for(proc.wait(), 15) == 7
    assert b"bye-7" in await stdout.read()
    assert b"exit code 7" in await stderr.read()

    proc = await run_attach(UNKNOWN_ID, "--url", url, **PIPES)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"session not found" in err


def set_window(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyScreen(_Watched):
    """The parent's end of a pseudo-terminal, read from the event loop."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = bytearray()
        self._grew = asyncio.Event()
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            try:
                self.data += os.read(self.master, 65536)
            except OSError:  # EIO: no slave left open
                asyncio.get_running_loop().remove_reader(self.master)
        self._grew.set()

    async def run(self, command: str, marker: str) -> None:
        os.write(self.master, command.encode() + b"\r")
        await self.until(marker.encode())

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def screen_size(screen: PtyScreen, size: str, timeout: float = 15) -> None:
    """Ask ``stty size`` until it answers ``size``: the client's resize is its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for n in itertools.count():
        start = len(screen.data)
        await screen.run(f"stty size; echo asked-$(({n}+1000))", f"asked-{n + 1000}")
        if f"{size}\r\n".encode() in screen.data[start:]:
            return
        assert loop.time() < deadline, f"the terminal never became {size}"
        await asyncio.sleep(0.05)


async def test_command_on_a_real_terminal(client: Any, git_repo: Path) -> None:
    session = await create_running(client, git_repo, backend="local")
    url = str(client.make_url(""))
    master, slave = pty.openpty()
    set_window(slave, 100, 30)
    cooked = termios.tcgetattr(slave)
    screen = PtyScreen(master)
    on_tty = {"stdin": slave, "stdout": slave, "stderr": slave, "start_new_session": True}
    proc = await run_attach(session["id"], "--url", url, **on_tty)
    try:
        await screen.until(b"Ctrl-\\ detaches")
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG), "not in raw mode"
        await screen.run("stty size", "30 100")
        # Ctrl-C is a key for the agent, not a signal for the client. The marker comes from
        # the foreground job itself, so the key reaches it, not the shell starting it.
        await screen.run("sh -c 'echo up-$((2+2)); exec sleep 30'", "up-4")
        os.write(master, b"\x03")
        await screen.run("echo after-$((1+1))", "after-2")
        set_window(slave, 120, 40)
        os.kill(proc.pid, signal.SIGWINCH)  # what the kernel sends a foreground job
        await screen_size(screen, "40 120")
        os.write(master, b"\x1c")
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        await screen.until(b"corral: detached")
        assert termios.tcgetattr(slave) == cooked, "the terminal was left in raw mode"

        # A signal ends the client too, terminal restored, agent untouched.
        screen.data.clear()
        proc = await run_attach(session["id"], "--url", url, **on_tty)
        await screen.until(b"Ctrl-\\ detaches")
        await screen.run("echo again-$((8+8))", "again-16")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 128 + signal.SIGTERM
        assert termios.tcgetattr(slave) == cooked, "a signal left the terminal in raw mode"
        assert os.get_blocking(slave), "O_NONBLOCK was left on the terminal"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        screen.close()
        os.close(slave)
    assert await status_of(client, session["id"]) == "running"
