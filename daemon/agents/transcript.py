"""Tailing an agent's JSONL transcript, and what the transcript parsers share.

The agent CLIs append one JSON object a line to a file in the agent home. The daemon follows
that file with a :class:`TranscriptTailer` from a byte offset it persists, so a restarted
daemon resumes where it stopped instead of re-reading (and re-publishing) the whole file.
Only complete lines are returned: the CLI writes a record and its newline together, so a
last line without its newline is still being written and waits for the next read.

The file is the container's to write, so it is treated as hostile: opened through
``homefs`` (no link followed, regular files only), read a bounded number of bytes at a
time, over-long and over-deep lines skipped (:func:`loads_bounded` is for every JSON text
that came from a container).

The parsers (``claude_transcript``, ``codex_rollout``) turn records into
:class:`ParsedEvent` values: the PROTOCOL payload of a ``chat_message``, ``tool_call`` or
``tool_result`` plus the transcript's own timestamp. Helpers here keep their output alike:
one timestamp format, one truncation rule for tool output, one bounded set of seen keys.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import structlog

from daemon.core import homefs, jsonbound
from daemon.core.homefs import HostileFile

log = structlog.get_logger(__name__)

ChatEventType = Literal["chat_message", "tool_call", "tool_result"]

# A tool's output can be a whole file or a build log; events are stored and sent to every
# viewer, so each is capped. 64 KiB keeps a useful head of any output.
MAX_OUTPUT_BYTES = 64 * 1024
MAX_INPUT_STRING_BYTES = 16 * 1024  # per string value of a tool call's input
# Bytes read per call: large enough for a burst of records in one thread hop, small enough
# that neither the first read of a long transcript nor a file the container fills as fast
# as it can holds more than this at once.
READ_CHUNK_BYTES = 1024 * 1024
# A line longer than this is skipped. Claude Code's longest records (a tool result holding
# a large file) are far below; the events made from them are capped at 64 KiB anyway.
MAX_LINE_BYTES = 1024 * 1024
# Deeper JSON is skipped: real records nest a dozen levels; recursive handling (pydantic,
# cap_input, json.dumps) of a value near Python's limit of about a thousand raises.
MAX_JSON_DEPTH = 100
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


def loads_bounded(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON a container wrote (:func:`daemon.core.jsonbound.loads_bounded`), at most
    :data:`MAX_JSON_DEPTH` levels deep: every failure is a ValueError."""
    return jsonbound.loads_bounded(data, max_depth)


@dataclass(frozen=True, slots=True)
class _ReadResult:
    records: list[dict[str, Any]]
    offset: int
    skip_from: int | None
    inode: int | None
    anchor: bytes
    bytes_read: int = 0
    hostile: HostileFile | None = None


class TranscriptTailer:
    """Follows one JSONL file in an agent home as it grows, from a byte offset the caller
    persists.

    ``await read_new()`` returns the JSON objects of the complete lines written since the
    last call. A line that is not a JSON object, is nested deeper than
    :data:`MAX_JSON_DEPTH` or is longer than ``max_line_bytes`` is skipped and logged; the
    lines after it are still read. A missing file reads as empty. A file that shrank below
    the offset, was replaced by another file, or whose bytes just before the offset changed
    (rewritten in place) is read again from the start: the parsers drop records they
    already emitted. Not safe for concurrent ``read_new`` calls on one tailer.

    The file is the container's, so a call reads at most ``max(chunk_bytes,
    max_line_bytes + 1)`` bytes (call again while ``offset`` moves to drain a backlog), a
    long line is skipped as it is read (never held whole), and the file is opened through
    ``homefs`` below ``root`` (default: the file's directory): a symlink, FIFO, device or
    anything but a regular file is not read at all and shows in :attr:`hostile`.
    """

    def __init__(
        self,
        path: Path | str,
        offset: int = 0,
        *,
        root: Path | None = None,
        chunk_bytes: int = READ_CHUNK_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self.path = Path(path)
        self.root = root if root is not None else self.path.parent
        # Raises ValueError for a path outside the root.
        self.relative = self.path.relative_to(self.root).as_posix()
        self.chunk_bytes = chunk_bytes
        self.max_line_bytes = max_line_bytes
        self._offset = offset
        # Where the scan of an over-long line has reached; the offset stays at its start.
        self._skip_from: int | None = None
        # Known only after a read in this process; a persisted offset alone is checked by
        # the byte before it being a newline.
        self._inode: int | None = None
        self._anchor = b""
        self.bytes_read = 0  # read from the file by this tailer, in this process
        # Why the file was not read at the last call, or None: a HostileFile says what it is.
        self.hostile: HostileFile | None = None

    @property
    def offset(self) -> int:
        """Byte offset just past the last complete line returned: persist it to resume."""
        return self._offset

    async def read_new(self) -> list[dict[str, Any]]:
        # The read runs in a thread and returns the new position instead of setting it, so a
        # cancelled call changes nothing and the next one reads the same lines again.
        result = await asyncio.to_thread(
            self._read, self._offset, self._skip_from, self._inode, self._anchor
        )
        self._offset, self._skip_from = result.offset, result.skip_from
        self._inode, self._anchor = result.inode, result.anchor
        self.bytes_read += result.bytes_read
        self.hostile = result.hostile
        return result.records

    def _read(
        self, offset: int, skip_from: int | None, inode: int | None, anchor: bytes
    ) -> _ReadResult:
        try:
            fd, st = homefs.open_regular(self.root, self.relative)
        except FileNotFoundError:
            # Not written yet: the CLI creates its transcript with its first record.
            return _ReadResult([], offset, skip_from, inode, anchor)
        except HostileFile as exc:
            return _ReadResult([], offset, skip_from, inode, anchor, hostile=exc)
        except OSError as exc:  # unreadable (permissions, say): reported, not raised per poll
            hostile = HostileFile(self.relative, f"cannot be opened: {exc.strerror}")
            return _ReadResult([], offset, skip_from, inode, anchor, hostile=hostile)
        try:
            return self._read_open(fd, st, offset, skip_from, inode, anchor)
        finally:
            os.close(fd)

    def _read_open(
        self,
        fd: int,
        st: os.stat_result,
        offset: int,
        skip_from: int | None,
        inode: int | None,
        anchor: bytes,
    ) -> _ReadResult:
        if offset and self._restart_reason(fd, st, offset, skip_from, inode, anchor):
            offset, skip_from, anchor = 0, None, b""
        read = 0
        if skip_from is not None:
            # Inside a line over the cap: look for its end, keeping nothing of it.
            data = os.pread(fd, self.chunk_bytes, skip_from)
            read += len(data)
            end_of_long = data.find(b"\n")
            if end_of_long < 0:
                return _ReadResult([], offset, skip_from + len(data), st.st_ino, anchor, read)
            position = skip_from + end_of_long + 1
            log.warning(
                "transcript_line_skipped",
                path=str(self.path),
                offset=offset,
                reason="too_long",
                length=position - offset,
            )
            anchor = data[: end_of_long + 1][-_ANCHOR_BYTES:]
            data = data[end_of_long + 1 :]
        else:
            position = offset
            data = os.pread(fd, self.chunk_bytes, position)
            read += len(data)
            at_end = len(data) < self.chunk_bytes
            # A line longer than a chunk but within the cap: read on until it ends.
            while b"\n" not in data and not at_end and len(data) <= self.max_line_bytes:
                want = min(self.chunk_bytes, self.max_line_bytes + 1 - len(data))
                more = os.pread(fd, want, position + len(data))
                read += len(more)
                at_end = len(more) < want
                data += more
            if b"\n" not in data and len(data) > self.max_line_bytes:
                # Over the cap: skipped from here on, as it is read.
                return _ReadResult([], offset, position + len(data), st.st_ino, anchor, read)
        end = data.rfind(b"\n")
        complete = data[: end + 1]
        records = self._parse_lines(complete, position)
        new_anchor = (anchor + complete)[-_ANCHOR_BYTES:]
        return _ReadResult(records, position + len(complete), None, st.st_ino, new_anchor, read)

    def _restart_reason(
        self,
        fd: int,
        st: os.stat_result,
        offset: int,
        skip_from: int | None,
        inode: int | None,
        anchor: bytes,
    ) -> str | None:
        """Why ``offset`` no longer points just past a line we read, or None if it still does."""
        reason: str | None = None
        if st.st_size < max(offset, skip_from or 0):
            reason = "truncated"
        elif inode is not None and st.st_ino != inode:
            reason = "replaced"
        else:
            # The bytes before the offset must be those we read last (or, for an offset
            # restored from storage, at least a line's end).
            expected = anchor or b"\n"
            n = min(len(expected), offset)
            if os.pread(fd, n, offset - n) != expected[-n:]:
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
            reason = None
            if len(line) > self.max_line_bytes:
                reason = "too_long"
            else:
                try:
                    value = loads_bounded(line)
                except ValueError:
                    # Bad JSON, bad UTF-8, or nested too deeply.
                    reason = "not_json"
                else:
                    if isinstance(value, dict):
                        records.append(value)
                    else:
                        reason = "not_object"
            if reason:
                # The content is not logged: it can hold anything the agent saw, secrets
                # included.
                log.warning(
                    "transcript_line_skipped",
                    path=str(self.path),
                    offset=line_offset,
                    reason=reason,
                    length=len(line),
                )
        return records


def newest_file_sync(directory: Path | str, pattern: str) -> Path | None:
    """The most recently modified regular file under ``directory`` matching ``pattern``, or
    None; found without following links (``homefs.find_files``), so a linked directory in
    the agent home leads nowhere outside it.

    Ties on mtime go to the greater name: Codex names rollouts by start time, so that is the
    later one.
    """
    best: tuple[float, str, PurePosixPath] | None = None
    for relative, st in homefs.find_files(Path(directory), pattern):
        key = (st.st_mtime, relative.name, relative)
        if best is None or key[:2] > best[:2]:
            best = key
    return Path(directory) / best[2] if best is not None else None


async def newest_file(directory: Path | str, pattern: str) -> Path | None:
    """:func:`newest_file_sync` in a worker thread: a walk over a home is disk I/O."""
    return await asyncio.to_thread(newest_file_sync, directory, pattern)
