"""Reads what a model answer cost while its bytes pass the gateway, without holding them.

The gateway hands every chunk of an answer to a :class:`UsageTap` after writing it to the
agent. The tap splits Server-Sent Events into lines incrementally, keeps at most one line
(bounded: a line over ``MAX_LINE`` is skipped, save a head and tail kept to find the usage
of a huge ``response.completed``), and JSON-decodes only the few events that carry usage,
so the deltas that make up most of a stream cost a substring test each.

* Anthropic Messages: ``message_start.message.usage`` (input, cache write, cache read,
  output so far) and the model; ``message_delta.usage`` (cumulative: the last one wins).
* OpenAI Responses: ``response.completed`` / ``response.incomplete`` / ``response.failed``
  carry ``response.usage``; cached input tokens are reported inside ``input_tokens``, so
  they are taken out of it (``input = input_tokens - cached``). The model comes from
  ``response.created`` or the final event.
* A non-streamed JSON answer: its top-level ``usage`` and ``model`` (bounded as well).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from daemon.core.access import Usage

Family = Literal["anthropic", "openai"]

MAX_LINE = 1024 * 1024  # an SSE line longer than this is not decoded
MAX_JSON = 8 * 1024 * 1024  # a non-streamed answer longer than this is not decoded
_HEAD = 4096  # kept of an over-long line: where its event type and model are
_TAIL = 16384  # kept of an over-long line: where a Responses usage object sits

_MARKERS: dict[Family, tuple[bytes, ...]] = {
    "anthropic": (b"message_start", b"message_delta"),
    "openai": (
        b"response.created",
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
    ),
}
# What a chunk must contain to be looked at line by line: Anthropic's two markers share
# "message_" (one search instead of two; message_stop comes along, once a stream).
_FIRST_CUT: dict[Family, tuple[bytes, ...]] = {
    "anthropic": (b"message_",),
    "openai": _MARKERS["openai"],
}
_FINAL_OPENAI = ("response.completed", "response.incomplete", "response.failed")
_NUMBER = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*(\d+)')
    for name in ("input_tokens", "cached_tokens", "output_tokens")
}
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class UsageTap:
    """Fed each chunk of one answer; :meth:`result` gives the model and the usage."""

    def __init__(self, family: Family, *, streamed: bool) -> None:
        self.family = family
        self.streamed = streamed
        self.model = ""
        self.usage = Usage()
        self.found = False  # any usage seen at all
        self._markers = _MARKERS[family]
        self._cut = _FIRST_CUT[family]
        self._line = bytearray()
        self._skipping = False  # the current line passed MAX_LINE
        self._head = b""
        self._tail = bytearray()
        self._data: list[bytes] = []  # the current event's data lines
        self._data_size = 0
        self._body = bytearray()  # a non-streamed answer
        self._body_over = False

    # -- input

    def feed(self, chunk: bytes) -> None:
        if not self.streamed:
            if not self._body_over:
                if len(self._body) + len(chunk) > MAX_JSON:
                    self._body_over = True
                    self._body.clear()
                else:
                    self._body += chunk
            return
        if not (self._data or self._skipping):
            # Most chunks are deltas only: nothing to decode, only the line in progress
            # moves. One substring search per marker (in C) tells them apart.
            probe = bytes(self._line) + chunk if self._line else chunk
            for marker in self._cut:
                if marker in probe:
                    break
            else:
                end = chunk.rfind(b"\n")
                if end < 0:
                    self._append(chunk)
                else:
                    self._line.clear()
                    if end + 1 < len(chunk):
                        self._append(chunk[end + 1 :])
                return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._append(chunk[start:])
                return
            self._append(chunk[start:end])
            self._end_line()
            start = end + 1

    def result(self) -> tuple[str, Usage]:
        """The model and usage of the whole answer (call once, at its end)."""
        if self.streamed:
            if self._line or self._skipping:
                self._end_line()
            self._dispatch()
        elif self._body and not self._body_over:
            try:
                loaded = json.loads(self._body)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                self._whole(loaded)
        return self.model, self.usage

    # -- lines and events

    def _append(self, piece: bytes) -> None:
        if not piece:
            return
        if self._skipping:
            self._tail += piece
            if len(self._tail) > _TAIL:
                del self._tail[:-_TAIL]
            return
        self._line += piece
        if len(self._line) > MAX_LINE:
            self._skipping = True
            self._head = bytes(self._line[:_HEAD])
            self._tail = bytearray(self._line[-_TAIL:])
            self._line.clear()

    def _end_line(self) -> None:
        if self._skipping:
            self._skipping = False
            self._salvage(self._head, bytes(self._tail))
            self._head, self._tail = b"", bytearray()
            return
        line = bytes(self._line)
        self._line.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            self._dispatch()
        elif line.startswith(b"data:") and any(marker in line for marker in self._markers):
            # Only lines that may carry usage are kept until their event ends (the providers
            # send each event's JSON on one data line).
            data = line[5:]
            if data.startswith(b" "):
                data = data[1:]
            self._data_size += len(data)
            if self._data_size <= MAX_LINE:
                self._data.append(data)

    def _dispatch(self) -> None:
        if not self._data:
            return
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data, self._data_size = [], 0
        if not any(marker in data for marker in self._markers):
            return  # a delta: most of the stream, never decoded
        try:
            event = json.loads(data)
        except ValueError:
            return
        if isinstance(event, dict):
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if self.family == "anthropic":
            if kind == "message_start" and isinstance(event.get("message"), dict):
                message = event["message"]
                self.model = str(message.get("model") or self.model)
                self._anthropic(message.get("usage"))
            elif kind == "message_delta":
                self._anthropic(event.get("usage"))
            return
        response = event.get("response")
        if not isinstance(response, dict):
            return
        if response.get("model"):
            self.model = str(response["model"])
        if kind in _FINAL_OPENAI:
            self._openai(response.get("usage"))

    def _whole(self, body: dict[str, Any]) -> None:
        if body.get("model"):
            self.model = str(body["model"])
        if self.family == "anthropic":
            self._anthropic(body.get("usage"))
        else:
            self._openai(body.get("usage"))

    # -- the providers' usage objects

    def _anthropic(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.found = True
        # message_delta repeats cumulative totals (output always, the rest in newer API
        # versions): a field present replaces the earlier value.
        if usage.get("input_tokens") is not None:
            self.usage.input_tokens = _int(usage["input_tokens"])
        if usage.get("cache_creation_input_tokens") is not None:
            self.usage.cache_write_tokens = _int(usage["cache_creation_input_tokens"])
        if usage.get("cache_read_input_tokens") is not None:
            self.usage.cache_read_tokens = _int(usage["cache_read_input_tokens"])
        if usage.get("output_tokens") is not None:
            self.usage.output_tokens = _int(usage["output_tokens"])

    def _openai(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self.found = True
        details = usage.get("input_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        total_input = _int(usage.get("input_tokens"))
        self.usage.cache_read_tokens = min(cached, total_input)
        self.usage.input_tokens = total_input - self.usage.cache_read_tokens
        self.usage.output_tokens = _int(usage.get("output_tokens"))

    def _salvage(self, head: bytes, tail: bytes) -> None:
        """An over-long line (a Responses answer with a huge output): its type and model are
        in its head, its usage object at its end."""
        if self.family != "openai" or not head.startswith(b"data:"):
            return
        if not any(marker.encode() in head for marker in _FINAL_OPENAI):
            return
        model = _MODEL.search(head)
        if model:
            self.model = model.group(1).decode(errors="replace")
        usage_at = tail.rfind(b'"usage"')
        if usage_at < 0:
            return
        found = {
            name: int(match.group(1))
            for name, pattern in _NUMBER.items()
            if (match := pattern.search(tail, usage_at))
        }
        self._openai(
            {
                "input_tokens": found.get("input_tokens", 0),
                "output_tokens": found.get("output_tokens", 0),
                "input_tokens_details": {"cached_tokens": found.get("cached_tokens", 0)},
            }
        )
