"""The in-process event hub: per-session sequence numbers, stored before delivery; and the
daemon's own lifecycle signals, which its supervisors listen to.

Two kinds of things go through it, as on Home Assistant's event bus:

* **Published events** (:meth:`EventHub.publish`): what clients see on ``/ws/events``. Each
  is stored under the session's next seq, then handed to every listener added with
  :meth:`EventHub.listen`. Those listeners are plain callables that must not block (a
  socket's listener puts the event on its own bounded queue); publishing never waits on a
  consumer.
* **Signals** (:meth:`EventHub.emit`): what happened inside the daemon that the
  supervisors act on, never stored nor sent to clients: :class:`UserActed` (a client asked
  for an action; emitted before it runs) and :class:`AgentExited` (a session's terminal
  ended; emitted after the core recorded it). Listeners are coroutines added with
  :meth:`EventHub.on`, **awaited one after the other in the order they were added**, so the
  emitter goes on only once every listener has acted (recovery forgets its attempts before
  the user's action is journaled). A listener that raises is logged; the others still run.

Both ``listen`` and ``on`` return the function that removes the listener.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from daemon.core.models import Action
from daemon.core.session import SessionRecord, rfc3339, utcnow
from daemon.core.store import Store
from daemon.core.tasks import HUB, TaskSupervisor

log = structlog.get_logger(__name__)

Event = dict[str, Any]
Listener = Callable[[Event], None]


@dataclass(frozen=True)
class UserActed:
    """A client asked for ``action`` on the session; it is allowed and about to run."""

    record: SessionRecord
    action: Action


@dataclass(frozen=True)
class AgentExited:
    """The session's terminal ended (its agent is gone); the record says what was done."""

    session_id: str
    exit_code: int | None


Signal = UserActed | AgentExited
S = TypeVar("S", UserActed, AgentExited)


class EventHub:
    def __init__(self, store: Store, tasks: TaskSupervisor) -> None:
        self.store = store
        self.tasks = tasks
        self._seq: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._signal_listeners: dict[type[Any], list[Callable[[Any], Awaitable[None]]]] = {}
        # Group commit: events published while a write is under way share the next one.
        self._pending: list[tuple[str, int, str, str, str]] = []
        self._batch: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        self._seq = await self.store.max_seqs()

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Hand every published event to ``listener``; returns what removes it."""
        self._listeners.append(listener)
        return lambda: self.unlisten(listener)

    def unlisten(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def on(self, kind: type[S], listener: Callable[[S], Awaitable[None]]) -> Callable[[], None]:
        """Await ``listener`` on every ``kind`` signal, after those added before it."""
        listeners = self._signal_listeners.setdefault(kind, [])
        listeners.append(listener)

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return remove

    async def emit(self, signal: Signal) -> None:
        """Await each listener of the signal's kind in turn; one that fails is logged."""
        for listener in list(self._signal_listeners.get(type(signal), ())):
            try:
                await listener(signal)
            except Exception:
                log.exception("signal_listener_failed", signal=type(signal).__name__)

    def last_seq(self, session_id: str) -> int:
        return self._seq.get(session_id, 0)

    async def publish(self, event_type: str, session_id: str, **payload: Any) -> Event:
        """Store the event under the session's next seq, then hand it to every subscriber.

        The seq is taken and the row queued without awaiting, so store order is seq order;
        delivery waits for the commit, so nothing is ever seen that a replay would miss.
        """
        seq = self._seq.get(session_id, 0) + 1
        self._seq[session_id] = seq
        timestamp = rfc3339(utcnow())
        assert timestamp is not None
        row = (session_id, seq, event_type, json.dumps(payload, default=str), timestamp)
        await asyncio.shield(self._enqueue(row))
        event: Event = {
            "type": event_type,
            "session_id": session_id,
            "seq": seq,
            "timestamp": timestamp,
            **payload,
        }
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener_failed", session_id=session_id)
        return event

    def _enqueue(self, row: tuple[str, int, str, str, str]) -> asyncio.Future[None]:
        self._pending.append(row)
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
            self.tasks.spawn(self._flush(), name="events-flush", group=HUB)
        return self._batch

    async def _flush(self) -> None:
        async with self._write_lock:  # batches commit in the order they were opened
            rows, batch = self._pending, self._batch
            self._pending, self._batch = [], None
            assert batch is not None
            try:
                await self.store.insert_events(rows)
            except Exception as exc:
                batch.set_exception(exc)
            else:
                batch.set_result(None)

    def forget(self, session_id: str) -> None:
        self._seq.pop(session_id, None)
