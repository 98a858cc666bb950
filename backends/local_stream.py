"""The daemon's attachment to a local session's PTY master, read and written on the loop.

The master is non-blocking and driven by the event loop, as terminado and ttyd do it:
reads through ``loop.add_reader`` into a :class:`~backends.flow.Backlog`, paused while the
daemon has 1 MiB unread so that the agent blocks on its own writes and the loop never
does; writes with ``os.write``, with ``loop.add_writer`` finishing what the kernel did not
take at once.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import deque

from backends.base import BackendError, TerminalStream
from backends.flow import Backlog
from backends.local_process import Child

# One os.read and one read() result at most: DESIGN.md's 64 KiB slice keeps consoles fair.
READ_BYTES = 64 * 1024
# Unread output at which reading pauses, and at which it resumes.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


class PtyStream(TerminalStream):
    """The daemon's attachment to one process's PTY master.

    Output is read as the loop sees it ready, into a backlog; at :data:`HIGH_WATER` unread
    bytes the fd leaves the loop until :meth:`read` brings the backlog down to
    :data:`LOW_WATER`, so a slow consumer stalls the agent, never the daemon. The stream
    ends (``read`` gives ``b""``) once the process has exited and its output is drained:
    on EIO (nothing holds the terminal any more) or on an empty read after the exit, which
    also ends it when a background job the agent left behind still holds the terminal, as a
    container's end would. The process's exit is always recorded before ``b""``.

    After :meth:`close`, or when a newer :meth:`LocalBackend.attach` took over, ``read``
    and ``write`` raise :class:`BackendError`, so a detached stream is never mistaken for
    an agent that ended.
    """

    def __init__(self, child: Child) -> None:
        self._child = child
        self._loop = child.loop
        self._log = child.log
        self._backlog = Backlog(
            high=HIGH_WATER, low=LOW_WATER, pause=self._pause, resume=self._resume
        )
        self._output_done = False  # EIO or end of file: the terminal has no writer left
        self._ended = False
        self._detached = False
        self._pump_soon: asyncio.Handle | None = None
        self._pending: deque[tuple[memoryview, asyncio.Future[None]]] = deque()
        child.stream = self
        if child.fd is None:
            self._end()
            return
        self._loop.add_reader(child.fd, self._pump)
        if child.returncode is not None:
            self._schedule_pump()

    @property
    def buffered(self) -> int:
        """Bytes read from the PTY that ``read`` has not returned yet."""
        return self._backlog.buffered

    @property
    def paused(self) -> bool:
        """Whether reading is paused until the consumer catches up."""
        return self._backlog.paused

    # the contract

    async def read(self) -> bytes:
        while not self._backlog.buffered:
            self._check_attached()
            if self._ended:
                return b""
            await self._backlog.wait()
        self._check_attached()
        # Small PTY reads (a few KiB each) come out joined into one slice for the daemon.
        return self._backlog.take(READ_BYTES)

    async def write(self, data: bytes) -> None:
        """Hand ``data`` to the kernel; returns when all of it is there.

        Cancelling the call does not take back what was queued: half an escape sequence
        would garble the agent's input. The rest is still written, in order.
        """
        self._check_attached()
        fd = self._child.fd
        if self._ended or fd is None or self._child.returncode is not None:
            raise BackendError("the agent's terminal has ended", details={"pid": self._child.pid})
        if not data:
            return
        view = memoryview(data)
        if not self._pending:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise _write_error(exc) from exc
            if written == len(view):
                return
            view = view[written:]
            self._loop.add_writer(fd, self._flush)
        done: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((view, done))
        await done

    async def close(self) -> None:
        if self._detached:
            return
        self._detached = True
        self._stop_io("the terminal stream was closed")
        if self._child.stream is self:
            self._child.stream = None
        self._backlog.clear()
        self._backlog.wake()

    # reading

    def _pump(self) -> None:
        """Read one chunk, when the fd is ready or when asked to drain after the exit."""
        self._pump_soon = None
        fd = self._child.fd
        if fd is None or self._backlog.paused or self._output_done or self._ended or self._detached:
            return
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            # Nothing to read now. After the exit that is the end: the kernel pushes the
            # terminal's pending output to the master before it answers EAGAIN.
            if self._child.returncode is not None:
                self._child.release()
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: every process has closed the terminal
                self._log.warning("pty_read_failed", error=str(exc))
            data = b""
        # A PTY read returns at most about 4 KiB: take everything already there in one go,
        # so a flood wakes the pipeline once per 64 KiB, not once per 4 KiB.
        while data and len(data) < READ_BYTES:
            try:
                more = os.read(fd, READ_BYTES - len(data))
            except OSError:  # EAGAIN, or EIO at the end: the next pump sees it
                break
            if not more:
                break
            data += more
        if not data:
            self._output_done = True
            # The master stays readable (EIO) from now on; leaving it in the loop would spin.
            self._loop.remove_reader(fd)
            if self._child.returncode is not None:
                self._child.release()
            return
        self._backlog.put(data)  # at HIGH_WATER unread, this pauses reading
        if self._child.returncode is not None and not self._backlog.paused:
            # Drain what the exit left without waiting for readiness, down to the EAGAIN
            # that ends the stream.
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if self._pump_soon is None and not (self._ended or self._detached):
            self._pump_soon = self._loop.call_soon(self._pump)

    def _pause(self) -> None:
        fd = self._child.fd
        if fd is not None:
            self._loop.remove_reader(fd)

    def _resume(self) -> None:
        fd = self._child.fd
        if fd is None or self._output_done:
            return
        self._loop.add_reader(fd, self._pump)
        if self._child.returncode is not None:
            self._schedule_pump()

    def _on_exit(self) -> None:
        if self._ended or self._detached:
            return
        if self._output_done:
            self._child.release()
        else:
            self._schedule_pump()

    def _end(self) -> None:
        """The process is gone and its output read (or the PTY is being closed)."""
        if self._ended:
            return
        self._ended = True
        self._stop_io("the agent's terminal has ended")
        self._backlog.wake()

    def _check_attached(self) -> None:
        if self._detached:
            raise BackendError(
                "the terminal stream was closed or replaced by a newer attach",
                details={"pid": self._child.pid},
            )

    # writing

    def _flush(self) -> None:
        fd = self._child.fd
        if fd is None:
            return
        while self._pending:
            view, done = self._pending[0]
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail_writes(_write_error(exc))
                return
            if written < len(view):
                self._pending[0] = (view[written:], done)
                return
            self._pending.popleft()
            if not done.done():  # a cancelled caller's bytes are written all the same
                done.set_result(None)
        self._loop.remove_writer(fd)

    def _fail_writes(self, error: BackendError) -> None:
        fd = self._child.fd
        if fd is not None and self._child.stream is self:
            self._loop.remove_writer(fd)
        while self._pending:
            _, done = self._pending.popleft()
            if not done.done():
                done.set_exception(BackendError(error.message, details=error.details))

    def _stop_io(self, reason: str) -> None:
        if self._pump_soon is not None:
            self._pump_soon.cancel()
            self._pump_soon = None
        fd = self._child.fd
        # The fd may carry a newer stream's reader by now; only our own is ours to remove.
        if fd is not None and self._child.stream is self:
            self._loop.remove_reader(fd)
        self._fail_writes(BackendError(reason, details={"pid": self._child.pid}))


def _write_error(exc: OSError) -> BackendError:
    if exc.errno in (errno.EIO, errno.EBADF):
        return BackendError("the agent's terminal has ended", details={"error": str(exc)})
    return BackendError("cannot write to the agent's terminal", details={"error": str(exc)})
