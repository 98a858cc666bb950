"""Every long-lived or background task of the daemon: named, referenced, crashes logged, and
stopped in a written-down order on shutdown.

Tasks are spawned into a **group**. Groups are shut down in ``SHUTDOWN_ORDER``: first the
supervisors that act on sessions (so nothing starts a new operation), then the watchers
that only read, then the session operations under way (given a grace period to finish,
since a create cut short is left for the next start to settle), and last the event hub's
writes (so every event published before shutdown is stored before the store closes).

Tasks tied to one connection or one stream (a socket's writer, a console's reader, a
backend's stream readers) are owned by that object and end with it; they are not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# Groups, by what their tasks do.
SUPERVISE = "supervise"  # reconcile passes, engine events, checks, recovery timers, watchdog
WATCH = "watch"  # the agent watcher: reads files, publishes what they say
SESSIONS = "sessions"  # operations a client asked for (create, delete) and console reattach
HUB = "hub"  # the event hub's group commits
# Shutdown order, with whether the group is given the grace period (else cancelled at once).
SHUTDOWN_ORDER: tuple[tuple[str, bool], ...] = (
    (SUPERVISE, False),
    (WATCH, False),
    (SESSIONS, True),
    (HUB, True),
)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task (None: none was started) and wait until each has ended; what it
    raised was logged by its done callback, so it is not raised again here."""
    started = [task for task in tasks if task is not None]
    for task in started:
        task.cancel()
    if started:
        await asyncio.gather(*started, return_exceptions=True)


class TaskSupervisor:
    def __init__(self) -> None:
        self._groups: dict[str, set[asyncio.Task[Any]]] = {}

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, group: str = SESSIONS
    ) -> asyncio.Task[Any]:
        """Start ``coro`` as a task named ``name`` in ``group``; a crash is logged."""
        task = asyncio.create_task(coro, name=name)
        tasks = self._groups.setdefault(group, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._done)
        return task

    @staticmethod
    def _done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), exc_info=task.exception())

    def running(self, group: str = SESSIONS) -> list[asyncio.Task[Any]]:
        return [task for task in self._groups.get(group, ()) if not task.done()]

    async def wait(self, timeout: float | None = None, group: str = SESSIONS) -> None:  # noqa: ASYNC109 - a grace period, not a cancel scope
        """Let the group's running work finish (used by tests and graceful shutdown)."""
        if tasks := self.running(group):
            await asyncio.wait(tasks, timeout=timeout)

    async def cancel(self, group: str) -> None:
        """Cancel the group's tasks and wait until each has ended."""
        await cancel_and_wait(*self.running(group))

    async def close(self, timeout: float, group: str = SESSIONS) -> None:  # noqa: ASYNC109 - a grace period
        """Give the group ``timeout`` seconds to finish, then cancel what is left."""
        await self.wait(timeout, group)
        await self.cancel(group)

    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period
        """Stop every group in ``SHUTDOWN_ORDER``; a group not named there goes first."""
        ordered = [name for name, _ in SHUTDOWN_ORDER]
        for group in [g for g in self._groups if g not in ordered]:
            await self.cancel(group)
        for group, graceful in SHUTDOWN_ORDER:
            if graceful:
                await self.close(timeout, group)
            else:
                await self.cancel(group)

    def __len__(self) -> int:
        return sum(len(self.running(group)) for group in self._groups)
