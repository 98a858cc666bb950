"""Codex's rollout file, turned into PROTOCOL chat events.

Codex writes ``$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl``
(:data:`ROLLOUT_GLOB` under ``~/.codex``): records ``{timestamp, type, payload}`` of type
``session_meta``, ``turn_context``, ``response_item``, ``event_msg`` and others, in
conversation order (no reordering needed, unlike Claude's transcript).

The model history is in ``response_item`` records, and only those make events (the
``event_msg`` ``item_completed`` / ``agent_message`` copies of the same items are skipped so
nothing shows twice):

- ``message`` role ``user`` → ``chat_message`` user, minus what Codex injects itself: content
  items marked with a non-user provenance, or whose text is one of its wrapped blocks
  (``<environment_context>…``, ``<user_instructions>…``, ``# AGENTS.md instructions…``, any
  ``<snake_case_tag>…</snake_case_tag>``). A message left with no text makes no event.
  Role ``developer`` / ``system`` never does.
- ``message`` role ``assistant`` → ``chat_message`` assistant, with the model from the
  latest ``turn_context``.
- ``function_call`` → ``tool_call`` (``arguments`` parsed from JSON; anything that is not a
  JSON object is passed as ``{"arguments": <raw>}``); ``custom_tool_call`` (apply_patch)
  → ``{"input": <raw>}``; ``local_shell_call`` → name ``local_shell``, its ``action``.
- ``function_call_output`` / ``custom_tool_call_output`` → ``tool_result``. Codex has no
  error flag: ``is_error`` is true for ``success: false`` or a non-zero exit code in the
  output (``Process exited with code N``, ``Exit code: N``, or the older
  ``{"output", "metadata": {"exit_code"}}`` JSON).

**Tokens.** ``event_msg`` ``token_count`` arrives after the response it counts (in the
fixture, after the tool ran), when that response's message has already been emitted, and
events are never rewritten. So counts accumulate and ride on the *next* assistant
chat_message: each message carries what the model used since the previous one that carried
tokens, and the sum over a session is exact save for the last response's count, which waits
for the next turn. The count is taken as the rise of ``total_token_usage`` (robust to a
repeated token_count), falling back to ``last_token_usage``. ``tokens_input`` is
``input_tokens`` (which for OpenAI already includes cached tokens), ``tokens_output`` is
``output_tokens`` (reasoning included).

**Dedupe.** Each item is keyed by its ``id`` (or ``call_id``), else a hash of the record;
a key seen before is skipped, so feeding the same lines twice emits nothing new.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.agents.transcript import (
    ParsedEvent,
    RecentKeys,
    cap_input,
    format_timestamp,
    loads_bounded,
    truncate_output,
)

log = structlog.get_logger(__name__)

ROLLOUT_GLOB = "sessions/*/*/*/rollout-*.jsonl"
DEFAULT_MAX_SEEN = 10_000
IMAGE_PLACEHOLDER = "[image]"
STATE_VERSION = 1

# Blocks Codex adds to the user's side of the conversation on its own.
_INJECTED_PREFIXES = (
    "<environment_context>",
    "<user_instructions>",
    "<user_shell_command>",
    "<turn_aborted>",
    "<permissions instructions>",
    "<skills_instructions>",
    "<INSTRUCTIONS>",
    "# AGENTS.md instructions for ",
)
# Newer blocks follow the same shape: the whole text one element with a snake_case tag.
_INJECTED_ELEMENT = re.compile(r"\A<([a-z]+(?:_[a-z]+)+)>.*</\1>\Z", re.DOTALL)
_EXIT_CODE = re.compile(r"^(?:Process exited with code|Exit code:)\s*(-?\d+)\s*$", re.MULTILINE)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentItem(_Lenient):
    type: str
    text: str | None = None


class MessageItem(_Lenient):
    id: str | None = None
    role: str
    content: list[ContentItem] = Field(default_factory=list)
    internal_chat_message_metadata_passthrough: dict[str, Any] | None = None


class FunctionCallItem(_Lenient):
    name: str
    arguments: str | dict[str, Any] | None = None
    call_id: str


class CustomToolCallItem(_Lenient):
    name: str
    input: str | None = None
    call_id: str


class LocalShellCallItem(_Lenient):
    id: str | None = None
    call_id: str | None = None
    action: dict[str, Any] = Field(default_factory=dict)


class CallOutputItem(_Lenient):
    call_id: str
    output: Any = None


class TokenUsage(_Lenient):
    input_tokens: int = 0
    output_tokens: int = 0


class TokenInfo(_Lenient):
    total_token_usage: TokenUsage | None = None
    last_token_usage: TokenUsage | None = None


def _is_injected(text: str) -> bool:
    stripped = text.strip()
    return stripped.startswith(_INJECTED_PREFIXES) or bool(_INJECTED_ELEMENT.match(stripped))


def _provenances(item: MessageItem) -> list[str | None]:
    """Each content item's provenance type (``user``, ``harness``…), where Codex records it."""
    meta = item.internal_chat_message_metadata_passthrough or {}
    entries = meta.get("content_item_metadata")
    found: list[str | None] = []
    for entry in entries if isinstance(entries, list) else []:
        provenance = entry.get("provenance") if isinstance(entry, dict) else None
        kind = provenance.get("type") if isinstance(provenance, dict) else None
        found.append(kind if isinstance(kind, str) else None)
    return found


def _message_text(item: MessageItem, *, user: bool) -> str:
    provenances = _provenances(item)
    parts: list[str] = []
    for index, content in enumerate(item.content):
        provenance = provenances[index] if index < len(provenances) else None
        if user and provenance not in (None, "user"):
            continue
        if content.type in ("input_image", "image"):
            parts.append(IMAGE_PLACEHOLDER)
        elif content.text and not (user and _is_injected(content.text)):
            parts.append(content.text)
    return "\n\n".join(parts)


def _output_text_and_error(output: Any) -> tuple[str, bool]:
    """A call output as text, and whether it reports a failure."""
    failed = False
    if isinstance(output, dict):
        failed = output.get("success") is False
        output = output.get("content", output.get("output", ""))
    if isinstance(output, list):
        texts = []
        for part in output:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("input_image", "image"):
                texts.append(IMAGE_PLACEHOLDER)
        output = "\n".join(texts)
    if not isinstance(output, str):
        output = "" if output is None else json.dumps(output)
    # Older Codex wrapped shell output as JSON with the exit code beside it.
    if output.startswith("{"):
        try:
            wrapped = loads_bounded(output)  # text the container wrote: bounded nesting
        except ValueError:
            wrapped = None
        if isinstance(wrapped, dict) and isinstance(wrapped.get("output"), str):
            metadata = wrapped.get("metadata")
            code = metadata.get("exit_code") if isinstance(metadata, dict) else None
            return wrapped["output"], failed or (isinstance(code, int) and code != 0)
    match = _EXIT_CODE.search(output)
    if match is not None and int(match.group(1)) != 0:
        failed = True
    return output, failed


def _record_hash(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return "h:" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


class CodexRolloutParser:
    """Turns Codex rollout records into chat events; see the module docstring.

    ``feed(records)`` takes the tailer's records (file order) and returns the events they
    make. ``state()`` / ``from_state()`` round-trip what it keeps.
    """

    def __init__(self, *, max_seen: int = DEFAULT_MAX_SEEN) -> None:
        self._seen = RecentKeys(limit=max_seen)
        self._model: str | None = None
        # The last total_token_usage counted, and the tokens not yet on a message.
        self._usage_total: tuple[int, int] | None = None
        self._pending_tokens = (0, 0)

    def feed(self, records: Iterable[dict[str, Any]]) -> list[ParsedEvent]:
        out: list[ParsedEvent] = []
        for record in records:
            kind = record.get("type")
            payload = record.get("payload")
            if not isinstance(payload, dict):
                log.debug("rollout_record_ignored", record_type=kind)
                continue
            try:
                if kind == "response_item":
                    out.extend(self._response_item(record, payload))
                elif kind == "event_msg" and payload.get("type") == "token_count":
                    self._token_count(record, payload)
                elif kind == "turn_context":
                    model = payload.get("model")
                    self._model = model if isinstance(model, str) and model else self._model
                else:
                    log.debug(
                        "rollout_record_ignored", record_type=kind, payload_type=payload.get("type")
                    )
            except ValidationError as exc:
                log.warning(
                    "rollout_record_invalid",
                    record_type=kind,
                    payload_type=payload.get("type"),
                    errors=exc.error_count(),
                )
        return out

    def _first_time(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def _response_item(self, record: dict[str, Any], payload: dict[str, Any]) -> list[ParsedEvent]:
        item_type = payload.get("type")
        timestamp = format_timestamp(record.get("timestamp"))
        item_id = payload.get("id")
        call_id = payload.get("call_id")
        if isinstance(item_id, str) and item_id:
            key = f"id:{item_id}"
        elif isinstance(call_id, str) and call_id:
            key = f"{item_type}:{call_id}"
        else:
            key = _record_hash(record)
        if item_type not in (
            "message",
            "function_call",
            "custom_tool_call",
            "local_shell_call",
            "function_call_output",
            "custom_tool_call_output",
        ):
            log.debug("rollout_item_ignored", item_type=item_type)
            return []
        if not self._first_time(key):
            return []
        if item_type == "message":
            return self._message(MessageItem.model_validate(payload), key, timestamp)
        if item_type == "function_call":
            call = FunctionCallItem.model_validate(payload)
            return [self._tool_call(call.call_id, call.name, _arguments(call.arguments), timestamp)]
        if item_type == "custom_tool_call":
            custom = CustomToolCallItem.model_validate(payload)
            return [
                self._tool_call(custom.call_id, custom.name, {"input": custom.input}, timestamp)
            ]
        if item_type == "local_shell_call":
            shell = LocalShellCallItem.model_validate(payload)
            return [
                self._tool_call(
                    shell.call_id or shell.id or key, "local_shell", shell.action, timestamp
                )
            ]
        result = CallOutputItem.model_validate(payload)
        text, failed = _output_text_and_error(result.output)
        body = {"call_id": result.call_id, "output": truncate_output(text), "is_error": failed}
        return [ParsedEvent("tool_result", {"result": body}, timestamp, result.call_id)]

    def _message(self, item: MessageItem, key: str, timestamp: str | None) -> list[ParsedEvent]:
        if item.role not in ("user", "assistant"):
            return []
        text = _message_text(item, user=item.role == "user")
        if not text.strip():
            return []
        message_id = item.id or key
        message: dict[str, Any] = {"id": message_id, "role": item.role, "content": text}
        if item.role == "assistant":
            if self._model:
                message["model"] = self._model
            tokens_input, tokens_output = self._pending_tokens
            if tokens_input or tokens_output:
                message["tokens_input"] = tokens_input
                message["tokens_output"] = tokens_output
                self._pending_tokens = (0, 0)
        return [ParsedEvent("chat_message", {"message": message}, timestamp, message_id)]

    @staticmethod
    def _tool_call(
        call_id: str, name: str, tool_input: dict[str, Any], timestamp: str | None
    ) -> ParsedEvent:
        call = {"id": call_id, "name": name, "input": cap_input(tool_input)}
        return ParsedEvent("tool_call", {"call": call}, timestamp, call_id)

    def _token_count(self, record: dict[str, Any], payload: dict[str, Any]) -> None:
        if payload.get("info") is None:  # rate-limit-only updates carry no usage
            return
        if not self._first_time(_record_hash(record)):
            return
        info = TokenInfo.model_validate(payload["info"])
        added: tuple[int, int]
        if info.total_token_usage is not None:
            total = (info.total_token_usage.input_tokens, info.total_token_usage.output_tokens)
            previous = self._usage_total
            if previous is None or total[0] < previous[0] or total[1] < previous[1]:
                # First count, or a counter that started over (a new thread): all of it is new.
                added = total
            else:
                added = (total[0] - previous[0], total[1] - previous[1])
            self._usage_total = total
        elif info.last_token_usage is not None:
            added = (info.last_token_usage.input_tokens, info.last_token_usage.output_tokens)
        else:
            return
        self._pending_tokens = (
            self._pending_tokens[0] + added[0],
            self._pending_tokens[1] + added[1],
        )

    # -- persistence

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "seen": self._seen.to_list(),
            "model": self._model,
            "usage_total": list(self._usage_total) if self._usage_total else None,
            "pending_tokens": list(self._pending_tokens),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, max_seen: int = DEFAULT_MAX_SEEN
    ) -> CodexRolloutParser:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported parser state version: {state.get('version')!r}")
        parser = cls(max_seen=max_seen)
        parser._seen = RecentKeys(state["seen"], limit=max_seen)
        parser._model = state["model"]
        total = state["usage_total"]
        parser._usage_total = (int(total[0]), int(total[1])) if total else None
        pending = state["pending_tokens"]
        parser._pending_tokens = (int(pending[0]), int(pending[1]))
        return parser


def _arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """A function call's arguments as PROTOCOL's input object."""
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        parsed = loads_bounded(raw)  # text the container wrote: bounded nesting
    except ValueError:
        return {"arguments": raw}
    return parsed if isinstance(parsed, dict) else {"arguments": raw}
