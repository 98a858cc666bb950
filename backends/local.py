"""The local backend: each session's agent runs as a host process in a pseudo-terminal.

The contract is the one in ``backends.base``, kept as the Docker backend keeps it, with no
isolation at all. The agent runs as the daemon's own user (``ContainerSpec.user`` is
ignored: a daemon never switches users), sees the whole host filesystem, and the image,
``cpu_limit``, ``memory_limit``, ``network_mode`` and ``Mount.read_only`` are ignored.
Mounts are not made; container paths are translated instead. The working directory, and
every environment value that is a path at or under a mount's target, become the same path
under that mount's source: ``/workspace/sub`` is ``<worktree>/sub`` and ``HOME=/home/agent``
is the session's agent home. Other container paths (``/repos/<name>``) do not exist here.

A "container" is a handle. ``create`` records how to run the agent; ``start`` forks it
into a new PTY with ``ptyprocess``, in a worker thread because the fork waits for the
child's exec; a later ``start`` after the process ended runs it again, like restarting a
container. The PTY master is non-blocking and driven by the event loop, as terminado and
ttyd do it: reads through ``loop.add_reader`` into a queue bounded in bytes, paused while
the daemon has 1 MiB unread so that the agent blocks on its own writes and the loop never
does; writes with ``os.write``, with ``loop.add_writer`` finishing what the kernel did not
take at once. Exits are reaped through a pidfd watched by the loop (a waiting thread where
the kernel gives no pidfd), never with a blocking ``waitpid`` on the loop. A process killed
by a signal reports ``128 + signal``, as Docker does.

A host process cannot outlive the PTY master the daemon holds (closing it hangs the
terminal up), so ``close`` ends every agent and nothing is adopted after a restart: the
reconciler marks local sessions stopped (DESIGN.md, "Local backend"). No TTY log is kept:
``recent_output`` answers ``b""`` and the daemon's ring buffer is the screen's only memory.
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
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from ptyprocess import PtyProcess

from backends.base import (
    LABEL_DAEMON_INSTANCE,
    LABEL_MANAGED,
    LABEL_SESSION_ID,
    Backend,
    BackendError,
    BackendInfo,
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    Mount,
    TerminalStream,
)

log = structlog.get_logger(__name__)

ID_PREFIX = "local-"
NAME_PREFIX = "corral-"  # the Docker backend's container names, so both read alike
DEFAULT_SIZE = (80, 24)  # cols, rows
DEFAULT_TERM = "xterm-256color"  # what the console's xterm.js speaks
FALLBACK_SHELLS = ("/bin/bash", "/bin/sh")
# One os.read and one read() result at most: DESIGN.md's 64 KiB slice keeps consoles fair.
READ_BYTES = 64 * 1024
# Unread output at which reading pauses, and at which it resumes.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
# SIGKILL cannot be refused; a process still there after this is stuck in the kernel.
KILL_WAIT = 5.0
CLOSE_GRACE = 3.0
_MAX_WINSIZE = 0xFFFF  # struct winsize holds unsigned shorts


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- from a container's paths and command to the host's ------------------------------------


def host_path(path: str, mounts: Sequence[Mount]) -> str | None:
    """The host path that container path ``path`` is mounted from; None when none covers it.

    The deepest mount wins, as it would shadow the others in a container.
    """
    inside = PurePosixPath(path)
    if not inside.is_absolute():
        return None
    best: Mount | None = None
    for mount in mounts:
        target = PurePosixPath(mount.target)
        if inside != target and target not in inside.parents:
            continue
        if best is None or len(target.parts) > len(PurePosixPath(best.target).parts):
            best = mount
    if best is None:
        return None
    return str(PurePosixPath(best.source) / inside.relative_to(best.target))


def host_env(spec: ContainerSpec, cwd: str) -> dict[str, str]:
    """The daemon's environment, then the spec's with container paths made host paths."""
    env = dict(os.environ)
    for key, value in spec.env.items():
        env[key] = host_path(value, spec.mounts) or value
    env.setdefault("TERM", DEFAULT_TERM)
    # Inherited, PWD would name the daemon's directory; shells and tools trust it.
    env["PWD"] = cwd
    env.pop("OLDPWD", None)
    return env


def login_shell() -> str:
    """The user's shell (``$SHELL``), else bash, else sh."""
    for candidate in (os.environ.get("SHELL", ""), *FALLBACK_SHELLS):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return FALLBACK_SHELLS[-1]


def command_for(spec: ContainerSpec) -> tuple[str, ...]:
    """The spec's command, or the user's shell, interactive, where an image would run its own."""
    if spec.command:
        return spec.command
    return (login_shell(), "-i")


def _spawn_pty(
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


# -- one run of a handle's command --------------------------------------------------------


class _Child:
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


# -- the terminal stream -------------------------------------------------------------------


class PtyStream(TerminalStream):
    """The daemon's attachment to one process's PTY master.

    Output is read as the loop sees it ready, into a queue; at :data:`HIGH_WATER` unread
    bytes the fd leaves the loop until :meth:`read` brings the queue down to
    :data:`LOW_WATER`, so a slow consumer stalls the agent, never the daemon. The stream
    ends (``read`` gives ``b""``) once the process has exited and its output is drained:
    on EIO (nothing holds the terminal any more) or on an empty read after the exit, which
    also ends it when a background job the agent left behind still holds the terminal, as a
    container's end would. The process's exit is always recorded before ``b""``.

    After :meth:`close`, or when a newer :meth:`LocalBackend.attach` took over, ``read``
    and ``write`` raise :class:`BackendError`, so a detached stream is never mistaken for
    an agent that ended.
    """

    def __init__(self, child: _Child) -> None:
        self._child = child
        self._loop = child.loop
        self._log = child.log
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._output_done = False  # EIO or end of file: the terminal has no writer left
        self._ended = False
        self._detached = False
        self._ready = asyncio.Event()
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
        return self._buffered

    @property
    def paused(self) -> bool:
        """Whether reading is paused until the consumer catches up."""
        return self._paused

    # the contract

    async def read(self) -> bytes:
        while not self._chunks:
            self._check_attached()
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()
        self._check_attached()
        # Coalesce small PTY reads (a few KiB each) into one slice for the daemon.
        parts = [self._chunks.popleft()]
        size = len(parts[0])
        while self._chunks and size + len(self._chunks[0]) <= READ_BYTES:
            parts.append(self._chunks.popleft())
            size += len(parts[-1])
        self._buffered -= size
        if self._paused and self._buffered <= LOW_WATER:
            self._resume()
        return parts[0] if len(parts) == 1 else b"".join(parts)

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
        self._chunks.clear()
        self._buffered = 0
        self._ready.set()

    # reading

    def _pump(self) -> None:
        """Read one chunk, when the fd is ready or when asked to drain after the exit."""
        self._pump_soon = None
        fd = self._child.fd
        if fd is None or self._paused or self._output_done or self._ended or self._detached:
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
        self._chunks.append(data)
        self._buffered += len(data)
        self._ready.set()
        if self._buffered >= HIGH_WATER:
            self._paused = True
            self._loop.remove_reader(fd)
        elif self._child.returncode is not None:
            # Drain what the exit left without waiting for readiness, down to the EAGAIN
            # that ends the stream.
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if self._pump_soon is None and not (self._ended or self._detached):
            self._pump_soon = self._loop.call_soon(self._pump)

    def _resume(self) -> None:
        self._paused = False
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
        self._ready.set()

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


# -- the backend ---------------------------------------------------------------------------


@dataclass
class _Handle:
    """A "container": how to run one session's agent, and its current process."""

    id: str
    spec: ContainerSpec
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    log: Any
    size: tuple[int, int] = DEFAULT_SIZE  # cols, rows
    child: _Child | None = None
    removed: bool = False
    # Held while a process is being spawned, so start, stop and remove see it whole.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def info(self) -> ContainerInfo:
        child = self.child
        if child is None:
            state = ContainerState.CREATED
        elif child.returncode is None:
            state = ContainerState.RUNNING
        else:
            state = ContainerState.EXITED
        return ContainerInfo(
            id=self.id,
            name=f"{NAME_PREFIX}{self.spec.session_name}",
            state=state,
            session_id=self.spec.session_id,
            image=self.spec.image,
            exit_code=child.returncode if child is not None else None,
            started_at=child.started_at if child is not None else None,
            finished_at=child.finished_at if child is not None else None,
            labels={
                LABEL_MANAGED: "true",
                LABEL_SESSION_ID: self.spec.session_id,
                LABEL_DAEMON_INSTANCE: self.spec.daemon_instance,
            },
        )


class LocalBackend(Backend):
    """Sessions as host processes in PTYs, kept in memory for the daemon's lifetime."""

    name = "local"

    def __init__(self, *, close_grace: float = CLOSE_GRACE) -> None:
        self._close_grace = close_grace
        self._handles: dict[str, _Handle] = {}

    async def info(self) -> BackendInfo:
        return BackendInfo(available=True, version="local")

    async def create(self, spec: ContainerSpec) -> ContainerInfo:
        container_id = f"{ID_PREFIX}{uuid.uuid4().hex}"
        cwd = host_path(spec.working_dir, spec.mounts) or spec.working_dir
        handle = _Handle(
            id=container_id,
            spec=spec,
            argv=command_for(spec),
            cwd=cwd,
            env=host_env(spec, cwd),
            log=log.bind(session_id=spec.session_id, container_id=container_id),
        )
        self._handles[container_id] = handle
        # The command's arguments and the environment may carry credentials: not logged.
        handle.log.info("local_handle_created", program=handle.argv[0], cwd=cwd)
        return handle.info()

    async def start(self, container_id: str) -> None:
        handle = self._known(container_id)
        async with handle.lock:
            if handle.removed:
                raise _unknown(container_id)
            old = handle.child
            if old is not None:
                if old.returncode is None:
                    return
                old.release()
                handle.child = None
            spawning = asyncio.ensure_future(
                asyncio.to_thread(_spawn_pty, handle.argv, handle.env, handle.cwd, handle.size)
            )
            try:
                pid, fd = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                # The fork goes on in its thread; whatever it starts must not be lost.
                spawning.add_done_callback(lambda done: self._adopt_late(handle, done))
                raise
            except Exception as exc:
                handle.log.warning("local_start_failed", program=handle.argv[0], error=str(exc))
                raise BackendError(
                    f"cannot start {handle.argv[0]}: {exc}",
                    details={"program": handle.argv[0], "cwd": handle.cwd, "error": str(exc)},
                ) from exc
            self._adopt(handle, pid, fd)

    # The contract names the grace period before the kill "timeout".
    async def stop(self, container_id: str, timeout: float = 10) -> None:  # noqa: ASYNC109
        handle = self._handles.get(container_id)
        if handle is None:
            return
        async with handle.lock:  # a start under way finishes first: its process stops too
            child = handle.child
        if child is not None:
            await child.terminate(timeout)

    async def remove(self, container_id: str) -> None:
        handle = self._handles.pop(container_id, None)
        if handle is None:
            return
        handle.removed = True
        # By force, as Docker's: SIGKILL with no grace.
        await self._dispose(handle, grace=0)
        handle.log.info("local_handle_removed")

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        handle = self._handles.get(container_id)
        return handle.info() if handle is not None else None

    async def list_managed(self, instance: str | None = None) -> list[ContainerInfo]:
        return [
            handle.info()
            for handle in self._handles.values()
            if instance is None or handle.spec.daemon_instance == instance
        ]

    async def image_exists(self, image: str) -> bool:
        return True  # no image is used

    async def refresh_image(self, image: str) -> None:
        return None

    async def attach(self, container_id: str) -> TerminalStream:
        """The process's terminal; one stream at a time, the newest wins.

        A process that has ended gives a stream that is already at its end.
        """
        handle = self._known(container_id)
        child = handle.child
        if child is None:
            raise BackendError(
                f"{container_id} has not been started",
                details={"status": 409, "container_id": container_id},
            )
        previous = child.stream
        if previous is not None:
            # The loop takes one reader per fd; a leaked or forgotten stream must not keep
            # the terminal from its new owner.
            handle.log.warning("terminal_stream_replaced")
            await previous.close()
        return PtyStream(child)

    async def resize(self, container_id: str, cols: int, rows: int) -> None:
        handle = self._handles.get(container_id)
        if handle is None:
            return
        size = (_winsize(cols), _winsize(rows))
        handle.size = size  # also for the next start
        if handle.child is not None:
            handle.child.set_size(*size)

    async def recent_output(self, container_id: str, max_bytes: int) -> bytes:
        return b""

    async def close(self) -> None:
        """End every agent: none can outlive the PTY masters this daemon holds."""
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            handle.removed = True
        results = await asyncio.gather(
            *(self._dispose(handle, grace=self._close_grace) for handle in handles),
            return_exceptions=True,
        )
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, BackendError):
                handle.log.error("local_process_survived", error=result.message)
            elif isinstance(result, BaseException):
                handle.log.error("local_close_failed", exc_info=result)

    # -- helpers ---------------------------------------------------------------------------

    def _known(self, container_id: str) -> _Handle:
        handle = self._handles.get(container_id)
        if handle is None:
            raise _unknown(container_id)
        return handle

    def _adopt(self, handle: _Handle, pid: int, fd: int) -> None:
        child = _Child(pid, fd, handle.log)
        handle.child = child
        # A resize that came during the spawn was not in the size it started with.
        child.set_size(*handle.size)
        child.log.info("local_process_started", program=handle.argv[0])

    def _adopt_late(self, handle: _Handle, spawning: asyncio.Future[tuple[int, int]]) -> None:
        if spawning.cancelled() or spawning.exception() is not None:
            return
        pid, fd = spawning.result()
        current = handle.child
        if handle.removed or (current is not None and current.returncode is None):
            orphan = _Child(pid, fd, handle.log)
            orphan.signal_group(signal.SIGKILL)
            orphan.release()  # its pidfd watch still reaps it
            return
        self._adopt(handle, pid, fd)

    async def _dispose(self, handle: _Handle, grace: float) -> None:
        async with handle.lock:
            child = handle.child
        if child is None:
            return
        try:
            await child.terminate(grace)
        finally:
            child.release()


def _unknown(container_id: str) -> BackendError:
    return BackendError(
        f"no local session process {container_id}",
        details={"status": 404, "container_id": container_id},
    )


def _winsize(value: int) -> int:
    return max(1, min(int(value), _MAX_WINSIZE))
