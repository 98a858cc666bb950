"""LocalBackend with real PTYs and real processes: lifecycle, terminal I/O, flow control.

Each test gets its own backend, closed at teardown (which ends every process it started),
and every wait is bounded. The loop-stall checks run a 10 ms ticker beside the work and
assert that no tick came late by more than a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.base import (
    LABEL_DAEMON_INSTANCE,
    LABEL_MANAGED,
    LABEL_SESSION_ID,
    BackendError,
    ContainerSpec,
    ContainerState,
    Mount,
    TerminalStream,
)
from backends.local import LocalBackend, command_for, host_path
from backends.local_stream import HIGH_WATER, READ_BYTES, PtyStream

pytestmark = pytest.mark.timeout(30)

# Seconds a 10 ms tick may come late. Generous, because a busy CI machine delays ticks
# too; a blocking write on the loop would hold it until the flood drained (far longer).
STALL_LIMIT = 1.0
FLOOD = b"head -c 20000000 /dev/zero | base64 -w0; echo; echo END-$((1+1))\r"
FLOOD_BYTES = 26_666_668  # base64 of 20,000,000 bytes, without line breaks


@pytest.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    local = LocalBackend(close_grace=1.0)
    yield local
    await local.close()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    worktree = tmp_path / "worktree"
    (worktree / "sub").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    return worktree, home


def make_spec(
    dirs: tuple[Path, Path], command: tuple[str, ...] | None = ("sh",), name: str = "s1"
) -> ContainerSpec:
    worktree, home = dirs
    return ContainerSpec(
        session_id=f"id-{name}",
        session_name=name,
        image="no-such-image:never",
        working_dir="/workspace/sub",
        mounts=(Mount(str(worktree), "/workspace"), Mount(str(home), "/home/agent")),
        env={"HOME": "/home/agent", "TERM": "xterm-256color", "PLAIN": "value"},
        user="12345:12345",
        command=command,
        daemon_instance="/data/test",
    )


async def running(backend: LocalBackend, spec: ContainerSpec) -> tuple[str, PtyStream]:
    info = await backend.create(spec)
    await backend.start(info.id)
    stream = await backend.attach(info.id)
    assert isinstance(stream, PtyStream)
    return info.id, stream


async def read_until(stream: TerminalStream, marker: bytes, timeout: float = 10) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            chunk = await stream.read()
            assert chunk, f"the terminal ended before {marker!r}; saw {seen[-500:]!r}"
            seen += chunk
    return seen


async def read_to_end(stream: TerminalStream, timeout: float = 10) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while chunk := await stream.read():
            seen += chunk
    return seen


@contextlib.asynccontextmanager
async def loop_watch() -> AsyncIterator[list[float]]:
    """Yields [worst lateness of a 10 ms tick], kept up to date while the block runs."""
    worst = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            worst[0] = max(worst[0], now - last - 0.01)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield worst
    finally:
        done.set()
        await ticker


# -- paths and commands ---------------------------------------------------------------------


def test_host_path_takes_the_deepest_mount() -> None:
    mounts = (Mount("/h/work", "/workspace"), Mount("/h/other", "/workspace/other"))
    assert host_path("/workspace", mounts) == "/h/work"
    assert host_path("/workspace/a/b", mounts) == "/h/work/a/b"
    assert host_path("/workspace/other/x", mounts) == "/h/other/x"
    assert host_path("/workspacex", mounts) is None
    assert host_path("relative", mounts) is None
    assert host_path("/elsewhere", mounts) is None


def test_default_command_is_an_interactive_shell(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELL", "/bin/sh")
    assert command_for(make_spec(dirs, command=None)) == ("/bin/sh", "-i")
    monkeypatch.setenv("SHELL", "/no/such/shell")
    assert command_for(make_spec(dirs, command=None)) == ("/bin/bash", "-i")
    assert command_for(make_spec(dirs, command=("x", "y"))) == ("x", "y")


# -- lifecycle and terminal -----------------------------------------------------------------


async def test_echo_through_the_terminal(backend: LocalBackend, dirs: tuple[Path, Path]) -> None:
    info = await backend.create(make_spec(dirs))
    assert info.id.startswith("local-")
    assert info.state is ContainerState.CREATED
    assert info.session_id == "id-s1"
    await backend.start(info.id)
    await backend.start(info.id)  # running already: success, no second process
    after = await backend.inspect(info.id)
    assert after is not None
    assert after.state is ContainerState.RUNNING
    assert after.started_at is not None
    assert after.exit_code is None

    stream = await backend.attach(info.id)
    await stream.write(b"echo x-$((40+2))\r")
    await read_until(stream, b"x-42")
    assert await backend.recent_output(info.id, 1000) == b""


async def test_default_shell_runs(
    backend: LocalBackend, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELL", "/bin/sh")
    _, stream = await running(backend, make_spec(dirs, command=None))
    await stream.write(b"echo y-$((6*7))\r")
    await read_until(stream, b"y-42")


async def test_resize_sets_the_window(backend: LocalBackend, dirs: tuple[Path, Path]) -> None:
    container_id, stream = await running(backend, make_spec(dirs))
    await stream.write(b"stty size\r")
    await read_until(stream, b"24 80")
    await backend.resize(container_id, 100, 30)
    await stream.write(b"stty size\r")
    await read_until(stream, b"30 100")


async def test_cwd_and_env_are_mapped_from_mounts(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    worktree, home = dirs
    _, stream = await running(backend, make_spec(dirs))
    await stream.write(b'echo "cwd=$(pwd)" "home=$HOME" "pwd=$PWD" "plain=$PLAIN"\r')
    seen = await read_until(stream, b"plain=value")
    assert f"cwd={worktree / 'sub'} home={home} pwd={worktree / 'sub'}".encode() in seen


@pytest.mark.parametrize("watch", ["pidfd", "thread"])
async def test_exit_code_and_restart(
    backend: LocalBackend,
    dirs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    watch: str,
) -> None:
    if watch == "thread":

        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    container_id, stream = await running(backend, make_spec(dirs))
    await stream.write(b"exit 3\r")
    await read_to_end(stream)
    assert await stream.read() == b""  # and stays at the end
    info = await backend.inspect(container_id)
    assert info is not None
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 3
    assert info.finished_at is not None
    with pytest.raises(BackendError):
        await stream.write(b"too late\r")
    # Attaching to an ended process: a stream already at its end.
    assert await (await backend.attach(container_id)).read() == b""

    await backend.start(container_id)  # a new process, like restarting a container
    info = await backend.inspect(container_id)
    assert info is not None
    assert info.state is ContainerState.RUNNING
    assert info.exit_code is None
    again = await backend.attach(container_id)
    await again.write(b"echo again-$((1+2))\r")
    await read_until(again, b"again-3")


async def test_stop_escalates_to_sigkill(backend: LocalBackend, dirs: tuple[Path, Path]) -> None:
    stubborn = ("sh", "-c", "trap '' HUP TERM; echo ready-$((1)); while :; do sleep 1; done")
    container_id, stream = await running(backend, make_spec(dirs, command=stubborn))
    await read_until(stream, b"ready-1")
    began = time.monotonic()
    await backend.stop(container_id, timeout=0.5)
    took = time.monotonic() - began
    # It waited for the grace period, then did not wait for the process (which never ends by
    # itself): the upper bound is far from anything a loaded machine reaches.
    assert 0.4 < took < 20
    info = await backend.inspect(container_id)
    assert info is not None
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 137  # 128 + SIGKILL, as Docker reports it
    assert await read_to_end(stream) == b""


async def test_stop_and_remove_are_idempotent(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    info = await backend.create(make_spec(dirs))
    await backend.stop(info.id)  # created, never started
    await backend.start(info.id)
    await backend.stop(info.id, timeout=5)
    stopped = await backend.inspect(info.id)
    assert stopped is not None
    assert stopped.state is ContainerState.EXITED
    assert stopped.exit_code == 129  # 128 + SIGHUP: what an interactive shell dies of
    await backend.stop(info.id)
    await backend.remove(info.id)
    await backend.remove(info.id)
    assert await backend.inspect(info.id) is None
    await backend.stop("local-unknown")
    await backend.remove("local-unknown")

    running_one = await backend.create(make_spec(dirs, name="s2"))
    await backend.start(running_one.id)
    await backend.remove(running_one.id)  # by force, while running
    assert await backend.inspect(running_one.id) is None


async def test_unknown_and_unstarted_ids(backend: LocalBackend, dirs: tuple[Path, Path]) -> None:
    assert await backend.inspect("local-nope") is None
    with pytest.raises(BackendError) as raised:
        await backend.start("local-nope")
    assert raised.value.details["status"] == 404
    with pytest.raises(BackendError):
        await backend.attach("local-nope")
    await backend.resize("local-nope", 80, 24)
    created = await backend.create(make_spec(dirs))
    with pytest.raises(BackendError) as raised:
        await backend.attach(created.id)
    assert raised.value.details["status"] == 409
    await backend.resize(created.id, 120, 40)  # kept for the start


async def test_start_failures_are_backend_errors(
    backend: LocalBackend, dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = await backend.create(make_spec(dirs, command=("no-such-program-xyz",)))
    with pytest.raises(BackendError, match="no-such-program-xyz"):
        await backend.start(missing.id)
    info = await backend.inspect(missing.id)
    assert info is not None
    assert info.state is ContainerState.CREATED

    # Found and executable but no program: the exec fails in the child, after the fork.
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program")
    garbage.chmod(0o755)
    broken = await backend.create(make_spec(dirs, command=(str(garbage),)))
    # ptyprocess's cleanup of the failed child sleeps 0.1 s; that must not be on the loop.
    # Record which threads sleep, rather than time the loop: a timing is noise on a busy box.
    sleepers: list[threading.Thread] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        sleepers.append(threading.current_thread())
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", recording_sleep)
    with pytest.raises(BackendError, match="format"):
        await backend.start(broken.id)
    gc.collect()  # whatever the failure left behind is freed here, on the loop
    await asyncio.sleep(0.05)
    monkeypatch.setattr(time, "sleep", real_sleep)
    assert threading.main_thread() not in sleepers

    gone = tmp_path / "gone"
    spec = make_spec(dirs)
    spec = ContainerSpec(
        session_id=spec.session_id,
        session_name=spec.session_name,
        image=spec.image,
        working_dir="/workspace",
        mounts=(Mount(str(gone), "/workspace"),),
        command=("sh",),
    )
    nowhere = await backend.create(spec)
    with pytest.raises(BackendError) as raised:
        await backend.start(nowhere.id)
    assert raised.value.details["cwd"] == str(gone)


async def test_reattach_after_close_and_replacement(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    container_id, first = await running(backend, make_spec(dirs))
    await first.write(b"echo one-$((0+1))\r")
    await read_until(first, b"one-1")
    await first.close()
    await first.close()
    with pytest.raises(BackendError):
        await first.read()
    info = await backend.inspect(container_id)
    assert info is not None
    assert info.state is ContainerState.RUNNING  # detaching never stops the agent

    second = await backend.attach(container_id)
    await second.write(b"echo two-$((1+1))\r")
    await read_until(second, b"two-2")

    third = await backend.attach(container_id)  # takes over from the second
    with pytest.raises(BackendError):
        await second.read()
    await third.write(b"echo three-$((1+2))\r")
    await read_until(third, b"three-3")


async def test_list_managed_and_engine_answers(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    one = await backend.create(make_spec(dirs, name="s1"))
    two = await backend.create(make_spec(dirs, name="s2"))
    await backend.start(two.id)
    listed = {info.id: info for info in await backend.list_managed()}
    assert set(listed) == {one.id, two.id}
    assert listed[one.id].state is ContainerState.CREATED
    assert listed[two.id].state is ContainerState.RUNNING
    assert listed[two.id].name == "corral-s2"
    assert listed[two.id].labels == {
        LABEL_MANAGED: "true",
        LABEL_SESSION_ID: "id-s2",
        LABEL_DAEMON_INSTANCE: "/data/test",
    }
    answer = await backend.info()
    assert answer.available
    assert answer.version == "local"
    assert await backend.image_exists("anything")
    await backend.refresh_image("anything")


async def test_close_ends_every_process(dirs: tuple[Path, Path]) -> None:
    local = LocalBackend(close_grace=1.0)
    _, stream = await running(local, make_spec(dirs))
    await stream.write(b"echo pid-$$-x$((2+2))\r")
    seen = await read_until(stream, b"-x4")
    found = re.search(rb"pid-(\d+)-x4", seen)
    assert found is not None
    pid = int(found.group(1))
    await local.close()
    assert await local.list_managed() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- throughput and flow control --------------------------------------------------------------


async def test_flood_is_read_without_stalling_the_loop(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    _, stream = await running(backend, make_spec(dirs))
    total = 0
    tail = b""
    async with loop_watch() as worst:
        await stream.write(FLOOD)
        async with asyncio.timeout(20):
            while b"END-2" not in tail:
                chunk = await stream.read()
                assert chunk
                assert len(chunk) <= READ_BYTES
                total += len(chunk)
                tail = tail[-64:] + chunk
    assert total >= FLOOD_BYTES
    assert worst[0] < STALL_LIMIT


async def test_a_consumer_that_stops_reading_pauses_the_agent(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    _, stream = await running(backend, make_spec(dirs))
    peak = 0
    async with loop_watch() as worst:
        await stream.write(FLOOD)
        async with asyncio.timeout(10):
            while not stream.paused:
                await asyncio.sleep(0.01)
        # Held there: the agent blocks on its own output while the loop keeps ticking.
        for _ in range(30):
            await asyncio.sleep(0.01)
            peak = max(peak, stream.buffered)
        assert stream.paused
        total = 0
        tail = b""
        async with asyncio.timeout(20):
            while b"END-2" not in tail:
                chunk = await stream.read()
                assert chunk
                peak = max(peak, stream.buffered)
                total += len(chunk)
                tail = tail[-64:] + chunk
    assert HIGH_WATER <= peak <= HIGH_WATER + READ_BYTES
    assert total >= FLOOD_BYTES
    assert worst[0] < STALL_LIMIT


async def test_large_input_is_written_without_blocking_the_loop(
    backend: LocalBackend, dirs: tuple[Path, Path]
) -> None:
    _, stream = await running(backend, make_spec(dirs))
    # wc's count proves every byte arrived; the typed command does not contain it.
    await stream.write(b"head -c $((1<<20)) | wc -c\r")

    async def drain() -> None:  # the echo comes back and must be read, as the daemon does
        tail = b""
        while b"1048576" not in tail:
            chunk = await stream.read()
            assert chunk
            tail = tail[-64:] + chunk

    reader = asyncio.create_task(drain())
    payload = (b"y" * 63 + b"\n") * (1024 * 1024 // 64)
    async with loop_watch() as worst:
        async with asyncio.timeout(20):
            await stream.write(payload)
            await reader
    assert worst[0] < STALL_LIMIT
