"""Claude Code's session transcript, turned into PROTOCOL chat events.

Claude Code writes ``~/.claude/projects/<cwd>/<session id>.jsonl``: one record a line, the
conversation ones (``user``, ``assistant``, ``attachment``, ``system``) carrying ``uuid`` and
``parentUuid``, the rest (``queue-operation``, ``last-prompt``, ``ai-title``, ``mode``,
``file-history-snapshot``, ``summary``, …) not. Only ``user`` and ``assistant`` records make
events; every other record is skipped (logged at debug), and so are sidechain (sub-agent),
meta (command caveats, local command output) and compaction-summary records.

Events:

- a user prompt (string content, or its text blocks) → ``chat_message`` role ``user``, id =
  the record's uuid (user records have no message id). A user record that only carries
  ``tool_result`` blocks makes ``tool_result`` events and no message.
- an assistant record's text blocks, joined → ``chat_message`` role ``assistant``; its
  ``tool_use`` blocks → ``tool_call`` each, after the message.

**Split messages.** Claude Code writes each content block of one API response as its own
record (own uuid, same ``message.id``, same ``usage``). Every record is emitted once, when
it arrives, rather than merged: merging would mean holding text until the response ends,
which a live transcript never announces. The first chat_message of a response takes the
response's ``message.id``; a later text record of the same response gets ``<id>#2``, ``#3``…
so ids stay unique.

**Tokens.** ``tokens_input`` is every prompt token the model read: ``input_tokens`` plus
``cache_creation_input_tokens`` plus ``cache_read_input_tokens`` (with caching on,
``input_tokens`` alone is a handful of tokens and would mislead). ``tokens_output`` is
``output_tokens``. A response is counted once however many records repeat its usage (only a
rise over what was already counted for that message id is added), and the count is carried
on the next assistant chat_message: a response that only called tools still counts, and the
sum over a session's messages is what the session used.

**Ordering.** The parser is fed records in file order, but the TUI can write a record before
its parent (tests/fixtures/claude_tui_transcript.jsonl: the first assistant record precedes
the prompt it answers). A record whose ``parentUuid`` has not been seen yet is held until
the parent arrives, then released with its held descendants, in arrival order. A parent
that never comes (a lost line, a transcript resumed without its state) must not hold the
chat forever: a held record is released anyway once ``max_wait_records`` more records have
been fed, or when :meth:`ClaudeTranscriptParser.flush` is called (the daemon may call it
when the file has been quiet for a while).

**Dedupe.** A record uuid, once processed or held, is never processed again, so feeding the
same lines twice (a re-read after the file was rewritten) emits nothing new. The set of
seen uuids is bounded (``max_seen``) to keep the persisted state small.

Over 400 lines on purpose: one parser of one format, its record kinds and their edge cases
side by side, so a change to one kind is read beside the others it must agree with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.agents.transcript import (
    ParsedEvent,
    RecentKeys,
    cap_input,
    format_timestamp,
    truncate_output,
)

log = structlog.get_logger(__name__)

# The TUI's reordering seen so far spans a few records; 32 leaves room while keeping a
# record with a lost parent from being held for long.
DEFAULT_MAX_WAIT_RECORDS = 32
DEFAULT_MAX_SEEN = 10_000
# Shown instead of an image block, so a prompt or tool output made only of images is not
# silently empty.
IMAGE_PLACEHOLDER = "[image]"
# Claude Code marks its own error messages (API errors, interruptions) with this model.
_SYNTHETIC_MODEL = "<synthetic>"
STATE_VERSION = 1


class _Lenient(BaseModel):
    # The CLI adds fields with every release; unknown ones are ignored, never an error.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str = ""


class ImageBlock(_Lenient):
    type: Literal["image"]


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str
    name: str
    input: Any = None


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Any] | None = None
    is_error: bool | None = None


ContentBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock
_BLOCK_MODELS: dict[str, type[ContentBlock]] = {
    "text": TextBlock,
    "image": ImageBlock,
    "tool_use": ToolUseBlock,
    "tool_result": ToolResultBlock,
}


class Usage(_Lenient):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int:
        return (
            self.input_tokens
            + (self.cache_creation_input_tokens or 0)
            + (self.cache_read_input_tokens or 0)
        )


class UserMessage(_Lenient):
    content: str | list[Any] = ""


class AssistantMessage(_Lenient):
    id: str | None = None
    model: str | None = None
    content: list[Any] = Field(default_factory=list)
    usage: Usage | None = None


class _Record(_Lenient):
    uuid: str
    timestamp: str | None = None
    is_sidechain: bool = Field(default=False, alias="isSidechain")
    is_meta: bool = Field(default=False, alias="isMeta")
    is_compact_summary: bool = Field(default=False, alias="isCompactSummary")


class UserRecord(_Record):
    type: Literal["user"]
    message: UserMessage


class AssistantRecord(_Record):
    type: Literal["assistant"]
    message: AssistantMessage


def parse_blocks(raw: Iterable[Any]) -> list[ContentBlock]:
    """The content blocks we understand; others (thinking, server tools…) are skipped."""
    blocks: list[ContentBlock] = []
    for item in raw:
        if isinstance(item, str):
            blocks.append(TextBlock(type="text", text=item))
            continue
        kind = item.get("type") if isinstance(item, dict) else None
        model = _BLOCK_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            log.debug("transcript_block_ignored", block_type=kind)
            continue
        try:
            blocks.append(model.model_validate(item))
        except ValidationError as exc:
            log.warning("transcript_block_invalid", block_type=kind, errors=exc.error_count())
    return blocks


def _joined_text(blocks: Iterable[ContentBlock]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, TextBlock) and block.text:
            parts.append(block.text)
        elif isinstance(block, ImageBlock):
            parts.append(IMAGE_PLACEHOLDER)
    return "\n\n".join(parts)


def tool_result_text(content: str | list[Any] | None) -> str:
    """A tool result's content as text: a string as is, blocks' text joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in parse_blocks(content):
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ImageBlock):
            parts.append(IMAGE_PLACEHOLDER)
    return "\n".join(parts)


@dataclass
class _Held:
    record: dict[str, Any]
    uuid: str
    parent: str
    fed_at: int


class ClaudeTranscriptParser:
    """Turns Claude Code transcript records into chat events; see the module docstring.

    ``feed(records)`` takes the records the tailer returned (file order) and gives back the
    events now due, in conversation order. ``state()`` / ``from_state()`` round-trip
    everything it keeps, to be persisted with the tailer's offset.
    """

    def __init__(
        self,
        *,
        max_wait_records: int = DEFAULT_MAX_WAIT_RECORDS,
        max_seen: int = DEFAULT_MAX_SEEN,
    ) -> None:
        self.max_wait_records = max_wait_records
        self._seen = RecentKeys(limit=max_seen)
        self._held: dict[str, _Held] = {}
        self._fed = 0
        # Usage of the current API response counted so far, and what is not yet attached.
        self._usage_message_id: str | None = None
        self._usage_counted = (0, 0)
        self._pending_tokens = (0, 0)
        # The response whose text was last emitted and how many messages it has made.
        self._text_message_id: str | None = None
        self._text_parts = 0

    # -- feeding

    def feed(self, records: Iterable[dict[str, Any]]) -> list[ParsedEvent]:
        out: list[ParsedEvent] = []
        for record in records:
            self._fed += 1
            uuid = record.get("uuid")
            if not isinstance(uuid, str):
                # Only bookkeeping records lack a uuid; none of them makes an event.
                log.debug("transcript_record_ignored", record_type=record.get("type"))
                continue
            if uuid in self._seen or uuid in self._held:
                continue
            parent = record.get("parentUuid")
            if isinstance(parent, str) and parent not in self._seen:
                self._held[uuid] = _Held(record, uuid, parent, self._fed)
                continue
            self._accept(record, uuid, out)
        self._release_overdue(out)
        return out

    def flush(self) -> list[ParsedEvent]:
        """Release every held record now, oldest first, whether its parent came or not."""
        out: list[ParsedEvent] = []
        while self._held:
            self._release(next(iter(self._held.values())), out)
        return out

    @property
    def held(self) -> int:
        """How many records wait for their parent."""
        return len(self._held)

    def _release_overdue(self, out: list[ParsedEvent]) -> None:
        while self._held:
            oldest = next(iter(self._held.values()))
            if self._fed - oldest.fed_at < self.max_wait_records:
                break
            log.info("transcript_parent_missing", uuid=oldest.uuid, parent=oldest.parent)
            self._release(oldest, out)

    def _release(self, held: _Held, out: list[ParsedEvent]) -> None:
        """Process ``held`` without its parent, starting from its oldest held ancestor.

        A held record whose parent is itself held goes after that parent, so the releasing
        starts at the top of the held chain and keeps the chain's order.
        """
        root, visited = held, {held.uuid}
        while root.parent in self._held and root.parent not in visited:
            root = self._held[root.parent]
            visited.add(root.uuid)
        del self._held[root.uuid]
        self._accept(root.record, root.uuid, out)

    def _accept(self, record: dict[str, Any], uuid: str, out: list[ParsedEvent]) -> None:
        """Process a record whose parent is known, then the held records waiting on it."""
        # An explicit stack instead of recursion: a long chain of held descendants must not
        # hit the recursion limit.
        stack = [(record, uuid)]
        while stack:
            current, current_uuid = stack.pop()
            self._seen.add(current_uuid)
            out.extend(self._events(current, current_uuid))
            children = [h for h in self._held.values() if h.parent == current_uuid]
            for child in reversed(children):  # reversed: the stack pops the first-fed first
                del self._held[child.uuid]
                stack.append((child.record, child.uuid))

    # -- one record

    def _events(self, record: dict[str, Any], uuid: str) -> list[ParsedEvent]:
        kind = record.get("type")
        try:
            if kind == "user":
                return self._user_events(UserRecord.model_validate(record))
            if kind == "assistant":
                return self._assistant_events(AssistantRecord.model_validate(record))
        except ValidationError as exc:
            log.warning(
                "transcript_record_invalid", uuid=uuid, record_type=kind, errors=exc.error_count()
            )
            return []
        log.debug("transcript_record_ignored", uuid=uuid, record_type=kind)
        return []

    def _user_events(self, record: UserRecord) -> list[ParsedEvent]:
        if record.is_sidechain or record.is_meta or record.is_compact_summary:
            return []
        timestamp = format_timestamp(record.timestamp)
        content = record.message.content
        blocks: list[ContentBlock]
        if isinstance(content, str):
            blocks = [TextBlock(type="text", text=content)]
        else:
            blocks = parse_blocks(content)
        events: list[ParsedEvent] = []
        for block in blocks:
            if isinstance(block, ToolResultBlock):
                result = {
                    "call_id": block.tool_use_id,
                    "output": truncate_output(tool_result_text(block.content)),
                    "is_error": bool(block.is_error),
                }
                events.append(
                    ParsedEvent("tool_result", {"result": result}, timestamp, record.uuid)
                )
        text = _joined_text(blocks)
        if text.strip():
            message = {"id": record.uuid, "role": "user", "content": text}
            events.append(ParsedEvent("chat_message", {"message": message}, timestamp, record.uuid))
        return events

    def _assistant_events(self, record: AssistantRecord) -> list[ParsedEvent]:
        if record.is_sidechain:
            return []
        message = record.message
        message_id = message.id or record.uuid
        self._count_usage(message_id, message.usage)
        timestamp = format_timestamp(record.timestamp)
        blocks = parse_blocks(message.content)
        events: list[ParsedEvent] = []
        text = _joined_text(blocks)
        if text.strip():
            chat: dict[str, Any] = {
                "id": self._text_id(message_id),
                "role": "assistant",
                "content": text,
            }
            if message.model and message.model != _SYNTHETIC_MODEL:
                chat["model"] = message.model
            tokens_input, tokens_output = self._pending_tokens
            if tokens_input or tokens_output:
                chat["tokens_input"] = tokens_input
                chat["tokens_output"] = tokens_output
                self._pending_tokens = (0, 0)
            events.append(ParsedEvent("chat_message", {"message": chat}, timestamp, record.uuid))
        for block in blocks:
            if isinstance(block, ToolUseBlock):
                # PROTOCOL's input is an object; Claude's always is, but never pass on less.
                tool_input = (
                    block.input if isinstance(block.input, dict) else {"input": block.input}
                )
                call = {"id": block.id, "name": block.name, "input": cap_input(tool_input)}
                events.append(ParsedEvent("tool_call", {"call": call}, timestamp, record.uuid))
        return events

    def _count_usage(self, message_id: str, usage: Usage | None) -> None:
        if usage is None:
            return
        seen = (usage.prompt_tokens, usage.output_tokens)
        if message_id != self._usage_message_id:
            self._usage_message_id, counted = message_id, (0, 0)
        else:
            counted = self._usage_counted
        # Only a rise is new: every record of a response repeats the response's usage.
        added = (max(0, seen[0] - counted[0]), max(0, seen[1] - counted[1]))
        self._usage_counted = (max(seen[0], counted[0]), max(seen[1], counted[1]))
        self._pending_tokens = (
            self._pending_tokens[0] + added[0],
            self._pending_tokens[1] + added[1],
        )

    def _text_id(self, message_id: str) -> str:
        if message_id == self._text_message_id:
            self._text_parts += 1
            return f"{message_id}#{self._text_parts}"
        self._text_message_id, self._text_parts = message_id, 1
        return message_id

    # -- persistence

    def state(self) -> dict[str, Any]:
        """Everything the parser keeps, as JSON-ready data (held records included verbatim)."""
        return {
            "version": STATE_VERSION,
            "seen": self._seen.to_list(),
            "held": [
                {"record": h.record, "uuid": h.uuid, "parent": h.parent, "fed_at": h.fed_at}
                for h in self._held.values()
            ],
            "fed": self._fed,
            "usage_message_id": self._usage_message_id,
            "usage_counted": list(self._usage_counted),
            "pending_tokens": list(self._pending_tokens),
            "text_message_id": self._text_message_id,
            "text_parts": self._text_parts,
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        *,
        max_wait_records: int = DEFAULT_MAX_WAIT_RECORDS,
        max_seen: int = DEFAULT_MAX_SEEN,
    ) -> ClaudeTranscriptParser:
        """A parser that continues where the one that saved ``state`` stopped."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported parser state version: {state.get('version')!r}")
        parser = cls(max_wait_records=max_wait_records, max_seen=max_seen)
        parser._seen = RecentKeys(state["seen"], limit=max_seen)
        parser._held = {
            h["uuid"]: _Held(h["record"], h["uuid"], h["parent"], int(h["fed_at"]))
            for h in state["held"]
        }
        parser._fed = int(state["fed"])
        parser._usage_message_id = state["usage_message_id"]
        counted = state["usage_counted"]
        parser._usage_counted = (int(counted[0]), int(counted[1]))
        pending = state["pending_tokens"]
        parser._pending_tokens = (int(pending[0]), int(pending[1]))
        parser._text_message_id = state["text_message_id"]
        parser._text_parts = int(state["text_parts"])
        return parser
