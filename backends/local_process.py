"""One run of a local session's command: the process in its PTY, its signals and its exit.

``spawn_pty`` forks the command into a new PTY with ``ptyprocess``, in a worker thread
because the fork waits for the child's exec, and hands back a plain non-blocking master fd.
A :class:`Child` then owns that fd and the pid. Its exit is reaped through a pidfd watched
by the loop (a waiting thread where the kernel gives no pidfd), never with a blocking
``waitpid`` on the loop. A process killed by a signal reports ``128 + signal``, as Docker
does. Its terminal stream is in ``backends.local_stream``; the handles that start it are in
``backends.local``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
import threading
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptyprocess import PtyProcess

from backends.base import BackendError

if TYPE_CHECKING:  # the stream module imports this one; a child only names its stream
    from backends.local_stream import PtyStream

# SIGKILL cannot be refused; a process still there after this is stuck in the kernel.
KILL_WAIT = 5.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def spawn_pty(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, size: tuple[int, int]
) -> tuple[int, int]:
    """Fork ``argv`` into a new PTY and return (pid, non-blocking master fd). Blocking.

    Runs in a worker thread: ``ptyprocess`` forks, then waits for the child's exec.
    """
    if not Path(cwd).is_dir():
        raise FileNotFoundError(errno.ENOENT, "working directory does not exist", cwd)

    def enter_cwd() -> None:
        # In the child. Failing here is reported back through ptyprocess's exec pipe;
        # spawn(cwd=...) would instead raise inside the forked copy of this daemon.
        os.chdir(cwd)

    cols, rows = size
    try:
        process = PtyProcess.spawn(
            list(argv), env=dict(env), dimensions=(rows, cols), preexec_fn=enter_cwd
        )
    except Exception as exc:
        # The failed attempt's PtyProcess, still referenced from the traceback, owns the
        # child's PTY; its __del__ closes it and reaps the child, sleeping 0.1 s. Let that
        # happen now, in this thread, not wherever the loop drops the traceback.
        traceback.clear_frames(exc.__traceback__)
        raise
    pid = int(process.pid)
    try:
        fd = os.dup(process.fd)  # non-inheritable, like every fd Python makes
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        # PtyProcess's isalive, terminate, close and __del__ call waitpid (and sleep): it
        # would reap our child behind our back. Retire it and keep a plain fd instead.
        process.fileobj.close()
        process.closed = True
    os.set_blocking(fd, False)
    return pid, fd


class Child:
    """One process started from a handle: its pid, its PTY master, its exit."""

    def __init__(self, pid: int, fd: int, logger: Any) -> None:
        self.pid = pid
        self.fd: int | None = fd
        self.returncode: int | None = None
        self.started_at = _now()
        self.finished_at: str | None = None
        self.exited = asyncio.Event()
        self.stream: PtyStream | None = None
        self.log = logger.bind(pid=pid)
        self.loop = asyncio.get_running_loop()
        self._pidfd: int | None = None
        self._watch()

    # the exit

    def _watch(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError) as exc:  # no pidfd: old kernel, or a seccomp filter
            self.log.debug("pidfd_unavailable", error=str(exc))
            threading.Thread(
                target=self._wait_in_thread, name=f"local-wait-{self.pid}", daemon=True
            ).start()
        else:
            self.loop.add_reader(self._pidfd, self._reap)

    def _wait_in_thread(self) -> None:
        # WNOWAIT leaves the zombie for _reap on the loop: until then the pid stays ours,
        # so signals sent from the loop can never reach a stranger that reused it.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self.loop.call_soon_threadsafe(self._reap)

    def _reap(self) -> None:
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone's waitpid(-1) took it; asyncio reports the same case as 255.
            self.log.warning("local_process_reaped_elsewhere")
            code = 255
        else:
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                code = 128 - code  # killed by signal -code, reported as a shell (and Docker) do
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.returncode = code
        self.finished_at = _now()
        self.exited.set()
        self.log.info("local_process_exited", exit_code=code)
        if self.stream is not None:
            self.stream._on_exit()

    # signals

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the agent and the jobs in its process group; nothing once it is reaped."""
        if self.returncode is not None:
            return
        # The child is a session leader (the PTY's), so its pid is also its group's id.
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def terminate(self, grace: float) -> None:
        """Hang up, wait up to ``grace`` seconds, then kill; returns once it has exited."""
        if self.exited.is_set():
            return
        if grace > 0:
            # SIGHUP is what a closing terminal sends (interactive shells ignore SIGTERM);
            # SIGCONT wakes a job stopped with ^Z so it can act on them.
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGCONT):
                self.signal_group(sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.exited.wait()
            if self.exited.is_set():
                return
            self.log.info("local_process_kill", grace=grace)
        self.signal_group(signal.SIGKILL)
        try:
            async with asyncio.timeout(KILL_WAIT):
                await self.exited.wait()
        except TimeoutError as exc:
            raise BackendError(
                "the agent's process did not end after SIGKILL",
                details={"pid": self.pid, "waited": KILL_WAIT},
            ) from exc

    # the terminal

    def set_size(self, cols: int, rows: int) -> None:
        if self.fd is None or self.returncode is not None:
            return
        with contextlib.suppress(OSError):  # hung up meanwhile: nothing to resize
            fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def release(self) -> None:
        """Close the PTY master: the attached stream ends, the terminal hangs up."""
        if self.stream is not None:
            self.stream._end()
        fd, self.fd = self.fd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
            os.close(fd)
