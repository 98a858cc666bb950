"""The backend contract: where a session's agent runs, and how the daemon reaches it.

A backend owns processes, never the store or sockets (DESIGN.md, "The house"). What the
daemon asks of one falls in two parts, written as two interfaces, so that a remote engine
(issue "beyond one machine") can pair its own lifecycle with its own way of reaching the
agent, and so that each part of the core depends on the narrow one it uses:

* :class:`Engine`: the lifecycle, what a JupyterHub ``Spawner`` does: make, start, stop,
  remove, poll and list the session's container, and watch the engine's events. The
  manager, the reconciler and the orphan sweep use it.
* :class:`Transport`: the byte paths to a running agent: its terminal (attach, resize, the
  TTY log). The console uses it (with the engine's ``inspect``, :class:`TerminalHost`, to
  learn how the agent ended).

:class:`Backend` is both, one object per kind (``docker``, ``local``), which is what the
daemon builds and keeps. Shared pieces live beside this module: ``labels`` (names, labels
and filters both kinds write and read), ``flow`` (the unread-output queue with its flow
control that both terminals use).

The engine's semantics, which every implementation keeps:

* ``create`` makes the container (or process handle) from a :class:`ContainerSpec` and does
  not start it; ``start`` starts it (a running one is success). Both raise
  :class:`ImageNotFound` when the image is missing and :class:`BackendError` for anything
  else the engine refuses.
* ``create`` isolates: a container engine drops every capability, forbids gaining
  privileges (setuid, file capabilities), applies the spec's limits, and refuses a network
  that shares another namespace (``host`` unless ``allow_host_network``; ``container:<id>``
  always) with :class:`NetworkRefused`. The local engine isolates nothing (its module says
  what it ignores).
* ``stop`` and ``remove`` are idempotent: a container that is already stopped, already
  being removed, or gone is success (DockerSpawner's rule: 404 and 409 "removal already in
  progress" are success). ``stop`` waits ``timeout`` seconds before it kills; ``remove``
  kills at once.
* ``inspect`` is the poll: a :class:`ContainerInfo` (state, exit code once it ended, times)
  or ``None`` for a container that does not exist; it never raises for that.
* ``list_managed`` finds corral's containers by label (``corral.managed=true``), in one
  engine call; given an ``instance`` (a daemon's data dir), only that daemon's. It is how
  the reconciler adopts what survived a daemon restart: the store keeps the container id,
  the engine the rest.
* ``events`` (where ``has_events``) streams the engine's container events for one daemon's
  containers, filtered by label on the engine's side. Entering it connects (raising
  :class:`BackendUnavailable` when the engine does not answer); the iteration ends when the
  engine closes the stream (it stopped or restarted). Events may be missed across a
  reconnection, so the caller runs a full pass after each connect.
* ``engine_calls`` counts requests made to the engine, so tests and benchmarks can check
  that a periodic pass costs the same however many sessions there are.
* Every method raises :class:`BackendUnavailable` when the engine does not answer, so the
  REST layer can answer 503 while the store keeps serving reads; ``info`` never raises.

The transport's semantics:

* ``attach`` opens the session's terminal: a :class:`TerminalStream` of the agent's TTY
  (the agent is the container's main process). The daemon keeps one per running session
  and never blocks on it; closing the stream detaches and never stops the agent. A stream
  holds at most about a mebibyte of unread output, then stops reading, so a slow daemon
  slows the agent (the terminal's own back-pressure) and nothing is lost.
* ``resize`` sets the TTY size; a container that is gone is success.
* ``recent_output`` is the tail of the TTY's own log, for rebuilding the screen after a
  daemon restart; backends that keep no log answer ``b""``.

Optional capabilities, for the egress policy (issue "credentials"); a backend without them
keeps the base class's answers:

* ``ensure_network(name, internal=...)`` makes a container network if it is missing (an
  ``internal`` one has no route off the machine) and answers the host's own address on it,
  where the daemon listens for that network's containers (the model gateway, the egress
  proxy). An existing network is only inspected. The base class raises
  ``NotImplementedError``: a backend without networks cannot seal a session.
* ``container_address(id)`` is the running container's IPv4 address, by which the gateway
  and the proxy tell which session a connection comes from; ``None`` when it is not
  running, unknown, or the backend has no addresses (local: its agents are host processes).

Not yet in the transport, and where it goes: **the agent's files and git.** Today the
daemon reaches both through host paths, because engine and daemon share one disk: it
writes and reads the agent home (``<data_dir>/sessions/<id>/home``, the container's
``$HOME``) with ``daemon.core.homefs`` (no-follow writes, bounded regular-file reads),
tails transcripts and hook files there, and runs host git in the worktrees and the
repositories' ``.git`` that :class:`Mount` sources name. On a remote engine those paths are
on another machine, so they become transport operations, beside the terminal: put and
get a file of the agent home by a path relative to it (bounded, never following a link,
the same rules ``homefs`` keeps), follow an append-only file from a byte offset (the
transcripts, the hooks file), and bring the session branch home (the container pushes to
a per-session bare repository the daemon serves, or sends a bundle; the daemon fetches it
into the user's repository, so host git still runs nothing the container wrote). A local
transport answers them with the host paths it has now; the core then calls the transport
instead of ``Path`` and ``git -C``. Until that issue, ``ContainerSpec.mounts`` is the only
place the core names a host path to a backend.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

LABEL_MANAGED = "corral.managed"
LABEL_SESSION_ID = "corral.session_id"
LABEL_DAEMON_INSTANCE = "corral.daemon_instance"


class BackendError(Exception):
    """The engine refused or failed an operation; ``details`` carries its own words."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BackendUnavailable(BackendError):
    """The engine does not answer (socket missing, connection refused, timed out)."""


class ImageNotFound(BackendError):
    """The requested image is not present and could not be pulled."""


class NetworkRefused(BackendError):
    """The spec asks for a network that would take the container out of its isolation."""


class ContainerState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"
    PAUSED = "paused"
    EXITED = "exited"
    DEAD = "dead"
    REMOVING = "removing"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a backend needs to make one session's container."""

    session_id: str
    session_name: str
    image: str
    working_dir: str
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # "uid:gid"; None runs as the image's user
    command: tuple[str, ...] | None = None  # None runs the image's own command
    cpu_limit: float | None = None  # cores; more than the engine has is capped to what it has
    memory_limit: int | None = None  # bytes
    pids_limit: int | None = None  # processes and threads together
    network_mode: str = "bridge"
    # "host" shares the host's loopback (the daemon's API among it): refused unless set.
    allow_host_network: bool = False
    daemon_instance: str = ""  # the owning daemon's data dir: one engine, several daemons


@dataclass(frozen=True)
class ContainerInfo:
    """What the engine says about one container at one moment."""

    id: str
    name: str
    state: ContainerState
    session_id: str | None = None
    image: str = ""
    exit_code: int | None = None
    error: str | None = None
    restart_count: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    oom_killed: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state in (ContainerState.RUNNING, ContainerState.RESTARTING)


@dataclass(frozen=True)
class ContainerEvent:
    """One container event from the engine: what happened, to which session's container."""

    action: str  # die, oom, destroy, start, kill, stop, ...
    container_id: str
    session_id: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class BackendInfo:
    available: bool
    version: str | None


class TerminalStream(abc.ABC):
    """One attachment to a session's TTY: raw bytes both ways."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next chunk the terminal printed; ``b""`` once the agent's process has ended."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send keystrokes; never blocks the event loop (waits for room, asynchronously)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Detach; the agent keeps running."""


class Engine(Protocol):
    """The lifecycle of sessions' containers on one engine (the semantics above)."""

    name: str
    # Whether ``events`` streams the engine's container events.
    has_events: bool = False
    # Requests made to the engine so far (see the contract above).
    engine_calls: int = 0

    @abc.abstractmethod
    async def info(self) -> BackendInfo:
        """Whether the engine answers, and its version; never raises."""

    @abc.abstractmethod
    async def create(self, spec: ContainerSpec) -> ContainerInfo:
        """Create (not start) the session's container; returns its inspection."""

    @abc.abstractmethod
    async def start(self, container_id: str) -> None:
        """Start a created or stopped container; a running one is success."""

    @abc.abstractmethod
    async def stop(self, container_id: str, timeout: float = 10) -> None:  # noqa: ASYNC109
        """Stop the container; stopped or missing is success."""

    @abc.abstractmethod
    async def remove(self, container_id: str) -> None:
        """Remove the container by force; missing or already being removed is success."""

    @abc.abstractmethod
    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's state, or None when it does not exist."""

    @abc.abstractmethod
    async def list_managed(self, instance: str | None = None) -> list[ContainerInfo]:
        """Every container labelled ``corral.managed=true`` (and, given ``instance``,
        ``corral.daemon_instance=<instance>``), in one engine call."""

    def events(
        self, instance: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ContainerEvent]]:
        """Connect to the engine's container events for ``instance``'s containers; only
        called where ``has_events``."""
        ...

    @abc.abstractmethod
    async def image_exists(self, image: str) -> bool:
        """Whether the image is present locally."""

    @abc.abstractmethod
    async def refresh_image(self, image: str) -> None:
        """Pull the image if a registry answers; keep the local one otherwise.

        Raises :class:`ImageNotFound` only when the pull fails and no local copy exists.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the engine client (and, for the local engine, end every agent)."""


class Transport(Protocol):
    """The byte paths to a running session's agent: today its terminal (the semantics
    above; the agent's files and git come here when the engine is remote)."""

    @abc.abstractmethod
    async def attach(self, container_id: str) -> TerminalStream:
        """Attach to the running container's TTY (stdin, stdout and stderr)."""

    @abc.abstractmethod
    async def resize(self, container_id: str, cols: int, rows: int) -> None:
        """Set the TTY size; a container that is gone has nothing to resize."""

    @abc.abstractmethod
    async def recent_output(self, container_id: str, max_bytes: int) -> bytes:
        """At most ``max_bytes`` of the TTY's most recent output, from the engine's log."""


class TerminalHost(Transport, Protocol):
    """What a console attachment needs: the terminal, and the poll that says how the agent
    ended once the stream has (a remote transport may answer it from its own channel)."""

    @abc.abstractmethod
    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's state, or None when it does not exist."""


class Backend(Engine, Transport, abc.ABC):
    """One place sessions can run, engine and transport in one object: ``docker``,
    ``local``. Subclasses must implement every abstract method of both."""

    def events(
        self, instance: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[ContainerEvent]]:
        """An engine without events (``has_events`` false) is polled instead."""
        raise NotImplementedError(f"the {self.name} backend has no events stream")

    async def ensure_network(self, name: str, *, internal: bool) -> str:
        """Make the network ``name`` if it is missing (``internal``: no route off the
        machine) and answer the host's address on it; an existing one is only inspected."""
        raise NotImplementedError(f"the {self.name} backend has no container networks")

    async def container_address(self, container_id: str) -> str | None:
        """The running container's IPv4 address; None when not running, unknown, or the
        backend's sessions have no address of their own."""
        return None
