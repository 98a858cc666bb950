"""The in-process event hub: per-session sequence numbers, stored before delivery.

Producers call :meth:`EventHub.publish`; it never waits on a consumer. Listeners are plain
callables that must not block (a socket's listener puts the event on its own bounded
queue); the socket layer decides what each client wants and drops the slow ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.core.store import Store, _ts, utcnow

log = structlog.get_logger(__name__)

Event = dict[str, Any]
Listener = Callable[[Event], None]


@dataclass(eq=False)
class Subscription:
    """An in-process subscriber with its own bounded queue (tests and internal consumers)."""

    queue: asyncio.Queue[Event]
    sessions: set[str] = field(default_factory=set)  # "*" means every session
    overflowed: bool = False

    def __call__(self, event: Event) -> None:
        if self.overflowed or not ("*" in self.sessions or event["session_id"] in self.sessions):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            log.warning("subscriber_overflowed", session_id=event["session_id"])


class EventHub:
    def __init__(self, store: Store, queue_size: int = 1000) -> None:
        self.store = store
        self.queue_size = queue_size
        self._seq: dict[str, int] = {}
        self._listeners: list[Listener] = []
        # Group commit: events published while a write is under way share the next one.
        self._pending: list[tuple[str, int, str, str, str]] = []
        self._batch: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self._flushers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._seq = await self.store.max_seqs()

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def subscribe(self, sessions: set[str] | None = None) -> Subscription:
        sub = Subscription(asyncio.Queue(self.queue_size), set(sessions or {"*"}))
        self.listen(sub)
        return sub

    def last_seq(self, session_id: str) -> int:
        return self._seq.get(session_id, 0)

    async def publish(self, event_type: str, session_id: str, **payload: Any) -> Event:
        """Store the event under the session's next seq, then hand it to every subscriber.

        The seq is taken and the row queued without awaiting, so store order is seq order;
        delivery waits for the commit, so nothing is ever seen that a replay would miss.
        """
        seq = self._seq.get(session_id, 0) + 1
        self._seq[session_id] = seq
        timestamp = _ts(utcnow())
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
            task = asyncio.create_task(self._flush(), name="events-flush")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
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
