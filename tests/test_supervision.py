"""The hub's signals and the task supervisor: how supervisors hear the core and are stopped.

No engine: a store in a temporary folder, the hub and the supervisor on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from daemon.core.hub import AgentExited, EventHub, UserActed
from daemon.core.store import Store
from daemon.core.tasks import HUB, SESSIONS, SUPERVISE, WATCH, TaskSupervisor


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[EventHub]:
    store = Store(tmp_path / "corral.db")
    await store.open()
    hub = EventHub(store, TaskSupervisor())
    await hub.start()
    yield hub
    await hub.tasks.shutdown(timeout=5)
    await store.close()


async def test_signal_listeners_are_awaited_in_the_order_they_were_added(hub: EventHub) -> None:
    heard: list[str] = []

    async def first(signal: AgentExited) -> None:
        await asyncio.sleep(0.01)  # the second must still wait for it
        heard.append(f"first:{signal.session_id}")

    async def failing(signal: AgentExited) -> None:
        raise RuntimeError("a listener that breaks")

    async def second(signal: AgentExited) -> None:
        heard.append(f"second:{signal.session_id}")

    async def other_kind(signal: UserActed) -> None:
        heard.append("user")

    hub.on(AgentExited, first)
    hub.on(AgentExited, failing)
    remove = hub.on(AgentExited, second)
    hub.on(UserActed, other_kind)
    await hub.emit(AgentExited("s1", 0))
    # Every listener of the kind has acted when emit returns; one failing stops no other.
    assert heard == ["first:s1", "second:s1"]
    remove()
    await hub.emit(AgentExited("s2", None))
    assert heard == ["first:s1", "second:s1", "first:s2"]


async def test_published_events_reach_listeners_until_removed(hub: EventHub) -> None:
    seen: list[dict[str, object]] = []
    unlisten = hub.listen(seen.append)
    await hub.publish("session_status", "s1", status="running")
    unlisten()
    await hub.publish("session_status", "s1", status="stopped")
    assert [(e["type"], e["seq"], e["status"]) for e in seen] == [("session_status", 1, "running")]
    # The writes were the supervisor's tasks, in the hub group, and are done.
    assert not hub.tasks.running(HUB)
    assert len(await hub.store.events_tail("s1", 10, ("session_status",))) == 2


async def test_shutdown_stops_groups_in_order_and_lets_work_finish() -> None:
    tasks = TaskSupervisor()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    async def work(name: str) -> None:
        await asyncio.sleep(0.05)
        ended.append(name)

    tasks.spawn(work("hub-write"), name="hub-write", group=HUB)
    tasks.spawn(work("create"), name="create")  # SESSIONS by default
    tasks.spawn(forever("watcher"), name="watcher", group=WATCH)
    tasks.spawn(forever("passes"), name="passes", group=SUPERVISE)
    await asyncio.sleep(0)  # each has started
    assert len(tasks) == 4
    await tasks.shutdown(timeout=5)
    # Supervisors cancelled first, then watchers; session work and hub writes finish.
    assert ended[:2] == ["passes", "watcher"]
    assert sorted(ended[2:]) == ["create", "hub-write"]
    assert len(tasks) == 0


async def test_a_crashed_task_is_logged_by_name() -> None:
    tasks = TaskSupervisor()

    async def crash() -> None:
        raise RuntimeError("boom")

    with structlog.testing.capture_logs() as logs:
        task = tasks.spawn(crash(), name="crashing", group=SESSIONS)
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next turn
    assert [(e["event"], e["task"]) for e in logs] == [("background_task_failed", "crashing")]
    assert not tasks.running(SESSIONS)
