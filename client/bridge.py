"""The console bridge: one ``/ws/console`` socket joined to an input fd and an output sink.

Input bytes go out as binary frames, binary frames come back to the sink, the window size
goes out as debounced ``resize`` control frames, and the detach key (never forwarded) ends
the bridge while the agent keeps running. Both directions are bounded: a huge paste pauses
reading the input, and output the sink cannot take asks the daemon to ``pause``. It runs
without a real terminal, so tests drive it with pipes.

About 400 lines on purpose: :class:`Bridge` is one state machine whose two directions share
its state (the outbox, the pause flags, the input reader, the held refusal), and its end
is decided in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from yarl import URL

from client.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NOT_FOUND,
    CLOSE_NOT_RUNNING,
    CLOSE_TRY_AGAIN_LATER,
    EXIT_DETACHED,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_NOT_RUNNING,
    Outcome,
    Size,
    clamp,
    handshake_message,
)

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


class OutputSink(Protocol):
    """Where terminal output goes. ``write`` never waits; ``backlog`` is what it still holds."""

    @property
    def backlog(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    async def wait_below(self, limit: int) -> None: ...


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
            return Outcome(EXIT_FAILED, "failed", handshake_message(exc, self.url))
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
