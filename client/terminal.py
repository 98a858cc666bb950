"""The user's terminal: raw mode, a stdout that never blocks the loop, the alternate screen.

:class:`FdWriter` is the bridge's output sink on a real file descriptor (a terminal, a
pipe or a file); :class:`TrackingWriter` also notes whether the agent left the terminal
on the alternate screen, so detaching can bring back the user's own screen with
:data:`RESET_MODES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
import termios
import tty
from collections import deque
from typing import Any

from client.protocol import Size

# Modes a full-screen agent may leave on; the local terminal must not keep them after
# detaching (a hidden cursor, mouse reports typed into the shell, bracketed paste).
RESET_MODES = (
    b"\x1b[0m\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l"
    b"\x1b[?1004l\x1b[?2004l\x1b[?1l\x1b>"
)
_ALT_ENTER = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_LEAVE = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")


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


class TrackingWriter(FdWriter):
    """An :class:`FdWriter` that feeds what it writes to an :class:`AltScreen`."""

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
