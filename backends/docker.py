"""The Docker backend: each session's agent runs in one labelled container, driven by aiodocker.

It keeps the contract in ``backends.base``: a :class:`ContainerSpec` becomes a container
(hardened; the JSON both ways is ``backends/docker_json.py``), engine silence becomes
:class:`BackendUnavailable`, a missing image :class:`ImageNotFound`, a missing container
success (``stop``, ``remove``) or ``None`` (``inspect``). Both kinds of failure are
translated in one place, :class:`_Exchange`, so each operation is a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiodocker
import aiohttp
import structlog

from backends import docker_attach
from backends.base import (
    Backend,
    BackendError,
    BackendInfo,
    BackendUnavailable,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    ImageNotFound,
    TerminalStream,
)
from backends.docker_json import (
    container_config,
    container_event,
    container_info,
    container_ipv4,
    listed_container_info,
    network_config,
    network_gateway,
)
from backends.labels import container_name, managed_filter

log = structlog.get_logger(__name__)

INFO_TIMEOUT = 3.0
# aiodocker reports a failed connection as a DockerError with this pseudo status.
_NO_CONNECTION = 900
# Lines of TTY log read to rebuild a screen; the byte cap is the caller's.
RECENT_LINES = 5000
# The container events the reconciler acts on (filtered by the engine, not here).
WATCHED_EVENTS = ("start", "die", "oom", "kill", "stop", "destroy")
# The internal network of sessions whose egress is "none" or "allowlist": no route off the
# machine; the daemon listens on the host's address on it (model gateway, egress proxy).
SEALED_NETWORK = "corral-sealed"


class DockerBackend(Backend):
    """Sessions in Docker containers, through one lazily made aiodocker client."""

    name = "docker"
    has_events = True

    def __init__(
        self, url: str | None = None, *, api_timeout: float = 30.0, pull_timeout: float = 300.0
    ) -> None:
        self._url = url or None
        self._api_timeout = api_timeout
        self._pull_timeout = pull_timeout
        self._docker: aiodocker.Docker | None = None
        self._engine_cpus: int | None = None  # the engine's NCPU, read once

    # -- the contract ---------------------------------------------------------------------

    async def info(self) -> BackendInfo:
        try:
            async with self._engine("read the engine version", limit=INFO_TIMEOUT) as docker:
                answer = await docker.version()
        except BackendError:
            return BackendInfo(available=False, version=None)
        version = answer.get("Version")
        return BackendInfo(available=True, version=str(version) if version else None)

    async def create(self, spec: ContainerSpec) -> ContainerInfo:
        name = container_name(spec.session_name)
        config = container_config(spec)
        if spec.network_mode == "host":
            log.warning(
                "container_on_host_network",
                container=name,
                warning="THIS SESSION CAN REACH EVERY LOOPBACK SERVICE, CORRAL'S API INCLUDED",
            )
        if spec.cpu_limit is not None:
            # The engine refuses more CPUs than it has: a default of 2 cores must still start
            # a session on a 1-core machine.
            cpus = await self._cpu_count()
            if cpus and spec.cpu_limit > cpus:
                config["HostConfig"]["NanoCpus"] = cpus * 1_000_000_000
        async with self._engine(f"create container {name}") as docker:
            container = await docker.containers.create(config, name=name)
            data = await container.show()
        return container_info(data)

    async def _cpu_count(self) -> int:
        if self._engine_cpus is None:
            async with self._engine("read the engine's CPU count") as docker:
                answer = await docker.system.info()
            self._engine_cpus = int(answer.get("NCPU") or 0)
        return self._engine_cpus

    async def start(self, container_id: str) -> None:
        async with self._engine(f"start container {container_id}") as docker:
            await docker.containers.container(container_id).start()

    # The contract names the engine's grace period before it kills "timeout".
    async def stop(self, container_id: str, timeout: float = 10) -> None:  # noqa: ASYNC109
        # The request must outlive that grace period.
        async with self._engine(
            f"stop container {container_id}", absent_ok=True, limit=timeout + self._api_timeout
        ) as docker:
            await docker.containers.container(container_id).stop(t=max(0, round(timeout)))

    async def remove(self, container_id: str) -> None:
        async with self._engine(f"remove container {container_id}", absent_ok=True) as docker:
            # v=True drops anonymous volumes the image declared; binds are never touched.
            await docker.containers.container(container_id).delete(force=True, v=True)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        async with self._engine(f"inspect container {container_id}", absent_ok=True) as docker:
            return container_info(await docker.containers.container(container_id).show())
        return None

    async def list_managed(self, instance: str | None = None) -> list[ContainerInfo]:
        filters = {"label": managed_filter(instance)}
        async with self._engine("list corral's containers") as docker:
            containers = await docker.containers.list(all=True, filters=filters)
        # aiodocker keeps each list entry, unchanged, as the container object's data.
        return [listed_container_info(c._container) for c in containers]

    async def image_exists(self, image: str) -> bool:
        if not image:  # the engine would answer an empty name with a redirect, not a 404
            return False
        async with self._engine(f"inspect image {image}", absent_ok=True) as docker:
            await docker.images.inspect(image)
            return True
        return False

    async def refresh_image(self, image: str) -> None:
        if not image:
            raise ImageNotFound("no image named", details={"image": image})
        try:
            async with self._engine(f"pull image {image}", limit=self._pull_timeout) as docker:
                await docker.images.pull(image)
            return
        except BackendError as exc:
            # Offline machines and local-only images are normal: the local copy will do.
            log.info("image_pull_failed", image=image, error=exc.message)
            pull_error = exc.message
        if not await self.image_exists(image):
            raise ImageNotFound(
                f"image {image} is not present and could not be pulled",
                details={"image": image, "pull_error": pull_error},
            )

    async def resize(self, container_id: str, cols: int, rows: int) -> None:
        """Set the container's TTY size; a container that is gone has nothing to resize."""
        async with self._engine(f"resize container {container_id}", absent_ok=True) as docker:
            await docker.containers.container(container_id).resize(h=rows, w=cols)

    async def attach(self, container_id: str) -> TerminalStream:
        async with self._engine(f"attach to container {container_id}") as docker:
            engine_url = str(docker._connection_info)
            if docker_attach.supports(engine_url):
                return await docker_attach.open_attach(engine_url, container_id)
            stream = docker.containers.container(container_id).attach(
                stdin=True, stdout=True, stderr=True, logs=False
            )
            await stream.__aenter__()  # the hijacked connection opens here, under the deadline
        return _DockerTerminal(stream)

    async def recent_output(self, container_id: str, max_bytes: int) -> bytes:
        # aiodocker's log() decodes to text and would fail on a split UTF-8 sequence; the TTY
        # log is raw bytes, so read the response body as it is.
        params = {"stdout": "1", "stderr": "1", "tail": str(RECENT_LINES)}
        async with (
            self._engine(f"read the log of container {container_id}", absent_ok=True) as docker,
            docker._query(f"containers/{container_id}/logs", params=params) as response,
        ):
            data: bytes = await response.read()
            return data[-max_bytes:]
        return b""

    async def ensure_network(self, name: str, *, internal: bool, isolate: bool = True) -> str:
        """Make the bridge network ``name`` if it is missing and answer the host's address
        on it. ``isolate`` (only for a network made here) turns off traffic between its
        containers. An existing network is only inspected; one asked to be ``internal``
        that is not is refused, since a session put on it would reach everywhere."""
        data = await self._network(name)
        if data is None:
            config = network_config(name, internal=internal, isolate=isolate)
            try:
                async with self._engine(f"create network {name}") as docker:
                    await docker.networks.create(config)
                log.info("network_created", network=name, internal=internal, isolate=isolate)
            except BackendError as exc:
                # Another daemon or call made it meanwhile: use theirs (checked below).
                if not (isinstance(exc.details, dict) and exc.details.get("status") == 409):
                    raise
            data = await self._network(name)
            if data is None:
                raise BackendError(f"network {name} vanished right after it was made")
        if internal and not data.get("Internal"):
            raise BackendError(
                f"network {name} exists but is not internal, so its containers could reach "
                f"any host; remove it (docker network rm {name}) and corral makes it anew",
                details={"network": name},
            )
        address = network_gateway(data)
        if address is None:
            raise BackendError(
                f"network {name} has no IPv4 address for the host", details={"network": name}
            )
        return address

    async def _network(self, name: str) -> dict[str, Any] | None:
        async with self._engine(f"inspect network {name}", absent_ok=True) as docker:
            data: dict[str, Any] = await docker._query_json(f"networks/{name}")
            return data
        return None

    async def container_address(self, container_id: str) -> str | None:
        async with self._engine(f"inspect container {container_id}", absent_ok=True) as docker:
            return container_ipv4(await docker.containers.container(container_id).show())
        return None

    @contextlib.asynccontextmanager
    async def events(self, instance: str) -> AsyncIterator[AsyncIterator[ContainerEvent]]:
        """The engine's ``/events`` stream for ``instance``'s containers.

        Connecting is one engine call under the API deadline; the stream itself has no
        deadline (it is quiet while nothing happens) and ends when the engine closes it.
        """
        filters = {
            "type": ["container"],
            "label": managed_filter(instance),
            "event": list(WATCHED_EVENTS),
        }
        # A client of its own: when a call on the shared client finds the engine gone, that
        # client is closed, and a reader of a streaming response on it was seen to wait
        # forever. This stream's end must be the engine's own.
        own = self._new_client()
        try:
            async with self._engine("watch the engine's container events", client=own) as docker:
                # aiodocker's own events helper forwards through a channel task; the raw
                # endpoint is one response read line by line.
                response = await docker._do_query(
                    "events", method="GET", params={"filters": json.dumps(filters)}, timeout=None
                )
            try:
                yield _event_lines(response, self._url)
            finally:
                response.close()
        finally:
            await own.close()

    async def close(self) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            await docker.close()

    # -- the engine client and its failures -------------------------------------------------

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = self._new_client()
        return self._docker

    def _new_client(self) -> aiodocker.Docker:
        try:
            return aiodocker.Docker(url=self._url, api_version="auto")
        # With no url, aiodocker asserts that it found a socket (ValueError under -O).
        except (AssertionError, ValueError, aiodocker.DockerError) as exc:
            raise BackendUnavailable(
                "no Docker engine found", details={"url": self._url, "error": str(exc)}
            ) from exc

    async def _discard(self, docker: aiodocker.Docker) -> None:
        # An engine that went away may come back as another version (or at another socket when
        # the url is discovered), so the next call builds a new client and negotiates again.
        if self._docker is docker:
            self._docker = None
        await docker.close()

    def _engine(
        self,
        action: str,
        *,
        absent_ok: bool = False,
        limit: float | None = None,
        client: aiodocker.Docker | None = None,
    ) -> _Exchange:
        seconds = self._api_timeout if limit is None else limit
        return _Exchange(self, action, absent_ok=absent_ok, seconds=seconds, client=client)


class _DockerTerminal(TerminalStream):
    """The Engine API attach stream of a TTY container: raw bytes, no multiplexing."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self) -> bytes:
        try:
            message = await self._stream.read_out()
        except (aiohttp.ClientError, OSError, RuntimeError):
            return b""  # the engine closed the stream: the process ended or the engine left
        return b"" if message is None else bytes(message.data)

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write_in(data)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            raise BackendError("the terminal is closed", details={"error": str(exc)}) from exc

    async def close(self) -> None:
        await self._stream.close()


class _Exchange:
    """One exchange with the engine, its failures translated into the contract's errors.

    With ``absent_ok``, "no such object" (404) and "removal already in progress" (409) end
    the ``async with`` block quietly, so the caller's code after the block gives the absent
    answer. A class rather than a generator so type checkers know the block may be skipped.
    """

    def __init__(
        self,
        backend: DockerBackend,
        action: str,
        *,
        absent_ok: bool,
        seconds: float,
        client: aiodocker.Docker | None = None,
    ) -> None:
        self._backend = backend
        self._own_client = client  # None: the backend's shared client
        self._action = action
        self._absent_ok = absent_ok
        self._seconds = seconds
        self._deadline = asyncio.timeout(seconds)

    async def __aenter__(self) -> aiodocker.Docker:
        self._docker = self._own_client or self._backend._client()
        self._backend.engine_calls += 1
        await self._deadline.__aenter__()
        return self._docker

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        url = self._backend._url
        try:
            await self._deadline.__aexit__(exc_type, exc, tb)
        except TimeoutError as expired:
            raise _silent(self._action, url, self._seconds) from expired
        if exc is None:
            return False
        if isinstance(exc, TimeoutError):  # aiohttp's own deadline; also an OSError, so first
            raise _silent(self._action, url, self._seconds) from exc
        if self._lost_engine(exc):
            await self._backend._discard(self._docker)
            raise _unavailable(self._action, url, exc) from exc
        if isinstance(exc, aiodocker.DockerError):
            if self._absent_ok and _is_absent(exc):
                return True
            raise _refused(self._action, exc) from exc
        return False

    def _lost_engine(self, exc: BaseException) -> bool:
        if isinstance(exc, aiodocker.DockerError):
            return exc.status == _NO_CONNECTION
        # A client discarded by a concurrent call (the engine went away) refuses new requests
        # with a bare RuntimeError; that is the same outage, seen a moment later.
        if isinstance(exc, RuntimeError):
            return bool(self._docker.session.closed)
        return isinstance(exc, aiohttp.ClientError | OSError)


async def _event_lines(
    response: aiohttp.ClientResponse, url: str | None
) -> AsyncIterator[ContainerEvent]:
    """Each JSON line of an ``/events`` response as a ContainerEvent; ends at end of stream."""
    while True:
        try:
            line = await response.content.readline()
        # A closed connection may also surface as a bare RuntimeError("Connection closed").
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            raise _unavailable("read the engine's events", url, exc) from exc
        if not line:
            return
        event = container_event(line)
        if event is not None:
            yield event


def _silent(action: str, url: str | None, seconds: float) -> BackendUnavailable:
    return BackendUnavailable(
        f"Docker engine did not answer within {seconds:g} s: {action}",
        details={"url": url, "timeout": seconds},
    )


def _unavailable(action: str, url: str | None, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(
        f"Docker engine is not reachable: {action}", details={"url": url, "error": str(exc)}
    )


def _is_absent(exc: aiodocker.DockerError) -> bool:
    return exc.status == 404 or (exc.status == 409 and "already in progress" in exc.message)


def _refused(action: str, exc: aiodocker.DockerError) -> BackendError:
    details = {"status": exc.status, "message": exc.message}
    if exc.status == 404 and "no such image" in exc.message.lower():
        return ImageNotFound(f"cannot {action}: {exc.message}", details=details)
    return BackendError(f"cannot {action}: {exc.message}", details=details)
