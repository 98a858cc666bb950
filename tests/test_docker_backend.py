"""DockerBackend against the real engine: lifecycle, labels, idempotence, errors, unavailability.

Each test gets its own daemon-instance label and sweeps every container carrying it (or the
test label) at teardown, pass or fail. Containers run with network ``none``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiohttp import web

from backends.base import (
    LABEL_DAEMON_INSTANCE,
    LABEL_MANAGED,
    LABEL_SESSION_ID,
    BackendError,
    BackendUnavailable,
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    Mount,
)
from backends.docker import DockerBackend
from tests.conftest import TEST_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.timeout(60)]

MISSING_SOCKET = "unix:///tmp/nonexistent.sock"


@pytest.fixture
async def engine() -> AsyncIterator[aiodocker.Docker]:
    """A raw client, independent of the code under test, to look behind it and to sweep."""
    docker = aiodocker.Docker()
    yield docker
    await docker.close()


@pytest.fixture
async def instance(engine: aiodocker.Docker) -> AsyncIterator[str]:
    """This test's daemon-instance label value; its containers are removed at teardown."""
    value = f"test-{uuid.uuid4().hex}"
    yield value
    for label in (f"{LABEL_DAEMON_INSTANCE}={value}", f"{TEST_LABEL}={value}"):
        for container in await engine.containers.list(all=True, filters={"label": [label]}):
            await container.delete(force=True)


@pytest.fixture
async def backend(instance: str) -> AsyncIterator[DockerBackend]:
    b = DockerBackend()
    yield b
    await b.close()


@pytest.fixture
def make_spec(busybox_image: str, instance: str) -> Callable[..., ContainerSpec]:
    def make(**overrides: Any) -> ContainerSpec:
        session_id = str(uuid.uuid4())
        fields: dict[str, Any] = {
            "session_id": session_id,
            "session_name": f"test-{session_id[:12]}",
            "image": busybox_image,
            "working_dir": "/",
            "network_mode": "none",
            "daemon_instance": instance,
            "command": ("sleep", "30"),
        }
        fields.update(overrides)
        return ContainerSpec(**fields)

    return make


async def wait_exited(backend: DockerBackend, container_id: str) -> ContainerInfo:
    async with asyncio.timeout(10):
        while True:
            info = await backend.inspect(container_id)
            assert info is not None
            if info.state is ContainerState.EXITED:
                return info
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("user", [f"{os.getuid()}:{os.getgid()}", "1000:1000"])
async def test_create_does_not_start_and_runs_with_mounts_user_and_limits(
    backend: DockerBackend,
    engine: aiodocker.Docker,
    make_spec: Callable[..., ContainerSpec],
    busybox_image: str,
    instance: str,
    tmp_path: Path,
    user: str,
) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir(mode=0o777)
    ro.mkdir(mode=0o777)
    rw.chmod(0o777)  # the umask would keep a non-root container user out
    ro.chmod(0o777)
    script = "echo hi > /mnt/x && id -u > /mnt/uid && ! touch /ro/y 2>/dev/null"
    spec = make_spec(
        mounts=(Mount(str(rw), "/mnt"), Mount(str(ro), "/ro", read_only=True)),
        user=user,
        working_dir="/tmp",
        env={"GREETING": "hello world", "HOME": "/tmp"},
        cpu_limit=0.5,
        memory_limit=64 * 1024 * 1024,
        pids_limit=64,
        command=("sh", "-c", script),
    )

    info = await backend.create(spec)

    assert info.state is ContainerState.CREATED
    assert info.name == f"corral-{spec.session_name}"
    assert info.session_id == spec.session_id
    assert info.image == busybox_image
    assert info.labels[LABEL_MANAGED] == "true"
    assert info.labels[LABEL_SESSION_ID] == spec.session_id
    assert info.labels[LABEL_DAEMON_INSTANCE] == instance
    assert (info.exit_code, info.started_at, info.finished_at) == (None, None, None)
    assert not info.running
    assert not (rw / "x").exists()  # created, not started

    raw = await engine.containers.container(info.id).show()
    config, host = raw["Config"], raw["HostConfig"]
    assert config["User"] == user
    assert config["WorkingDir"] == "/tmp"
    assert config["Tty"] is True
    assert config["OpenStdin"] is True
    assert config["StdinOnce"] is False
    assert config["Cmd"] == ["sh", "-c", script]
    assert "GREETING=hello world" in config["Env"]
    assert host["Init"] is True
    assert host["NetworkMode"] == "none"
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["PidsLimit"] == 64
    # Hardened whatever the spec says: the mounts, uids and writes above work without them.
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["RestartPolicy"]["Name"] in ("", "no")

    await backend.start(info.id)
    done = await wait_exited(backend, info.id)

    assert done.exit_code == 0  # non-zero also when the read-only mount took a write
    assert (rw / "x").read_text() == "hi\n"
    assert (rw / "uid").read_text().strip() == user.split(":")[0]
    assert (rw / "x").stat().st_uid == int(user.split(":")[0])
    assert not (ro / "y").exists()
    assert done.started_at is not None
    assert done.finished_at is not None


async def test_start_runs_to_exit_code_and_list_reports_it(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    info = await backend.create(make_spec(command=("sh", "-c", "exit 3")))
    await backend.start(info.id)

    done = await wait_exited(backend, info.id)

    assert done.exit_code == 3
    assert not done.oom_killed
    listed = {c.id: c for c in await backend.list_managed()}
    assert listed[info.id].state is ContainerState.EXITED
    assert listed[info.id].exit_code == 3


async def test_start_of_a_running_container_is_success(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    info = await backend.create(make_spec())
    await backend.start(info.id)
    await backend.start(info.id)

    running = await backend.inspect(info.id)

    assert running is not None
    assert running.state is ContainerState.RUNNING
    assert running.running


async def test_stop_and_remove_are_idempotent(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    info = await backend.create(make_spec())
    await backend.start(info.id)

    await backend.stop(info.id, timeout=1)
    stopped = await backend.inspect(info.id)
    await backend.stop(info.id, timeout=1)

    assert stopped is not None
    assert stopped.state is ContainerState.EXITED
    await backend.remove(info.id)
    assert await backend.inspect(info.id) is None
    await backend.remove(info.id)
    await backend.stop(info.id)
    await backend.remove(uuid.uuid4().hex)
    await backend.stop(uuid.uuid4().hex)


async def test_remove_takes_a_running_container(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    info = await backend.create(make_spec())
    await backend.start(info.id)

    await backend.remove(info.id)

    assert await backend.inspect(info.id) is None


async def test_concurrent_removes_all_succeed(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    # One of them may meet the engine's 409 "removal already in progress".
    info = await backend.create(make_spec())
    await backend.start(info.id)

    await asyncio.gather(*(backend.remove(info.id) for _ in range(4)))

    assert await backend.inspect(info.id) is None


async def test_start_of_a_missing_container_is_a_backend_error(backend: DockerBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.start(uuid.uuid4().hex)

    assert type(caught.value) is BackendError
    assert caught.value.details["status"] == 404


async def test_inspect_of_an_unknown_container_is_none(backend: DockerBackend) -> None:
    assert await backend.inspect(uuid.uuid4().hex) is None
    assert await backend.inspect(f"corral-missing-{uuid.uuid4().hex}") is None


async def test_list_managed_sees_labelled_containers_only(
    backend: DockerBackend,
    engine: aiodocker.Docker,
    make_spec: Callable[..., ContainerSpec],
    busybox_image: str,
    instance: str,
) -> None:
    spec = make_spec()
    ours = await backend.create(spec)
    stranger = await engine.containers.create(
        {
            "Image": busybox_image,
            "Cmd": ["true"],
            "Labels": {TEST_LABEL: instance, LABEL_SESSION_ID: spec.session_id},
            "HostConfig": {"NetworkMode": "none"},
        },
        name=f"corral-stranger-{uuid.uuid4().hex[:12]}",
    )

    listed = {c.id: c for c in await backend.list_managed()}

    assert stranger.id not in listed
    mine = listed[ours.id]
    assert mine.name == f"corral-{spec.session_name}"
    assert mine.session_id == spec.session_id
    assert mine.state is ContainerState.CREATED
    assert mine.exit_code is None
    assert mine.labels[LABEL_DAEMON_INSTANCE] == instance
    assert mine.image == busybox_image


async def test_missing_image_is_image_not_found_and_leaves_no_container(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    spec = make_spec(image=f"corral-test-missing-{uuid.uuid4().hex}:none")

    with pytest.raises(ImageNotFound):
        await backend.create(spec)

    assert await backend.inspect(f"corral-{spec.session_name}") is None
    assert not await backend.image_exists(spec.image)


async def test_name_conflict_is_a_backend_error_with_the_engine_status(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    spec = make_spec()
    first = await backend.create(spec)

    with pytest.raises(BackendError) as caught:
        await backend.create(spec)

    assert type(caught.value) is BackendError
    assert caught.value.details["status"] == 409
    assert f"corral-{spec.session_name}" in caught.value.message
    assert "already in use" in caught.value.details["message"]
    assert await backend.inspect(first.id) is not None


async def test_missing_bind_source_is_a_backend_error(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec], tmp_path: Path
) -> None:
    spec = make_spec(mounts=(Mount(str(tmp_path / "absent"), "/mnt"),))

    with pytest.raises(BackendError) as caught:
        await backend.create(spec)

    assert type(caught.value) is BackendError
    assert not (tmp_path / "absent").exists()


async def test_refresh_image_keeps_a_local_image_when_the_pull_fails(
    backend: DockerBackend, engine: aiodocker.Docker, busybox_image: str
) -> None:
    # Port 1 on localhost refuses at once: a registry that is down, with no traffic elsewhere.
    repo = f"localhost:1/corral-test-{uuid.uuid4().hex[:12]}"
    await engine.images.tag(busybox_image, repo, tag="t")
    try:
        await backend.refresh_image(f"{repo}:t")
        assert await backend.image_exists(f"{repo}:t")
    finally:
        await engine.images.delete(f"{repo}:t")


async def test_refresh_image_without_a_local_copy_is_image_not_found(
    backend: DockerBackend,
) -> None:
    image = f"localhost:1/corral-test-missing-{uuid.uuid4().hex[:12]}:t"

    with pytest.raises(ImageNotFound) as caught:
        await backend.refresh_image(image)

    assert "connection refused" in caught.value.details["pull_error"]
    with pytest.raises(ImageNotFound):
        await backend.refresh_image("")
    assert not await backend.image_exists("")


async def test_resize_sets_the_tty_size(
    backend: DockerBackend, make_spec: Callable[..., ContainerSpec]
) -> None:
    # The container exits 0 as soon as it sees the new size, and is killed by the test otherwise.
    script = 'while [ "$(stty size)" != "40 120" ]; do sleep 0.05; done'
    info = await backend.create(make_spec(command=("sh", "-c", script)))
    await backend.start(info.id)

    await backend.resize(info.id, cols=120, rows=40)
    done = await wait_exited(backend, info.id)

    assert done.exit_code == 0
    await backend.remove(info.id)
    await backend.resize(info.id, cols=80, rows=24)  # gone: nothing to resize


async def test_info_reports_the_engine_version(
    backend: DockerBackend, engine: aiodocker.Docker
) -> None:
    info = await backend.info()

    assert info.available
    assert info.version == (await engine.version())["Version"]


async def test_constructing_touches_nothing_and_info_reports_unavailable() -> None:
    backend = DockerBackend(MISSING_SOCKET)
    try:
        info = await backend.info()
    finally:
        await backend.close()

    assert not info.available
    assert info.version is None


UNAVAILABLE_CALLS: dict[str, Callable[[DockerBackend, ContainerSpec], Awaitable[object]]] = {
    "create": lambda b, spec: b.create(spec),
    "start": lambda b, _: b.start("c"),
    "stop": lambda b, _: b.stop("c"),
    "remove": lambda b, _: b.remove("c"),
    "inspect": lambda b, _: b.inspect("c"),
    "list_managed": lambda b, _: b.list_managed(),
    "image_exists": lambda b, spec: b.image_exists(spec.image),
    "refresh_image": lambda b, spec: b.refresh_image(spec.image),
    "resize": lambda b, _: b.resize("c", 80, 24),
}


@pytest.mark.parametrize("method", sorted(UNAVAILABLE_CALLS))
async def test_every_method_raises_unavailable_without_an_engine(
    method: str, make_spec: Callable[..., ContainerSpec]
) -> None:
    backend = DockerBackend(MISSING_SOCKET)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await UNAVAILABLE_CALLS[method](backend, make_spec())
    finally:
        await backend.close()

    assert caught.value.details["url"] == MISSING_SOCKET


async def _fake_engine(
    path: Path, api_version: str, containers: list[Any], delay: float = 0
) -> tuple[web.AppRunner, list[web.Request]]:
    """A stand-in engine on a unix socket answering the version and container-list calls."""
    requests: list[web.Request] = []

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": api_version, "Version": f"fake-{api_version}"})

    async def container_list(request: web.Request) -> web.Response:
        requests.append(request)
        await asyncio.sleep(delay)
        return web.json_response(containers)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get(f"/v{api_version}/version", version)
    app.router.add_get(f"/v{api_version}/containers/json", container_list)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner, requests


async def test_client_is_rebuilt_when_the_engine_comes_back(tmp_path: Path) -> None:
    sock = tmp_path / "e.sock"
    listed = {
        "Id": "abc",
        "Names": ["/corral-x"],
        "Image": "img",
        "State": "exited",
        "Status": "Exited (137) 2 seconds ago",
        "Labels": {LABEL_MANAGED: "true", LABEL_SESSION_ID: "s1"},
    }
    backend = DockerBackend(f"unix://{sock}")
    first, requests = await _fake_engine(sock, "1.41", [])
    try:
        assert await backend.list_managed() == []
        assert len(requests) == 1  # one engine call, filtered by the label
        assert requests[0].query["all"] == "1"
        assert f"{LABEL_MANAGED}=true" in requests[0].query["filters"]
        await first.cleanup()
        sock.unlink(missing_ok=True)

        with pytest.raises(BackendUnavailable):
            await backend.list_managed()

        # An engine speaking an older API: only a fresh negotiation finds its routes.
        second, _ = await _fake_engine(sock, "1.40", [listed])
        try:
            [info] = await backend.list_managed()
            assert (await backend.info()).version == "fake-1.40"
        finally:
            await second.cleanup()
    finally:
        await first.cleanup()
        await backend.close()

    assert info == ContainerInfo(
        id="abc",
        name="corral-x",
        state=ContainerState.EXITED,
        session_id="s1",
        image="img",
        exit_code=137,
        labels={LABEL_MANAGED: "true", LABEL_SESSION_ID: "s1"},
    )


async def test_an_engine_that_does_not_answer_in_time_is_unavailable(tmp_path: Path) -> None:
    sock = tmp_path / "e.sock"
    runner, requests = await _fake_engine(sock, "1.41", [], delay=5)
    backend = DockerBackend(f"unix://{sock}", api_timeout=0.2)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await backend.list_managed()
        assert (await backend.info()).available  # a slow answer is not a lost engine
    finally:
        await backend.close()
        await runner.cleanup()

    assert caught.value.details["timeout"] == 0.2
    assert len(requests) == 1
