"""Transcript tailing and parsing: the real captured CLI files plus small synthetic lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.agents.claude_transcript import ClaudeTranscriptParser
from daemon.agents.codex_rollout import CodexRolloutParser
from daemon.agents.transcript import (
    MAX_INPUT_STRING_BYTES,
    MAX_OUTPUT_BYTES,
    ParsedEvent,
    TranscriptTailer,
    format_timestamp,
    newest_file,
    truncate_output,
)

FIXTURES = Path(__file__).parent / "fixtures"
CLAUDE = FIXTURES / "claude_transcript.jsonl"
CLAUDE_TUI = FIXTURES / "claude_tui_transcript.jsonl"
CODEX = FIXTURES / "codex_rollout.jsonl"

Parser = ClaudeTranscriptParser | CodexRolloutParser


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def parser_for(path: Path) -> Parser:
    return CodexRolloutParser() if path == CODEX else ClaudeTranscriptParser()


def parse_all(path: Path) -> list[ParsedEvent]:
    parser = parser_for(path)
    events = parser.feed(records(path))
    if isinstance(parser, ClaudeTranscriptParser):
        assert parser.held == 0
    return events


def logical(events: list[ParsedEvent]) -> list[tuple[str, str]]:
    """Events without ids, timestamps or tokens: what a reader of the chat sees."""
    seen: list[tuple[str, str]] = []
    for event in events:
        if event.type == "chat_message":
            message = event.payload["message"]
            seen.append((f"{message['role']} says", message["content"]))
        elif event.type == "tool_call":
            call = event.payload["call"]
            seen.append((f"call {call['name']}", json.dumps(call["input"], sort_keys=True)))
        else:
            result = event.payload["result"]
            seen.append(("result", f"{result['output']!r} error={result['is_error']}"))
    return seen


def user(uuid: str, parent: str | None, content: Any, **extra: Any) -> dict[str, Any]:
    return {
        "type": "user",
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": "2026-11-22T10:00:00.000Z",
        "message": {"role": "user", "content": content},
        **extra,
    }


def assistant(
    uuid: str,
    parent: str | None,
    blocks: list[dict[str, Any]],
    message_id: str = "msg_1",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "type": "assistant",
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": "2026-11-22T10:00:01.000Z",
        "message": {
            "id": message_id,
            "role": "assistant",
            "model": "claude-test",
            "content": blocks,
            "usage": usage or {"input_tokens": 10, "output_tokens": 2},
        },
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# -- Claude: the real transcripts


def test_claude_headless_fixture_events() -> None:
    events = parse_all(CLAUDE)
    assert [e.type for e in events] == [
        "chat_message",
        "chat_message",
        "tool_call",
        "tool_result",
        "chat_message",
    ]
    prompt, intro, call, result, done = (e.payload for e in events)
    assert prompt["message"] == {
        "id": "88440565-9495-4b6c-a345-92599f290bb6",
        "role": "user",
        "content": "make a file",
    }
    # The scripted model says a sentence before its tool call; both share one message id
    # across two records, the text one and the tool_use one.
    assert intro["message"] == {
        "id": "msg_da4214f200000001",
        "role": "assistant",
        "content": "I will write the file.",
        "model": "claude-opus-4-8",
        "tokens_input": 19520,
        "tokens_output": 51,
    }
    assert call["call"] == {
        "id": "toolu_01corraltest",
        "name": "Bash",
        "input": {"command": "echo hello > /workspace/out.txt", "description": "Write out.txt"},
    }
    assert result["result"] == {
        "call_id": "toolu_01corraltest",
        "output": "(Bash completed with no output)",
        "is_error": False,
    }
    # The tool_use record repeats msg ..01's usage: it is not counted a second time.
    assert done["message"] == {
        "id": "msg_da4214f200000002",
        "role": "assistant",
        "content": "done",
        "model": "claude-opus-4-8",
        "tokens_input": 19620,
        "tokens_output": 8,
    }
    assert [e.timestamp for e in events] == [
        "2026-11-22T11:38:57.297Z",
        "2026-11-22T11:38:57.370Z",
        "2026-11-22T11:38:57.381Z",
        "2026-11-22T11:38:57.542Z",
        "2026-11-22T11:38:57.576Z",
    ]
    assert events[2].source_id == "ffafea7c-fcfd-4bdb-baea-4e3fe3aee7fd"


def test_claude_tui_fixture_follows_parent_links_not_file_order() -> None:
    lines = records(CLAUDE_TUI)
    kinds = [r["type"] for r in lines if r["type"] in ("user", "assistant")]
    assert kinds[0] == "assistant", "the fixture no longer shows the TUI's reordering"

    events = parse_all(CLAUDE_TUI)
    assert logical(events) == [
        ("user says", "make a file"),
        (
            "call Bash",
            json.dumps(
                {"command": "echo hello > /workspace/out.txt", "description": "write"},
                sort_keys=True,
            ),
        ),
        ("result", "'(Bash completed with no output)' error=False"),
        ("assistant says", "done"),
    ]
    # The same logical turn as the headless run, minus the sentence that run's script adds.
    headless = logical(parse_all(CLAUDE))
    assert [kind for kind, _ in logical(events)] == [
        kind for kind, _ in headless if (kind, _) != ("assistant says", "I will write the file.")
    ]
    # The tool-only response's usage is carried by the next message, not lost.
    assert events[-1].payload["message"]["tokens_input"] == 22643 + 22730
    assert events[-1].payload["message"]["tokens_output"] == 37 + 8
    timestamps = [e.timestamp or "" for e in events]
    assert timestamps == sorted(timestamps)


@pytest.mark.parametrize("path", [CLAUDE, CLAUDE_TUI, CODEX], ids=lambda p: p.stem)
def test_feeding_the_same_records_twice_emits_nothing_new(path: Path) -> None:
    parser = parser_for(path)
    first = parser.feed(records(path))
    assert len(first) >= 4
    assert parser.feed(records(path)) == []
    # Nor does a re-read split differently, as after a rewritten file.
    assert parser.feed(records(path)[3:]) == []


# -- the tailer, with the parsers


async def write_progressively(
    source: Path, target: Path, step: int, parser: Parser, tailer: TranscriptTailer
) -> list[ParsedEvent]:
    data = source.read_bytes()
    events: list[ParsedEvent] = []
    for start in range(0, len(data), step):
        with open(target, "ab") as f:
            f.write(data[start : start + step])
        events += parser.feed(await tailer.read_new())
        # Never past a line end: a partial line stays for the next read.
        assert data[: tailer.offset].endswith(b"\n") or tailer.offset == 0
    return events


@pytest.mark.parametrize("path", [CLAUDE, CLAUDE_TUI, CODEX], ids=lambda p: p.stem)
@pytest.mark.parametrize("step", [97, 300, 512])
async def test_progressive_writes_give_the_same_events(
    path: Path, step: int, tmp_path: Path
) -> None:
    target = tmp_path / "t.jsonl"
    tailer = TranscriptTailer(target)
    assert await tailer.read_new() == []  # not written yet
    events = await write_progressively(path, target, step, parser_for(path), tailer)
    assert events == parse_all(path)
    assert tailer.offset == path.stat().st_size


async def test_tailer_reads_lines_longer_than_its_chunk(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    target.write_bytes(CLAUDE.read_bytes())
    tailer = TranscriptTailer(target, chunk_bytes=64)
    got: list[dict[str, Any]] = []
    while batch := await tailer.read_new():
        got += batch
    assert got == records(CLAUDE)
    assert tailer.offset == CLAUDE.stat().st_size


async def test_bad_lines_and_unknown_records_are_skipped(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    lines = [
        json.dumps(user("u1", None, "first")),
        "{not json",
        json.dumps({"type": "brand-new-record", "uuid": "x1", "parentUuid": "u1", "blob": [1]}),
        "[1, 2]",
        json.dumps({"type": "assistant", "uuid": "bad", "parentUuid": "x1", "message": 7}),
        json.dumps(assistant("a1", "bad", [text("second"), {"type": "thinking", "x": 1}])),
    ]
    target.write_text("\n".join(lines) + "\n")
    tailer = TranscriptTailer(target)
    with capture_logs() as logs:
        batch = await tailer.read_new()
        events = ClaudeTranscriptParser().feed(batch)
    assert [r.get("uuid") for r in batch] == ["u1", "x1", "bad", "a1"]
    skipped = [e for e in logs if e["event"] == "transcript_line_skipped"]
    first_len = len(lines[0]) + 1
    third_len = len(lines[1]) + 1 + len(lines[2]) + 1
    assert [e["offset"] for e in skipped] == [first_len, first_len + third_len]
    assert all(e["path"] == str(target) and e["log_level"] == "warning" for e in skipped)
    assert any(e["event"] == "transcript_record_invalid" for e in logs)
    assert [e.payload["message"]["content"] for e in events] == ["first", "second"]


async def test_truncated_last_line_waits_for_its_end(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    whole = json.dumps(user("u2", "u1", "second")) + "\n"
    target.write_text(json.dumps(user("u1", None, "first")) + "\n" + whole[:25])
    tailer = TranscriptTailer(target)
    assert [r["uuid"] for r in await tailer.read_new()] == ["u1"]
    held_at = tailer.offset
    assert await tailer.read_new() == []
    assert tailer.offset == held_at
    with open(target, "a") as f:
        f.write(whole[25:])
    assert [r["uuid"] for r in await tailer.read_new()] == ["u2"]
    assert tailer.offset == target.stat().st_size


async def test_resume_from_saved_offset_and_state(tmp_path: Path) -> None:
    """A restarted daemon: new tailer at the saved offset, parser from its saved state."""
    target = tmp_path / "t.jsonl"
    data = CLAUDE_TUI.read_bytes()
    # After the prompt (line 7) and before the attachments that link the held assistant to it.
    cut = sum(len(line) for line in data.splitlines(keepends=True)[:7])
    target.write_bytes(data[:cut])
    tailer = TranscriptTailer(target)
    parser = ClaudeTranscriptParser()
    before = parser.feed(await tailer.read_new())
    assert parser.held == 1
    saved = json.loads(json.dumps({"offset": tailer.offset, "parser": parser.state()}))

    with open(target, "ab") as f:
        f.write(data[cut:])
    tailer2 = TranscriptTailer(target, saved["offset"])
    parser2 = ClaudeTranscriptParser.from_state(saved["parser"])
    after = parser2.feed(await tailer2.read_new())
    assert after
    assert before + after == parse_all(CLAUDE_TUI)
    assert await tailer2.read_new() == []


async def test_truncated_file_is_read_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps(user("u1", None, "a long first prompt")) + "\n")
    tailer = TranscriptTailer(target)
    assert len(await tailer.read_new()) == 1
    target.write_text(json.dumps(user("u9", None, "new")) + "\n")  # shorter than before
    with capture_logs() as logs:
        assert [r["uuid"] for r in await tailer.read_new()] == ["u9"]
    assert [e["reason"] for e in logs if e["event"] == "transcript_restarted"] == ["truncated"]


async def test_replaced_or_rewritten_file_is_read_from_the_start(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    first = json.dumps(user("u1", None, "one")) + "\n"
    target.write_text(first)
    tailer = TranscriptTailer(target)
    parser = ClaudeTranscriptParser()
    assert len(parser.feed(await tailer.read_new())) == 1

    # Rewritten in place, same size and inode, different bytes before the offset.
    target.write_text(json.dumps(user("u2", None, "two")) + "\n")
    with capture_logs() as logs:
        assert [e.payload["message"]["content"] for e in parser.feed(await tailer.read_new())] == [
            "two"
        ]
    assert [e["reason"] for e in logs if e["event"] == "transcript_restarted"] == ["rewritten"]

    # Replaced by a new file holding the old lines and more: only the new line is new.
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(
        json.dumps(user("u2", None, "two")) + "\n" + json.dumps(user("u3", "u2", "three")) + "\n"
    )
    replacement.replace(target)
    events = parser.feed(await tailer.read_new())
    assert [e.payload["message"]["content"] for e in events] == ["three"]


async def test_restored_offset_not_at_a_line_end_restarts(tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    target.write_bytes(CLAUDE.read_bytes())
    tailer = TranscriptTailer(target, offset=10)  # inside the first line
    assert await tailer.read_new() == records(CLAUDE)


async def test_newest_file_finds_the_latest_rollout(tmp_path: Path) -> None:
    assert await newest_file(tmp_path, "sessions/*/*/*/rollout-*.jsonl") is None
    day = tmp_path / "sessions" / "2026" / "11" / "22"
    day.mkdir(parents=True)
    old, new = (
        day / "rollout-2026-11-22T10-00-00-a.jsonl",
        day / "rollout-2026-11-22T11-00-00-b.jsonl",
    )
    old.write_text("{}\n")
    new.write_text("{}\n")
    (day / "other.jsonl").write_text("{}\n")
    os.utime(old, (1_000, 1_000))
    os.utime(new, (2_000, 2_000))
    assert await newest_file(tmp_path, "sessions/*/*/*/rollout-*.jsonl") == new
    os.utime(old, (3_000, 3_000))  # a resumed session appends to its old rollout
    assert await newest_file(tmp_path, "sessions/*/*/*/rollout-*.jsonl") == old


# -- Claude: synthetic cases


def test_missing_parent_is_released_after_the_bound() -> None:
    parser = ClaudeTranscriptParser(max_wait_records=3)
    assert parser.feed([assistant("a1", "never-written", [text("orphan")])]) == []
    assert parser.feed([assistant("a2", "a1", [text("its child")], "msg_2")]) == []
    assert parser.held == 2
    released = parser.feed([{"type": "mode"}, {"type": "mode"}])
    assert [e.payload["message"]["content"] for e in released] == ["orphan", "its child"]
    assert parser.held == 0


def test_flush_releases_held_records_parent_first() -> None:
    parser = ClaudeTranscriptParser()
    # Child first in the file, both waiting on a parent that is not there.
    assert parser.feed([assistant("a2", "a1", [text("second")], "msg_2")]) == []
    assert parser.feed([assistant("a1", "gone", [text("first")])]) == []
    assert [e.payload["message"]["content"] for e in parser.flush()] == ["first", "second"]
    assert parser.flush() == []


def test_split_response_is_emitted_once_per_record_with_unique_ids() -> None:
    usage = {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 30}
    parser = ClaudeTranscriptParser()
    events = parser.feed(
        [
            user("u1", None, [text("hi"), {"type": "image", "source": {}}]),
            assistant("a1", "u1", [text("part one")], "msg_x", usage),
            assistant(
                "a2",
                "a1",
                [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "/a"}}],
                "msg_x",
                usage,
            ),
            assistant("a3", "a2", [text("part two"), text("more")], "msg_x", usage),
        ]
    )
    messages = [e.payload["message"] for e in events if e.type == "chat_message"]
    assert [m["id"] for m in messages] == ["u1", "msg_x", "msg_x#2"]
    assert messages[0]["content"] == "hi\n\n[image]"
    assert messages[2]["content"] == "part two\n\nmore"
    # Cache reads count as input; the repeated usage is counted once.
    assert (messages[1]["tokens_input"], messages[1]["tokens_output"]) == (105, 30)
    assert "tokens_input" not in messages[2]


def test_tool_results_errors_lists_and_truncation() -> None:
    big = "x" * (MAX_OUTPUT_BYTES + 10)
    events = ClaudeTranscriptParser().feed(
        [
            user(
                "u1",
                None,
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": True,
                        "content": [text("line 1"), text("line 2")],
                    },
                    {"type": "tool_result", "tool_use_id": "t2", "content": big},
                ],
            )
        ]
    )
    assert [e.type for e in events] == ["tool_result", "tool_result"]
    first, second = (e.payload["result"] for e in events)
    assert first == {"call_id": "t1", "output": "line 1\nline 2", "is_error": True}
    assert second["is_error"] is False
    assert second["output"].startswith("x" * MAX_OUTPUT_BYTES)
    assert second["output"].endswith("[output truncated: 10 more bytes]")
    assert len(second["output"].encode()) < MAX_OUTPUT_BYTES + 100


def test_large_tool_inputs_are_capped_keeping_their_shape() -> None:
    content = "y" * (MAX_INPUT_STRING_BYTES * 20)
    tool_input = {"file_path": "/workspace/big.txt", "content": content, "flags": [1, "z"]}
    events = ClaudeTranscriptParser().feed(
        [
            assistant(
                "a1",
                None,
                [{"type": "tool_use", "id": "t1", "name": "Write", "input": tool_input}],
                "msg_w",
                {"input_tokens": 1, "output_tokens": 1},
            )
        ]
    )
    (call,) = (e.payload["call"] for e in events if e.type == "tool_call")
    capped = call["input"]
    assert capped["file_path"] == "/workspace/big.txt"
    assert capped["flags"] == [1, "z"]
    assert capped["content"].startswith("y" * MAX_INPUT_STRING_BYTES)
    assert capped["content"].endswith(
        f"[output truncated: {len(content) - MAX_INPUT_STRING_BYTES} more bytes]"
    )
    assert len(json.dumps(call)) < MAX_INPUT_STRING_BYTES + 500


def test_sidechain_meta_and_compact_records_make_no_events() -> None:
    events = ClaudeTranscriptParser().feed(
        [
            user("u1", None, "<local-command-caveat>…</local-command-caveat>", isMeta=True),
            user("u2", "u1", "summary of earlier", isCompactSummary=True),
            {**assistant("a1", "u2", [text("sub-agent talk")]), "isSidechain": True},
            user("u3", "a1", "real prompt"),
        ]
    )
    assert [e.payload["message"]["content"] for e in events] == ["real prompt"]


def test_claude_state_round_trips_mid_stream() -> None:
    lines = records(CLAUDE_TUI)
    parser = ClaudeTranscriptParser()
    first = parser.feed(lines[:6])
    assert parser.held == 1  # the assistant record waits for its parent
    state = parser.state()
    restored = ClaudeTranscriptParser.from_state(json.loads(json.dumps(state)))
    assert restored.state() == state
    assert first + restored.feed(lines[6:]) == parse_all(CLAUDE_TUI)
    assert restored.feed(lines) == []  # the seen set came along too
    with pytest.raises(ValueError, match="version"):
        ClaudeTranscriptParser.from_state({**state, "version": 99})


# -- Codex


def test_codex_fixture_events() -> None:
    events = parse_all(CODEX)
    assert [e.type for e in events] == [
        "chat_message",
        "chat_message",
        "tool_call",
        "tool_result",
        "chat_message",
    ]
    prompt, intro, call, result, done = (e.payload for e in events)
    # Codex's <environment_context> user message and developer instructions are not shown.
    assert prompt["message"] == {
        "id": "msg_01a2030d-6234-78d3-9af3-a9a3e8fdfd55",
        "role": "user",
        "content": "make a file",
    }
    assert intro["message"] == {
        "id": "msg_b3a6428b00000001",
        "role": "assistant",
        "content": "I will write the file.",
        "model": "gpt-5.5",
    }
    assert call["call"] == {
        "id": "call_corraltest",
        "name": "exec_command",
        "input": {"cmd": "echo hello > /workspace/out.txt"},
    }
    assert result["result"]["call_id"] == "call_corraltest"
    assert "Process exited with code 0" in result["result"]["output"]
    assert result["result"]["is_error"] is False
    # The first response's token_count came after its message: it rides on the next one.
    assert done["message"] == {
        "id": "msg_b3a6428b00000004",
        "role": "assistant",
        "content": "done",
        "model": "gpt-5.5",
        "tokens_input": 9642,
        "tokens_output": 95,
    }
    assert events[0].timestamp == "2026-11-22T11:38:58.485Z"


def test_codex_synthetic_items() -> None:
    def item(payload: dict[str, Any]) -> dict[str, Any]:
        return {"timestamp": "2026-11-22T10:00:00Z", "type": "response_item", "payload": payload}

    def said(role: str, value: str) -> dict[str, Any]:
        return item(
            {"type": "message", "role": role, "content": [{"type": "input_text", "text": value}]}
        )

    parser = CodexRolloutParser()
    events = parser.feed(
        [
            said("user", "<user_instructions>\nbe nice\n</user_instructions>"),
            said("user", "# AGENTS.md instructions for /workspace\n\n<INSTRUCTIONS>x"),
            said("user", "<some_new_context>\nx\n</some_new_context>"),
            said("developer", "rules"),
            said("user", "fix the <b>bug</b>"),
            item({"type": "reasoning", "summary": []}),
            item(
                {"type": "function_call", "name": "shell", "arguments": "not json", "call_id": "c1"}
            ),
            item(
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": "Chunk ID: 1\nProcess exited with code 2\nOutput:\nboom\n",
                }
            ),
            item(
                {
                    "type": "custom_tool_call",
                    "name": "apply_patch",
                    "input": "*** Begin Patch",
                    "call_id": "c2",
                }
            ),
            item(
                {
                    "type": "custom_tool_call_output",
                    "call_id": "c2",
                    "output": json.dumps({"output": "ok", "metadata": {"exit_code": 0}}),
                }
            ),
            {"type": "event_msg", "payload": {"type": "token_count", "info": None}},
            {"type": "brand_new", "payload": {"anything": 1}},
            {"type": "event_msg", "payload": "not an object"},
        ]
    )
    assert logical(events) == [
        ("user says", "fix the <b>bug</b>"),
        ("call shell", json.dumps({"arguments": "not json"})),
        (
            "result",
            repr("Chunk ID: 1\nProcess exited with code 2\nOutput:\nboom\n") + " error=True",
        ),
        ("call apply_patch", json.dumps({"input": "*** Begin Patch"})),
        ("result", "'ok' error=False"),
    ]
    # Items without an id are deduped by content.
    assert parser.feed([said("user", "fix the <b>bug</b>")]) == []


def test_codex_state_round_trips_with_pending_tokens() -> None:
    lines = records(CODEX)
    parser = CodexRolloutParser()
    parser.feed(lines)
    state = parser.state()
    assert state["pending_tokens"] == [9797, 42]  # the last response, waiting for a message
    restored = CodexRolloutParser.from_state(json.loads(json.dumps(state)))
    assert restored.state() == state
    assert restored.feed(lines) == []
    nxt = restored.feed(
        [
            {"type": "turn_context", "payload": {"model": "gpt-next"}},
            {
                "type": "response_item",
                "payload": {
                    "type": "message",
                    "id": "m9",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "again"}],
                },
            },
        ]
    )
    assert nxt[0].payload["message"] == {
        "id": "m9",
        "role": "assistant",
        "content": "again",
        "model": "gpt-next",
        "tokens_input": 9797,
        "tokens_output": 42,
    }


# -- helpers


def test_timestamps_and_truncation_helpers() -> None:
    assert format_timestamp("2026-11-22T11:38:57.297Z") == "2026-11-22T11:38:57.297Z"
    assert format_timestamp("2026-11-22T12:38:57+01:00") == "2026-11-22T11:38:57.000Z"
    assert format_timestamp("yesterday") is None
    assert format_timestamp(None) is None
    assert truncate_output("short") == "short"
    cut = truncate_output("é" * 10, limit=5)  # never splits a character
    assert cut.startswith("éé\n[output truncated: 15 more bytes]")
