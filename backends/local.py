"""The local backend: each session's agent runs as a host process in a pseudo-terminal.

The contract is the one in ``backends.base``, kept as the Docker backend keeps it, with no
isolation at all. The agent runs as the daemon's own user (``ContainerSpec.user`` is
ignored: a daemon never switches users), sees the whole host filesystem, and the image,
``cpu_limit``, ``memory_limit``, ``network_mode`` and ``Mount.read_only`` are ignored.
Mounts are not made; container paths are translated instead. The working directory, and
every environment value that is a path at or under a mount's target, become the same path
under that mount's source: ``/workspace/sub`` is ``<worktree>/sub`` and ``HOME=/home/agent``
is the session's agent home. Other container paths (``/repos/<name>``) do not exist here.

A "container" is a handle (here): ``create`` records how to run the agent; ``start`` runs
it as a :class:`~backends.local_process.Child` in a new PTY; a later ``start`` after the
process ended runs it again, like restarting a container. ``attach`` gives the daemon a
:class:`~backends.local_stream.PtyStream` of that PTY, read and written on the event loop
without ever blocking it.

A host process cannot outlive the PTY master the daemon holds (closing it hangs the
terminal up), so ``close`` ends every agent and nothing is adopted after a restart: the
reconciler marks local sessions stopped (DESIGN.md, "Local backend"). No TTY log is kept:
``recent_output`` answers ``b""`` and the daemon's ring buffer is the screen's only memory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from backends.base import (
    Backend,
    BackendError,
    BackendInfo,
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    Mount,
    TerminalStream,
)
from backends.labels import container_name, labels_for, managed_filter, matches
from backends.local_process import Child, spawn_pty
from backends.local_stream import PtyStream

log = structlog.get_logger(__name__)
ID_PREFIX = "local-"
DEFAULT_SIZE = (80, 24)  # cols, rows
DEFAULT_TERM = "xterm-256color"  # what the console's xterm.js speaks
FALLBACK_SHELLS = ("/bin/bash", "/bin/sh")
CLOSE_GRACE = 3.0
_MAX_WINSIZE = 0xFFFF  # struct winsize holds unsigned shorts


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
    child: Child | None = None
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
            name=container_name(self.spec.session_name),
            state=state,
            session_id=self.spec.session_id,
            image=self.spec.image,
            exit_code=child.returncode if child is not None else None,
            started_at=child.started_at if child is not None else None,
            finished_at=child.finished_at if child is not None else None,
            labels=labels_for(self.spec),
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
                asyncio.to_thread(spawn_pty, handle.argv, handle.env, handle.cwd, handle.size)
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
        # The filter the Docker engine applies, applied here to what this daemon holds.
        wanted = managed_filter(instance)
        infos = (handle.info() for handle in self._handles.values())
        return [info for info in infos if matches(info.labels, wanted)]

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
        child = Child(pid, fd, handle.log)
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
            orphan = Child(pid, fd, handle.log)
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
