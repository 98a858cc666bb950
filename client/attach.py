"""``corral attach``: connect this terminal to a session's console (PROTOCOL.md, "/ws/console").

Two layers, so the bridge can be driven without a real terminal:

* :class:`Bridge` joins one ``/ws/console`` socket to an input file descriptor and an
  :class:`OutputSink`: input bytes go out as binary frames, binary frames come back to the
  sink, the window size goes out as debounced ``resize`` control frames, and the detach
  key (never forwarded) ends the bridge while the agent keeps running. It returns an
  :class:`Outcome` whose ``status`` is the client's exit status.
* :func:`attach` is the terminal around it: raw mode, ``SIGWINCH``, signals, stdout that
  may be a slow pipe, and the user-facing notices on stderr. When stdin is not a TTY it
  leaves termios alone and sends no sizes: a plain byte bridge for scripts.

Exit statuses: 0 detached; the agent's own code when it exits; 1 connection failure or
any other error; 2 the session does not exist; 3 the session is not running; 128 + N
when signal N ended the client. End of input on a piped stdin stops input only: output
is shown until the session ends or a signal ends the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import stat
import sys
import termios
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from daemon.core.console import MAX_COLS, MAX_ROWS, MIN_COLS, MIN_ROWS

DEFAULT_URL = "http://127.0.0.1:3030"
DEFAULT_DETACH_KEY = "ctrl-\\"

EXIT_DETACHED = 0
EXIT_FAILED = 1
EXIT_NOT_FOUND = 2
EXIT_NOT_RUNNING = 3

# Close codes of /ws/console (PROTOCOL.md); ws.console is not imported, it drags in the app.
CLOSE_NOT_FOUND = 4404
CLOSE_NOT_RUNNING = 4409
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

READ_BYTES = 64 * 1024
FRAME_BYTES = 64 * 1024  # keystrokes joined up to this, as the server slices its output
# Input waiting for the socket at which reading stdin pauses (a huge paste), and resumes.
INPUT_HIGH = 1024 * 1024
INPUT_LOW = 256 * 1024
# Output the sink has not taken at which the daemon is asked to pause us, and to resume.
OUTPUT_HIGH = 1024 * 1024
OUTPUT_LOW = 256 * 1024
RESIZE_DEBOUNCE = 0.1  # a window drag sends dozens of SIGWINCH; the PTY needs the last one
CONNECT_TIMEOUT = 10.0
HEARTBEAT = 30.0  # a daemon that vanished without a FIN is noticed within a minute
FLUSH_TIMEOUT = 2.0  # keystrokes typed before the detach key still get to the agent
DRAIN_TIMEOUT = 5.0  # output already received still gets to stdout, unless nobody reads it

# Keys that would detach on Enter, Tab, Backspace or the first byte of every arrow key.
_UNSAFE_KEYS = {"m": "Enter", "j": "Enter", "i": "Tab", "h": "Backspace", "[": "Escape"}

# Modes a full-screen agent may leave on; the local terminal must not keep them after
# detaching (a hidden cursor, mouse reports typed into the shell, bracketed paste).
RESET_MODES = (
    b"\x1b[0m\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l"
    b"\x1b[?1004l\x1b[?2004l\x1b[?1l\x1b>"
)
_ALT_ENTER = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_LEAVE = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")

Size = tuple[int, int]  # cols, rows


def parse_detach_key(spec: str) -> bytes | None:
    """``ctrl-\\``, ``ctrl-]``, ``ctrl-q``, ``^Q`` ... as the byte the terminal sends; ``none``."""
    text = spec.strip().lower()
    if text == "none":
        return None
    for prefix in ("ctrl-", "ctrl+", "c-", "^"):
        if text.startswith(prefix) and len(text) == len(prefix) + 1:
            char = text[-1]
            break
    else:
        raise ValueError(f"detach key {spec!r}: use ctrl-<key> (like ctrl-\\ or ctrl-q) or none")
    if char in _UNSAFE_KEYS:
        raise ValueError(f"detach key {spec!r} is the same byte as {_UNSAFE_KEYS[char]}")
    code = ord(char.upper())
    if not 0x40 <= code <= 0x5F:
        raise ValueError(f"detach key {spec!r}: ctrl- takes a letter or one of @ \\ ] ^ _")
    return bytes([code ^ 0x40])


def console_url(base_url: str, session_id: str) -> URL:
    """The console socket of ``session_id`` on the daemon at ``base_url`` (http or ws)."""
    base = URL(base_url)
    if base.scheme not in ("http", "https", "ws", "wss") or not base.host:
        raise ValueError(f"daemon URL {base_url!r} must look like http://127.0.0.1:3030")
    # One opaque segment: a "/" or ".." in an id must not reach another route.
    segment = quote(session_id, safe="").replace(".", "%2E")
    return (
        base.with_query(None).with_fragment(None).joinpath("ws", "console", segment, encoded=True)
    )


def clamp(size: Size) -> Size:
    """Into the range the daemon accepts; a 1-row or 2000-column terminal still attaches."""
    cols, rows = size
    return min(max(cols, MIN_COLS), MAX_COLS), min(max(rows, MIN_ROWS), MAX_ROWS)


@dataclass(frozen=True)
class Outcome:
    """How a bridge ended: ``status`` is the client's exit status."""

    status: int
    reason: str  # detached, exited, not_found, not_running, failed, signal
    message: str
    exit_code: int | None = None


class OutputSink(Protocol):
    """Where terminal output goes. ``write`` never waits; ``backlog`` is what it still holds."""

    @property
    def backlog(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    async def wait_below(self, limit: int) -> None: ...


class FdWriter:
    """Writes to a file descriptor (stdout: a terminal, a pipe or a file) from the event loop.

    The fd is made non-blocking so a reader that stops reading can only grow ``backlog``,
    never stall the loop; what the kernel does not take at once is finished by
    ``loop.add_writer``. ``close`` puts the fd's flags back: a terminal shares them with
    the shell that started us.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending: deque[memoryview] = deque()
        self._backlog = 0
        self._watching = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.error: OSError | None = None
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        mode = os.fstat(fd).st_mode
        # epoll refuses regular files (and /dev/null); writes to those never wait anyway.
        self._pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)
        if self._pollable:
            fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)

    @property
    def backlog(self) -> int:
        return self._backlog

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if not data:
            return
        view = memoryview(data)
        if not self._pending:
            view = view[self._write_some(view) :]
            if not view:
                return
        self._pending.append(view)
        self._backlog += len(view)
        if not self._watching:
            self._loop.add_writer(self.fd, self._flush)
            self._watching = True

    def _write_some(self, view: memoryview) -> int:
        if not self._pollable:
            written = 0
            while written < len(view):
                written += os.write(self.fd, view[written:])
            return written
        try:
            return os.write(self.fd, view)
        except (BlockingIOError, InterruptedError):
            return 0

    def _flush(self) -> None:
        try:
            while self._pending:
                head = self._pending[0]
                written = self._write_some(head)
                self._backlog -= written
                if written < len(head):
                    self._pending[0] = head[written:]
                    break
                self._pending.popleft()
        except OSError as exc:  # EPIPE: nobody reads our stdout any more
            self.error = exc
            self._pending.clear()
            self._backlog = 0
        if not self._pending:
            self._loop.remove_writer(self.fd)
            self._watching = False
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            limit, future = entry
            if self._backlog <= limit or self.error is not None:
                self._waiters.remove(entry)
                if not future.done():
                    future.set_result(None)

    async def wait_below(self, limit: int) -> None:
        if self._backlog <= limit or self.error is not None:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((limit, future))
        try:
            await future
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove((limit, future))

    def close(self) -> None:
        """Stop writing (what is still pending is dropped) and restore the fd's flags."""
        if self._watching:
            self._loop.remove_writer(self.fd)
            self._watching = False
        self._pending.clear()
        self._backlog = 0
        self._wake()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)


class Bridge:
    """One console socket joined to an input fd and an output sink; :meth:`run` once.

    ``size`` gives the local window (None: do not size the remote terminal at all);
    :meth:`window_changed` says it may have changed. :meth:`stop` ends the bridge from
    outside (a signal). ``on_connected`` runs once the socket is open, before any byte
    is read or written: the place to put a terminal in raw mode.
    """

    def __init__(
        self,
        url: URL | str,
        *,
        input_fd: int,
        output: OutputSink,
        size: Callable[[], Size | None] | None = None,
        detach_key: bytes | None = b"\x1c",
        notice: Callable[[str], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if detach_key is not None and len(detach_key) != 1:
            raise ValueError("the detach key is one byte")
        self.url = URL(url)
        self.input_fd = input_fd
        self.output = output
        self.size = size
        self.detach_key = detach_key
        self.notice = notice or (lambda _message: None)
        self.on_connected = on_connected
        self.connect_timeout = connect_timeout
        self.sent_size: Size | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[Outcome] = self._loop.create_future()
        self._connected = False
        self._outbox: deque[bytes | str] = deque()
        self._outbox_bytes = 0
        self._outbox_ready = asyncio.Event()
        self._flushing = False
        self._reading = False  # a reader is registered for input_fd
        self._input_ended = False
        self._input_task: asyncio.Task[None] | None = None  # input that epoll cannot watch
        self._input_room = asyncio.Event()  # clear while too much input waits for the socket
        self._input_room.set()
        self._resize_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._resumer: asyncio.Task[None] | None = None
        self._held_error: str | None = None
        self._seen_output = False

    # --- from outside ------------------------------------------------------------------

    def window_changed(self) -> None:
        """The window may have a new size: send it once the changes stop coming."""
        if self.size is None:
            return
        if self._resize_timer is not None:
            self._resize_timer.cancel()
        self._resize_timer = self._loop.call_later(RESIZE_DEBOUNCE, self._send_size)

    def stop(self, outcome: Outcome) -> None:
        """End the bridge with ``outcome`` (a signal, say); the agent keeps running."""
        self._finish(outcome)

    # --- the run -----------------------------------------------------------------------

    async def run(self) -> Outcome:
        url = self.url
        initial = self._current_size()
        if initial is not None:
            url = url.with_query(cols=initial[0], rows=initial[1])
        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            connecting = asyncio.ensure_future(self._connect(http, url))
            # A signal while connecting (a daemon that never answers) must end us too.
            racers: set[asyncio.Future[Any]] = {connecting, self._done}
            await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
            if self._done.done():
                connecting.cancel()
                await asyncio.wait({connecting})
                if not connecting.cancelled():
                    late = connecting.result()
                    if not isinstance(late, Outcome):
                        await late.close()
                return self._done.result()
            ws_or_outcome = connecting.result()
            if isinstance(ws_or_outcome, Outcome):
                return ws_or_outcome
            self.sent_size = initial
            async with ws_or_outcome as ws:
                return await self._bridge(ws)

    async def _connect(
        self, http: aiohttp.ClientSession, url: URL
    ) -> aiohttp.ClientWebSocketResponse | Outcome:
        # With auth on, an API token from the environment (never a flag: `ps` shows flags).
        token = os.environ.get("CORRAL_TOKEN", "").strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return await http.ws_connect(
                url,
                headers=headers,
                heartbeat=HEARTBEAT,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=FLUSH_TIMEOUT),
            )
        except aiohttp.WSServerHandshakeError as exc:
            return Outcome(EXIT_FAILED, "failed", _handshake_message(exc, self.url))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            target = self.url.origin() if self.url.absolute else self.url
            return Outcome(
                EXIT_FAILED, "failed", f"cannot reach the corral daemon at {target}: {detail}"
            )

    async def _bridge(self, ws: aiohttp.ClientWebSocketResponse) -> Outcome:
        self._connected = True
        if self.on_connected is not None:
            self.on_connected()
        receiver = asyncio.create_task(self._receive(ws), name="attach-receive")
        receiver.add_done_callback(self._receiver_done)
        sender = asyncio.create_task(self._send(ws), name="attach-send")
        self._start_input()
        self._send_size()  # the window may have changed while we connected
        try:
            outcome = await self._done
        finally:
            self._stop_input()
            if self._resize_timer is not None:
                self._resize_timer.cancel()
            if self._resumer is not None:
                self._resumer.cancel()
            receiver.cancel()
        if outcome.reason == "detached":
            self._flushing = True
            self._outbox_ready.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), FLUSH_TIMEOUT)
        sender.cancel()
        await asyncio.gather(receiver, sender, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), FLUSH_TIMEOUT)
        # Output already received (the last screen, the agent's goodbye) still goes out.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.output.wait_below(0), DRAIN_TIMEOUT)
        return outcome

    def _finish(self, outcome: Outcome) -> None:
        if not self._done.done():
            self._done.set_result(outcome)

    def _receiver_done(self, task: asyncio.Task[Outcome]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._finish(task.result())
        else:
            self._finish(Outcome(EXIT_FAILED, "failed", f"console connection failed: {error}"))

    # --- daemon to us ------------------------------------------------------------------

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> Outcome:
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                self._release_held_error()
                self._seen_output = True
                try:
                    self.output.write(message.data)
                except OSError as exc:
                    return Outcome(EXIT_FAILED, "failed", f"cannot write the output: {exc}")
                self._check_backlog()
            elif message.type is aiohttp.WSMsgType.TEXT:
                outcome = self._control(message.data)
                if outcome is not None:
                    return outcome
            elif message.type is aiohttp.WSMsgType.ERROR:
                return Outcome(EXIT_FAILED, "failed", f"console connection failed: {message.data}")
            else:  # CLOSE, CLOSING, CLOSED
                return self._closed(ws.close_code, message.extra)

    def _control(self, text: str) -> Outcome | None:
        try:
            message: Any = json.loads(text)
        except json.JSONDecodeError:
            return None  # a newer daemon's extras must not end the session
        if not isinstance(message, dict):
            return None
        kind = message.get("type")
        if kind == "exit":
            code = message.get("code")
            if type(code) is int:
                return Outcome(code, "exited", f"session ended with exit code {code}", code)
            return Outcome(EXIT_FAILED, "exited", "session ended (exit code unknown)")
        if kind == "error":
            self._release_held_error()
            text = str(message.get("message", "error"))
            if self._seen_output:
                self.notice(f"daemon: {text}")
            else:
                # Refusals (4404, 4409) come before any output: say it once, with the close.
                self._held_error = text
        return None

    def _release_held_error(self) -> None:
        if self._held_error is not None:
            self.notice(f"daemon: {self._held_error}")
            self._held_error = None

    def _closed(self, code: int | None, reason: object) -> Outcome:
        detail = self._held_error or (reason if isinstance(reason, str) and reason else None)
        self._held_error = None
        if code == CLOSE_NOT_FOUND:
            return Outcome(EXIT_NOT_FOUND, "not_found", "session not found")
        if code == CLOSE_NOT_RUNNING:
            suffix = f" ({detail})" if detail else ""
            return Outcome(EXIT_NOT_RUNNING, "not_running", f"session not running{suffix}")
        if code == CLOSE_GOING_AWAY:
            return Outcome(EXIT_FAILED, "failed", "the daemon is shutting down")
        if code == CLOSE_TRY_AGAIN_LATER:
            return Outcome(EXIT_FAILED, "failed", "the daemon dropped this client for reading "
                           "too slowly; attach again")  # fmt: skip
        suffix = f": {detail}" if detail else ""
        return Outcome(EXIT_FAILED, "failed", f"connection closed by the daemon ({code}){suffix}")

    def _check_backlog(self) -> None:
        # Ask the daemon to hold our output (only ours) rather than buffer without bound.
        if not self._paused and self.output.backlog > OUTPUT_HIGH:
            self._paused = True
            self._queue_control({"type": "pause"})
            self._resumer = asyncio.create_task(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        await self.output.wait_below(OUTPUT_LOW)
        self._paused = False
        self._queue_control({"type": "resume"})

    # --- us to the daemon --------------------------------------------------------------

    def _queue_control(self, message: dict[str, Any]) -> None:
        self._outbox.append(json.dumps(message))
        self._outbox_ready.set()

    def _queue_input(self, data: bytes) -> None:
        if data:
            self._outbox.append(data)
            self._outbox_bytes += len(data)
            self._outbox_ready.set()
            if self._outbox_bytes > INPUT_HIGH:
                self._pause_input()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                while self._outbox:
                    item = self._outbox.popleft()
                    if isinstance(item, str):
                        await ws.send_str(item)
                        continue
                    # A paste arrives in many reads; fewer, larger frames cost less.
                    parts = [item]
                    size = len(item)
                    while self._outbox and isinstance(self._outbox[0], bytes):
                        if size + len(self._outbox[0]) > FRAME_BYTES:
                            break
                        more = self._outbox.popleft()
                        assert isinstance(more, bytes)
                        parts.append(more)
                        size += len(more)
                    self._outbox_bytes -= size
                    if self._outbox_bytes < INPUT_LOW:
                        self._resume_input()
                    await ws.send_bytes(b"".join(parts))
                if self._flushing:
                    return
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
        except (ConnectionError, aiohttp.ClientError):
            return  # the receiver sees the close and says why

    def _current_size(self) -> Size | None:
        if self.size is None:
            return None
        size = self.size()
        return clamp(size) if size is not None else None

    def _send_size(self) -> None:
        self._resize_timer = None
        if not self._connected or self._done.done():
            return
        size = self._current_size()
        if size is None or size == self.sent_size:
            return
        self.sent_size = size
        self._queue_control({"type": "resize", "cols": size[0], "rows": size[1]})

    # --- input -------------------------------------------------------------------------

    def _start_input(self) -> None:
        try:
            self._loop.add_reader(self.input_fd, self._on_input)
            self._reading = True
        except PermissionError:
            # A regular file or /dev/null: epoll refuses them, and reads never wait.
            self._input_task = asyncio.create_task(self._read_file(), name="attach-input")

    def _stop_input(self) -> None:
        self._input_ended = True
        self._pause_input()
        if self._input_task is not None:
            self._input_task.cancel()

    def _pause_input(self) -> None:
        self._input_room.clear()
        if self._reading:
            self._loop.remove_reader(self.input_fd)
            self._reading = False

    def _resume_input(self) -> None:
        self._input_room.set()
        if self._reading or self._input_ended or self._input_task is not None:
            return
        if not self._done.done():
            self._loop.add_reader(self.input_fd, self._on_input)
            self._reading = True

    def _on_input(self) -> None:
        try:
            data = os.read(self.input_fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: the terminal hung up
        self._take_input(data)

    async def _read_file(self) -> None:
        while not self._done.done():
            try:
                data = os.read(self.input_fd, READ_BYTES)
            except OSError:
                data = b""
            self._take_input(data)
            if not data:
                return
            await self._input_room.wait()
            await asyncio.sleep(0)  # a long file must not starve the socket

    def _take_input(self, data: bytes) -> None:
        if not data:
            # End of input stops input only: what was sent may still be answered.
            self._input_ended = True
            self._pause_input()
            return
        if self.detach_key is not None:
            at = data.find(self.detach_key)
            if at >= 0:
                # What came before the key is the user's; the key and anything after are ours.
                self._queue_input(data[:at])
                self._finish(Outcome(EXIT_DETACHED, "detached", "detached; the session "
                                     "keeps running"))  # fmt: skip
                return
        self._queue_input(data)


def _handshake_message(exc: aiohttp.WSServerHandshakeError, url: URL) -> str:
    if exc.status == 401:
        if os.environ.get("CORRAL_TOKEN", "").strip():
            return "the daemon refused the API token in CORRAL_TOKEN (401): revoked or mistyped?"
        return (
            "the daemon requires authentication (401): set CORRAL_TOKEN to an API token "
            "(create one while signed in: POST /api/auth/tokens)"
        )
    if exc.status == 403:
        return f"the daemon refused the console connection (403): {exc.message}"
    if exc.status == 404:
        return f"no corral console at {url} (404); is --url a corral daemon?"
    return f"console connection refused ({exc.status}): {exc.message}"


class AltScreen:
    """Whether the agent's output left the terminal on the alternate screen.

    Leaving it on detach brings back the screen the user had; sending the sequence when
    not on it would restore a stale cursor position instead, hence the tracking.
    """

    def __init__(self) -> None:
        self.active = False
        self._tail = b""

    def feed(self, data: bytes) -> None:
        seen = self._tail + data  # a sequence may be split across two reads
        enter = max(seen.rfind(s) for s in _ALT_ENTER)
        leave = max(seen.rfind(s) for s in _ALT_LEAVE)
        if enter != leave:
            self.active = enter > leave
        self._tail = seen[-7:]


class _TrackingWriter(FdWriter):
    def __init__(self, fd: int, screen: AltScreen) -> None:
        super().__init__(fd)
        self.screen = screen

    def write(self, data: bytes) -> None:
        self.screen.feed(data)
        super().write(data)


class RawTerminal:
    """The terminal on ``fd`` in raw mode until :meth:`restore`; safe to restore twice."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def enter(self) -> None:
        if self._saved is None:
            self._saved = termios.tcgetattr(self.fd)
        # TCSANOW: TCSAFLUSH would throw away what the user typed while we connected.
        tty.setraw(self.fd, termios.TCSANOW)

    def reenter(self) -> None:
        """After SIGCONT: the shell put its own modes back when we were stopped."""
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                tty.setraw(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error):  # a hung-up terminal has nothing to restore
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def size(self) -> Size | None:
        try:
            cols, rows = os.get_terminal_size(self.fd)
        except OSError:
            return None
        return (cols, rows) if cols and rows else None


def _stderr(message: str, *, raw: bool = False) -> None:
    # Raw mode turns off the terminal's \n to \r\n; stderr may share stdout's O_NONBLOCK.
    with contextlib.suppress(OSError):
        sys.stderr.write(f"corral: {message}" + ("\r\n" if raw else "\n"))
        sys.stderr.flush()


def _key_name(spec: str) -> str:
    return "none" if spec.strip().lower() == "none" else "Ctrl-" + spec.strip()[-1].upper()


async def attach(
    session_id: str,
    *,
    url: str = DEFAULT_URL,
    detach_key: str = DEFAULT_DETACH_KEY,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
) -> int:
    """Attach this process's terminal to ``session_id``; the client's exit status."""
    try:
        key = parse_detach_key(detach_key)
        target = console_url(url, session_id)
    except ValueError as exc:
        _stderr(str(exc))
        return EXIT_FAILED
    loop = asyncio.get_running_loop()
    interactive = os.isatty(stdin_fd)
    terminal = RawTerminal(stdin_fd) if interactive else None
    screen = AltScreen()
    output = _TrackingWriter(stdout_fd, screen) if interactive else FdWriter(stdout_fd)

    def connected() -> None:
        if terminal is not None:
            terminal.enter()
            hint = "" if key is None else f"; {_key_name(detach_key)} detaches"
            _stderr(f"attached to {session_id}{hint}", raw=True)

    bridge = Bridge(
        target,
        input_fd=stdin_fd,
        output=output,
        size=terminal.size if terminal is not None else None,
        detach_key=key,
        notice=lambda message: _stderr(message, raw=terminal is not None),
        on_connected=connected,
    )

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        bridge.stop(Outcome(128 + signum, "signal", f"{name}: detached; the session keeps running"))

    def on_continue() -> None:
        if terminal is not None:
            terminal.reenter()
            bridge.window_changed()

    handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    if terminal is not None:
        loop.add_signal_handler(signal.SIGWINCH, bridge.window_changed)
        loop.add_signal_handler(signal.SIGCONT, on_continue)
        handled += [signal.SIGWINCH, signal.SIGCONT]
    try:
        outcome = await bridge.run()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        if terminal is not None and os.isatty(stdout_fd):
            with contextlib.suppress(OSError):
                output.write(RESET_MODES + (b"\x1b[?1049l" if screen.active else b""))
                await asyncio.wait_for(output.wait_below(0), FLUSH_TIMEOUT)
        output.close()
        if terminal is not None:
            terminal.restore()
    _stderr(outcome.message)
    return outcome.status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session_id", help="the session to attach to")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"daemon URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--detach-key",
        default=DEFAULT_DETACH_KEY,
        help="key that detaches without stopping the agent: ctrl-<key> or none "
        f"(default {DEFAULT_DETACH_KEY})",
    )


def run(args: argparse.Namespace) -> int:
    """``corral attach`` with parsed arguments."""
    return asyncio.run(attach(args.session_id, url=args.url, detach_key=args.detach_key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.attach", description="Attach this terminal to a corral session."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
