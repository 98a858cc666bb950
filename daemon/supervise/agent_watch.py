"""Follows each running agent's transcript and hook file; publishes chat events and agent_state.

One loop polls every running session a few times a second (a stat and, when the file
grew, a read, both in a worker thread), which keeps ``agent_state`` within a second of
the hook that changed it and needs no file-watching API. The tail position and the
parser's state are stored after each batch, so a restarted daemon resumes where it
stopped; events already stored (matched by their message, call or result id) are never
published twice, even if the daemon died between publishing and storing its position.

The files are the container's. They are opened through ``homefs`` (no link followed, only
regular files, bounded reads), and one that is not what it must be (a symlink to
``/dev/zero``, a FIFO, …) is reported, not read: a warning logged once with the session
id, ``hostile_files`` in the session's health details and a ``session_status`` event,
until it is a plain file again. Every other session is served as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from daemon.agents.claude import transcript_path
from daemon.agents.claude_transcript import ClaudeTranscriptParser
from daemon.agents.codex_rollout import ROLLOUT_GLOB, CodexRolloutParser
from daemon.agents.runner import HOOKS_FILE
from daemon.agents.transcript import ParsedEvent, TranscriptTailer, newest_file
from daemon.core.health import Recovery
from daemon.core.homefs import HostileFile
from daemon.core.hub import EventHub
from daemon.core.manager import CHAT_EVENT_TYPES
from daemon.core.models import AgentState, SessionStatus
from daemon.core.session import SessionRecord
from daemon.core.store import Store
from daemon.core.tasks import WATCH, TaskSupervisor, cancel_and_wait
from daemon.settings import Settings

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.25
# The rollouts' walk starts at the home so that ``.codex`` itself is not followed either.
HOME_ROLLOUT_GLOB = f".codex/{ROLLOUT_GLOB}"
RECENT_EVENTS = 500  # stored chat events checked for duplicates after a restart

# What each hook says about the agent. Notification carries its reason in "message".
_HOOK_STATES = {
    "UserPromptSubmit": AgentState.WORKING,
    "PreToolUse": AgentState.WORKING,
    "PostToolUse": AgentState.WORKING,
    "Stop": AgentState.WAITING_INPUT,
}


class _Parser(Protocol):
    def feed(self, records: list[dict[str, Any]]) -> list[ParsedEvent]: ...
    def state(self) -> dict[str, Any]: ...


def event_key(event_type: str, payload: dict[str, Any]) -> str | None:
    """The id that names a chat event across restarts."""
    if event_type == "chat_message":
        return f"m:{payload['message'].get('id')}"
    if event_type == "tool_call":
        return f"c:{payload['call'].get('id')}"
    if event_type == "tool_result":
        return f"r:{payload['result'].get('call_id')}"
    return None


def state_from_hook(hook: dict[str, Any]) -> AgentState | None:
    name = hook.get("hook_event_name")
    if name == "Notification":
        message = str(hook.get("message", "")).lower()
        return AgentState.WAITING_APPROVAL if "permission" in message else AgentState.WAITING_INPUT
    return _HOOK_STATES.get(str(name))


@dataclass
class _Watch:
    transcript: TranscriptTailer | None
    parser: _Parser
    hooks: TranscriptTailer
    seen: set[str] = field(default_factory=set)
    # What is reported as hostile now (path in the home → reason), to report each once.
    hostile: dict[str, str] = field(default_factory=dict)


class Sessions(Protocol):
    """What the agent watcher needs of the session manager."""

    @property
    def settings(self) -> Settings: ...
    @property
    def records(self) -> dict[str, SessionRecord]: ...
    @property
    def recovery(self) -> dict[str, Recovery]: ...
    def agent_home(self, session_id: str) -> Path: ...
    def agent_working_dir(self, record: SessionRecord) -> str: ...
    async def save(self, record: SessionRecord, *fields: str) -> None: ...
    async def publish_status(self, record: SessionRecord) -> None: ...


class AgentWatcher:
    """Reads each session's files in one task of the ``watch`` group; publishes on the hub."""

    def __init__(
        self,
        manager: Sessions,
        *,
        store: Store,
        hub: EventHub,
        tasks: TaskSupervisor,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.manager = manager
        self.store = store
        self.hub = hub
        self.tasks = tasks
        self.poll_seconds = poll_seconds
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self.tasks.spawn(self._run(), name="agent-watch", group=WATCH)

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self.poll_seconds)

    async def poll_all(self) -> None:
        if not self.manager.settings.sessions.start_agent:
            return
        for session_id in list(self._watches):
            if session_id not in self.manager.records:
                self._watches.pop(session_id)
        for record in list(self.manager.records.values()):
            # A stopped agent may have written its last lines just before it ended.
            if record.status is SessionStatus.RUNNING or record.id in self._watches:
                try:
                    await self.poll(record)
                except Exception:
                    log.exception("agent_watch_failed", session_id=record.id)
            if record.status is not SessionStatus.RUNNING:
                self._watches.pop(record.id, None)

    async def poll(self, record: SessionRecord) -> None:
        watch = self._watches.get(record.id) or await self._open(record)
        self._watches[record.id] = watch
        found: dict[str, str] = {}
        moved = await self._read_transcript(record, watch, found)
        moved = await self._read_hooks(record, watch, found) or moved
        await self._report_hostile(record, watch, found)
        if moved:
            await self.store.save_cursor(record.id, self._cursor(watch))

    async def _report_hostile(
        self, record: SessionRecord, watch: _Watch, found: dict[str, str]
    ) -> None:
        """Log each newly hostile file once and keep the health details in step."""
        state = self.manager.recovery.get(record.id)
        shown = state.hostile_files if state is not None else {}
        if found == watch.hostile and found == shown:
            return
        for path, reason in found.items():
            if watch.hostile.get(path) != reason:
                log.warning("agent_file_refused", session_id=record.id, path=path, reason=reason)
        for path in watch.hostile.keys() - found.keys():
            log.info("agent_file_readable_again", session_id=record.id, path=path)
        watch.hostile = dict(found)
        if found:
            state = self.manager.recovery.setdefault(record.id, Recovery())
        if state is not None:
            state.hostile_files = dict(found)
            if state.idle:
                self.manager.recovery.pop(record.id, None)
        await self.manager.publish_status(record)

    async def _open(self, record: SessionRecord) -> _Watch:
        cursor = await self.store.load_cursor(record.id) or {}
        home = self.manager.agent_home(record.id)
        parser: _Parser
        if record.agent == "codex":
            parser = CodexRolloutParser.from_state(cursor["parser"]) if "parser" in cursor \
                else CodexRolloutParser()  # fmt: skip
        else:
            parser = ClaudeTranscriptParser.from_state(cursor["parser"]) if "parser" in cursor \
                else ClaudeTranscriptParser()  # fmt: skip
        transcript = None
        saved = cursor.get("transcript")
        if saved and Path(saved).is_relative_to(home):
            transcript = TranscriptTailer(saved, cursor.get("offset", 0), root=home)
        elif record.agent == "claude":
            path = transcript_path(home, record.id, self.manager.agent_working_dir(record))
            transcript = TranscriptTailer(path, root=home)
        hooks = TranscriptTailer(home / HOOKS_FILE, cursor.get("hooks_offset", 0), root=home)
        recent = await self.store.events_tail(record.id, RECENT_EVENTS, CHAT_EVENT_TYPES)
        seen = {k for e in recent if (k := event_key(e["type"], e)) is not None}
        return _Watch(transcript, parser, hooks, seen)

    async def _read_transcript(
        self, record: SessionRecord, watch: _Watch, found: dict[str, str]
    ) -> bool:
        home = self.manager.agent_home(record.id)
        if record.agent == "codex":
            # Codex names its own rollout file; a resume may start a new one.
            try:
                newest = await newest_file(home, HOME_ROLLOUT_GLOB)
            except HostileFile as exc:
                found[exc.path] = exc.reason
                newest = None
            if newest is not None and (watch.transcript is None or watch.transcript.path != newest):
                watch.transcript = TranscriptTailer(newest, root=home)
        if watch.transcript is None:
            return False
        before = watch.transcript.offset
        records = await watch.transcript.read_new()
        if watch.transcript.hostile is not None:
            found[watch.transcript.hostile.path] = watch.transcript.hostile.reason
        for event in watch.parser.feed(records):
            key = event_key(event.type, event.payload)
            if key is not None and key in watch.seen:
                continue
            if key is not None:
                watch.seen.add(key)
            await self.hub.publish(event.type, record.id, **event.payload)
        return watch.transcript.offset != before

    async def _read_hooks(
        self, record: SessionRecord, watch: _Watch, found: dict[str, str]
    ) -> bool:
        before = watch.hooks.offset
        state = None
        for hook in await watch.hooks.read_new():
            state = state_from_hook(hook) or state
        if watch.hooks.hostile is not None:
            found[watch.hooks.hostile.path] = watch.hooks.hostile.reason
        # An error corral set (a budget reached) is not the agent's to end: it stays until
        # corral clears its reason, whatever the hooks say meanwhile.
        if record.agent_state_reason is not None:
            state = None
        if state is not None and state is not record.agent_state:
            record.agent_state = state
            await self.manager.save(record, "agent_state")
            await self.manager.publish_status(record)
        return watch.hooks.offset != before

    @staticmethod
    def _cursor(watch: _Watch) -> dict[str, Any]:
        return {
            "transcript": str(watch.transcript.path) if watch.transcript else None,
            "offset": watch.transcript.offset if watch.transcript else 0,
            "hooks_offset": watch.hooks.offset,
            "parser": watch.parser.state(),
        }
