"""Chat with a session's agent: a message typed into its terminal, and the chat history.

The agent has no message API of its own: a message is pasted into its terminal as a person
would paste it, then Enter. What it said comes back as chat events the agent watcher
(daemon/supervise/agent_watch.py) reads from its transcript into the store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from backends.base import BackendError
from daemon.core.console import Consoles
from daemon.core.errors import Conflict, InvalidRequest
from daemon.core.models import SessionStatus
from daemon.core.session import SessionRecord
from daemon.core.store import Store
from daemon.settings import Settings

log = structlog.get_logger(__name__)

CHAT_EVENT_TYPES = ("chat_message", "tool_call", "tool_result")
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
PASTE_SETTLE_SECONDS = 0.05


class Chat:
    def __init__(self, settings: Settings, store: Store, consoles: Consoles) -> None:
        self.settings = settings
        self.store = store
        self.consoles = consoles

    async def send(self, record: SessionRecord, content: str) -> None:
        """Type the message into the agent's terminal as a person would: paste, then Enter."""
        if not content.strip():
            raise InvalidRequest(
                "content must not be empty", [{"field": "content", "message": "empty"}]
            )
        if record.archived or record.status is not SessionStatus.RUNNING:
            raise Conflict(f"the session is not running ({record.status.value})")
        attachment = self.consoles.get(record.id)
        if attachment is None:
            raise Conflict("the session's terminal is not attached")
        try:
            await attachment.write(PASTE_START + content.encode() + PASTE_END)
            # A TUI that sees Enter in the same read as the paste may take it as pasted text.
            await asyncio.sleep(PASTE_SETTLE_SECONDS)
            await attachment.write(b"\r")
        except BackendError as exc:
            raise Conflict(f"the message could not be delivered: {exc.message}") from exc
        log.info("message_sent", session_id=record.id, chars=len(content))

    async def events(self, session_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        """The chat events after sequence number ``after``."""
        return await self.store.events_after(session_id, after, limit, CHAT_EVENT_TYPES)

    async def history(self, record: SessionRecord) -> list[dict[str, Any]]:
        """The last chat events, as many as ``events.chat_history_limit`` allows."""
        limit = self.settings.events.chat_history_limit
        if limit == 0:
            return []
        return await self.store.events_tail(record.id, limit, CHAT_EVENT_TYPES)
