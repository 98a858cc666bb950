"""Tailing an agent's JSONL transcript, and what the transcript parsers share.

The agent CLIs append one JSON object a line to a file in the agent home. The daemon follows
that file with a :class:`TranscriptTailer` from a byte offset it persists, so a restarted
daemon resumes where it stopped instead of re-reading (and re-publishing) the whole file.
Only complete lines are returned: the CLI writes a record and its newline together, so a
last line without its newline is still being written and waits for the next read.

The parsers (``claude_transcript``, ``codex_rollout``) turn records into
:class:`ParsedEvent` values: the PROTOCOL payload of a ``chat_message``, ``tool_call`` or
``tool_result`` plus the transcript's own timestamp. Helpers here keep their output alike:
one timestamp format, one truncation rule for tool output, one bounded set of seen keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import structlog

log = structlog.get_logger(__name__)

ChatEventType = Literal["chat_message", "tool_call", "tool_result"]

# A tool's output can be a whole file or a build log; events are stored and sent to every
# viewer, so each is capped. 64 KiB keeps a useful head of any output.
MAX_OUTPUT_BYTES = 64 * 1024
MAX_INPUT_STRING_BYTES = 16 * 1024  # per string value of a tool call's input
# Bytes read per step: large enough for a burst of records in one thread hop, small enough
# that the first read of a long transcript does not hold tens of MiB at once.
READ_CHUNK_BYTES = 4 * 1024 * 1024
# Bytes kept from just before the offset to notice a file rewritten in place (same inode,
# not shorter): if they changed, the offset no longer means anything.
_ANCHOR_BYTES = 64


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One chat event from a transcript, ready for ``EventHub.publish(type, sid, **payload)``.

    ``timestamp`` is when the agent wrote the record (RFC 3339, UTC, ``Z``), or None if the
    record had none. ``source_id`` names the record it came from (Claude's record uuid,
    Codex's item id) so a log line or a test can trace an event back to its line.
    """

    type: ChatEventType
    payload: dict[str, Any]
    timestamp: str | None
    source_id: str


def format_timestamp(value: object) -> str | None:
    """An RFC 3339 UTC timestamp with milliseconds, or None for anything unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        # The CLIs write UTC; a naive value is taken as UTC rather than local time.
        parsed = parsed.replace(tzinfo=UTC)
    text = parsed.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def cap_input(value: Any, limit: int = MAX_INPUT_STRING_BYTES) -> Any:
    """A tool call's input with every long string in it cut to ``limit`` bytes plus a marker.

    A ``Write`` of a large file carries the whole file in its input; the chat needs its
    shape and a head of each value, not megabytes in every event and every replay.
    """
    if isinstance(value, str):
        return truncate_output(value, limit)
    if isinstance(value, dict):
        return {key: cap_input(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [cap_input(item, limit) for item in value]
    return value


def truncate_output(text: str, limit: int = MAX_OUTPUT_BYTES) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (on a character boundary) plus a marker."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", errors="ignore")
    return f"{kept}\n[output truncated: {len(data) - limit} more bytes]"


class RecentKeys:
    """An insertion-ordered set that forgets its oldest keys past ``limit``.

    Parsers use it to never emit a record twice. It is bounded so the persisted state stays
    small in a long session; the tailer's offset is what normally keeps old records from
    being fed again, this only has to cover overlaps (a re-read after a rewrite).
    """

    def __init__(self, keys: Iterable[str] = (), limit: int = 10_000) -> None:
        self.limit = limit
        self._keys: dict[str, None] = {}
        for key in keys:
            self.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None
        while len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]

    def to_list(self) -> list[str]:
        return list(self._keys)


@dataclass(frozen=True, slots=True)
class _ReadResult:
    records: list[dict[str, Any]]
    offset: int
    inode: int | None
    anchor: bytes


class TranscriptTailer:
    """Follows one JSONL file as it grows, from a byte offset the caller persists.

    ``await read_new()`` returns the JSON objects of the complete lines written since the
    last call (about ``chunk_bytes`` of them at most; call again while ``offset`` moves to
    drain a backlog). A line that is not a JSON object is skipped and logged; the lines after
    it are still read. A missing file reads as empty. A file that shrank below the offset,
    was replaced by another file, or whose bytes just before the offset changed (rewritten
    in place) is read again from the start: the parsers drop records they already emitted.
    Not safe for concurrent ``read_new`` calls on one tailer.
    """

    def __init__(
        self, path: Path | str, offset: int = 0, *, chunk_bytes: int = READ_CHUNK_BYTES
    ) -> None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self._offset = offset
        # Known only after a read in this process; a persisted offset alone is checked by
        # the byte before it being a newline.
        self._inode: int | None = None
        self._anchor = b""

    @property
    def offset(self) -> int:
        """Byte offset just past the last complete line returned: persist it to resume."""
        return self._offset

    async def read_new(self) -> list[dict[str, Any]]:
        # The read runs in a thread and returns the new position instead of setting it, so a
        # cancelled call changes nothing and the next one reads the same lines again.
        result = await asyncio.to_thread(self._read, self._offset, self._inode, self._anchor)
        self._offset, self._inode, self._anchor = result.offset, result.inode, result.anchor
        return result.records

    def _read(self, offset: int, inode: int | None, anchor: bytes) -> _ReadResult:
        try:
            with open(self.path, "rb") as f:
                return self._read_open(f, offset, inode, anchor)
        except FileNotFoundError:
            # Not written yet: the CLI creates its transcript with its first record.
            return _ReadResult([], offset, inode, anchor)

    def _read_open(self, f: BinaryIO, offset: int, inode: int | None, anchor: bytes) -> _ReadResult:
        st = os.fstat(f.fileno())
        if offset and self._restart_reason(f, st, offset, inode, anchor):
            offset, anchor = 0, b""
        f.seek(offset)
        data = f.read(self.chunk_bytes)
        end = data.rfind(b"\n")
        # A single line longer than a chunk: keep reading until it ends or the file does.
        while end < 0 and len(data) >= self.chunk_bytes:
            more = f.read(self.chunk_bytes)
            if not more:
                break
            data += more
            end = data.rfind(b"\n")
        complete = data[: end + 1]
        records = self._parse_lines(complete, offset)
        new_anchor = (anchor + complete)[-_ANCHOR_BYTES:]
        return _ReadResult(records, offset + len(complete), st.st_ino, new_anchor)

    def _restart_reason(
        self, f: BinaryIO, st: os.stat_result, offset: int, inode: int | None, anchor: bytes
    ) -> str | None:
        """Why ``offset`` no longer points just past a line we read, or None if it still does."""
        reason: str | None = None
        if st.st_size < offset:
            reason = "truncated"
        elif inode is not None and st.st_ino != inode:
            reason = "replaced"
        else:
            # The bytes before the offset must be those we read last (or, for an offset
            # restored from storage, at least a line's end).
            expected = anchor or b"\n"
            n = min(len(expected), offset)
            f.seek(offset - n)
            if f.read(n) != expected[-n:]:
                reason = "rewritten"
        if reason:
            log.warning(
                "transcript_restarted",
                path=str(self.path),
                reason=reason,
                offset=offset,
                size=st.st_size,
            )
        return reason

    def _parse_lines(self, data: bytes, base_offset: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        position = base_offset
        for line in data.splitlines(keepends=True):
            line_offset, position = position, position + len(line)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):
                # ValueError covers bad JSON and bad UTF-8. The content is not logged: it can
                # hold anything the agent saw, secrets included.
                log.warning("transcript_line_skipped", path=str(self.path), offset=line_offset)
                continue
            if not isinstance(value, dict):
                log.warning("transcript_line_skipped", path=str(self.path), offset=line_offset)
                continue
            records.append(value)
        return records


def newest_file_sync(directory: Path | str, pattern: str) -> Path | None:
    """The most recently modified file under ``directory`` matching ``pattern``, or None.

    Ties on mtime go to the greater name: Codex names rollouts by start time, so that is the
    later one. A file removed between listing and stat is passed over.
    """
    best: tuple[float, str, Path] | None = None
    for path in Path(directory).glob(pattern):
        try:
            st = path.stat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        key = (st.st_mtime, path.name, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best is not None else None


async def newest_file(directory: Path | str, pattern: str) -> Path | None:
    """:func:`newest_file_sync` in a worker thread: a glob over a home is disk I/O."""
    return await asyncio.to_thread(newest_file_sync, directory, pattern)
