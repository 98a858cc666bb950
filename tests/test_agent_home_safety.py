"""The agent home is the container's $HOME: nothing planted there turns a daemon write or
read against the host (issue 13, items 3 and 4).

Writes (``.claude.json``, settings, Codex's config, attachments) replace a symlink instead
of writing through it; reads (hooks, transcripts, rollouts) take only regular files, a
bounded number of bytes at a time, and report a hostile file instead of reading it. Real
files throughout, and real containers where the attack is made from inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.agents.claude import ClaudeRunner
from daemon.agents.claude_transcript import ClaudeTranscriptParser
from daemon.agents.codex import CodexRunner
from daemon.agents.codex_rollout import ROLLOUT_GLOB, CodexRolloutParser
from daemon.agents.runner import ATTACHMENTS_DIR, HOOKS_FILE, copy_attachments
from daemon.agents.transcript import TranscriptTailer, newest_file_sync
from daemon.core import homefs
from daemon.core.session import SessionRecord
from daemon.settings import Settings
from tests.conftest import ROOT, create_running, wait_for

VICTIM_TEXT = "ssh-ed25519 AAAA the user's own key\n"
CAP = 1024 * 1024  # the tailers' bytes-per-read and line-length cap (their defaults)


def record(agent: str = "claude") -> SessionRecord:
    return SessionRecord.model_validate(
        {
            "id": "0f0e0d0c-0000-4000-8000-000000000001",
            "name": "n",
            "backend": "docker",
            "agent": agent,
            "status": "creating",
            "prompt": "p",
            "created_at": "2026-01-28T12:30:00Z",
            "updated_at": "2026-01-28T12:30:00Z",
            "repositories": [],
        }
    )


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host file outside every agent home (say ~/.ssh/authorized_keys)."""
    path = tmp_path / "host" / "authorized_keys"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    return path


def unit_settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"data_dir": str(tmp_path / "data")})


# -- writes into the home ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "planted", "written"),
    [
        ("claude", ".claude.json", "hasCompletedOnboarding"),
        ("claude", ".claude/settings.json", "hooks.jsonl"),
        ("codex", ".codex/config.toml", "sandbox_mode"),
        ("codex", ".codex/hooks.json", "hooks.jsonl"),
    ],
)
def test_prepare_home_replaces_a_symlinked_file_and_leaves_the_host_file(
    tmp_path: Path, victim: Path, agent: str, planted: str, written: str
) -> None:
    home = tmp_path / "home"
    (home / planted).parent.mkdir(parents=True)
    (home / planted).symlink_to(victim)
    runner = ClaudeRunner if agent == "claude" else CodexRunner
    runner(unit_settings(tmp_path), environ={}).prepare_home(home, record(agent), "/workspace")
    assert victim.read_text() == VICTIM_TEXT
    assert stat.S_ISREG((home / planted).lstat().st_mode)
    assert written in (home / planted).read_text()


@pytest.mark.parametrize(("agent", "directory"), [("claude", ".claude"), ("codex", ".codex")])
def test_prepare_home_replaces_a_symlinked_directory_and_writes_nothing_outside(
    tmp_path: Path, agent: str, directory: str
) -> None:
    home, outside = tmp_path / "home", tmp_path / "host-dir"
    home.mkdir()
    outside.mkdir()
    (home / directory).symlink_to(outside)
    runner = ClaudeRunner if agent == "claude" else CodexRunner
    runner(unit_settings(tmp_path), environ={}).prepare_home(home, record(agent), "/workspace")
    assert list(outside.iterdir()) == []
    assert stat.S_ISDIR((home / directory).lstat().st_mode)
    assert (home / directory / ("settings.json" if agent == "claude" else "hooks.json")).is_file()


def test_deeply_nested_claude_json_is_replaced_not_fatal(tmp_path: Path) -> None:
    """json.loads of hostile text raises RecursionError, which is no JSONDecodeError."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text("[" * 100_000 + "]" * 100_000)
    ClaudeRunner(unit_settings(tmp_path), environ={}).prepare_home(home, record(), "/workspace")
    assert json.loads((home / ".claude.json").read_text())["hasCompletedOnboarding"] is True


def test_a_fifo_for_claude_json_is_not_read(tmp_path: Path) -> None:
    """Reading a FIFO with no writer blocks forever: the daemon must not even try."""
    home = tmp_path / "home"
    home.mkdir()
    os.mkfifo(home / ".claude.json")
    try:
        ClaudeRunner(unit_settings(tmp_path), environ={}).prepare_home(home, record(), "/workspace")
    finally:
        release_fifo_readers(home / ".claude.json")
    assert stat.S_ISREG((home / ".claude.json").lstat().st_mode)


def test_attachments_go_into_the_home_not_through_a_symlinked_directory(
    tmp_path: Path, victim: Path
) -> None:
    home, outside = tmp_path / "home", tmp_path / "host-dir"
    (home / ".corral").mkdir(parents=True)
    outside.mkdir()
    (home / ATTACHMENTS_DIR).symlink_to(outside)
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"\x89PNG shot")
    copy_attachments(home, [str(shot)])
    assert list(outside.iterdir()) == []
    assert (home / ATTACHMENTS_DIR / "1-shot.png").read_bytes() == b"\x89PNG shot"
    # A copy replaced by a link to a host file is put back, the host file left alone.
    (home / ATTACHMENTS_DIR / "1-shot.png").unlink()
    (home / ATTACHMENTS_DIR / "1-shot.png").symlink_to(victim)
    copy_attachments(home, [str(shot)])
    assert victim.read_text() == VICTIM_TEXT
    assert (home / ATTACHMENTS_DIR / "1-shot.png").read_bytes() == b"\x89PNG shot"


# -- reads from the home: the tailers ----------------------------------------------------


def release_fifo_readers(fifo: Path) -> None:
    """Open the FIFO for writing and close it, so a reader blocked on it (old code) ends."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def user_line(uuid: str, text: str, parent: str | None = None) -> str:
    record_ = {
        "type": "user",
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": "2026-01-28T12:30:00Z",
        "message": {"role": "user", "content": text},
    }
    return json.dumps(record_) + "\n"


async def test_hooks_as_a_symlink_to_dev_zero_are_refused_with_nothing_read(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / ".corral").mkdir(parents=True)
    (home / HOOKS_FILE).symlink_to("/dev/zero")
    tailer = TranscriptTailer(home / HOOKS_FILE, root=home)
    for _ in range(3):
        assert await tailer.read_new() == []
    assert tailer.bytes_read == 0
    assert tailer.hostile is not None
    assert tailer.hostile.path == HOOKS_FILE
    assert "symlink" in tailer.hostile.reason


async def test_hooks_as_a_fifo_do_not_block_the_reader(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".corral").mkdir(parents=True)
    os.mkfifo(home / HOOKS_FILE)
    tailer = TranscriptTailer(home / HOOKS_FILE, root=home)
    try:
        # Old code: open() blocks its worker thread until a writer comes; the wait fails.
        assert await asyncio.wait_for(tailer.read_new(), timeout=10) == []
    finally:
        release_fifo_readers(home / HOOKS_FILE)
    assert tailer.bytes_read == 0
    assert tailer.hostile is not None
    assert "FIFO" in tailer.hostile.reason


async def test_a_transcript_reached_through_a_symlinked_directory_is_not_read(
    tmp_path: Path,
) -> None:
    home, outside = tmp_path / "home", tmp_path / "host-transcripts"
    outside.mkdir()
    (outside / "t.jsonl").write_text(user_line("u1", "the host's own transcript"))
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "projects").symlink_to(outside)
    tailer = TranscriptTailer(home / ".claude" / "projects" / "t.jsonl", root=home)
    assert await tailer.read_new() == []
    assert tailer.bytes_read == 0
    assert tailer.hostile is not None
    assert tailer.hostile.path == ".claude/projects"


async def test_a_five_mib_line_is_skipped_in_bounded_reads_and_the_next_line_parsed(
    tmp_path: Path,
) -> None:
    target = tmp_path / "t.jsonl"
    huge = user_line("big", "x" * (5 * 1024 * 1024))  # valid JSON: old code returned it
    target.write_text(user_line("u1", "before") + huge + user_line("u2", "after", "u1"))
    tailer = TranscriptTailer(target)
    parser = ClaudeTranscriptParser()
    texts: list[str] = []
    with capture_logs() as logs:
        for _ in range(20):  # bounded: each call reads at most the cap
            before = tailer.bytes_read
            texts += [e.payload["message"]["content"] for e in parser.feed(await tailer.read_new())]
            assert tailer.bytes_read - before <= CAP + 1
            if tailer.offset == target.stat().st_size:
                break
    assert texts == ["before", "after"]
    skipped = [e for e in logs if e["event"] == "transcript_line_skipped"]
    assert [(e["reason"], e["length"]) for e in skipped] == [("too_long", len(huge))]


async def test_a_file_of_zeros_without_newlines_is_never_held_whole(tmp_path: Path) -> None:
    """What /dev/zero would be as a regular file: each read stays under the cap."""
    target = tmp_path / "t.jsonl"
    with open(target, "wb") as f:
        f.truncate(20 * 1024 * 1024)  # sparse: 20 MiB of zeros, no newline
    tailer = TranscriptTailer(target)
    tracemalloc.start()
    try:
        for _ in range(5):
            before = tailer.bytes_read
            assert await tailer.read_new() == []
            assert tailer.bytes_read - before <= CAP + 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Old code held the whole 20 MiB (more, while joining its chunks).
    assert peak < 4 * CAP
    assert tailer.offset == 0  # the line's start, where a restarted daemon resumes
    with open(target, "ab") as f:
        f.write(b"\n" + user_line("u1", "after the zeros").encode())
    got: list[dict[str, Any]] = []
    for _ in range(30):
        got += await tailer.read_new()
        if got:
            break
    assert [r["uuid"] for r in got] == ["u1"]


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deeply_nested_transcript_line_does_not_kill_the_tailer(tmp_path: Path) -> None:
    """A record Python's decoder still takes, too deep for the recursive code after it."""
    target = tmp_path / "t.jsonl"
    deep = {
        "type": "assistant",
        "uuid": "a1",
        "parentUuid": "u1",
        "message": {
            "id": "m1",
            "content": [{"type": "tool_use", "id": "c1", "name": "Write", "input": nested(600)}],
        },
    }
    target.write_text(
        user_line("u1", "first") + json.dumps(deep) + "\n" + user_line("u2", "second", "u1")
    )
    tailer = TranscriptTailer(target)
    parser = ClaudeTranscriptParser()
    with capture_logs() as logs:
        events = parser.feed(await tailer.read_new())
    assert [e.payload["message"]["content"] for e in events] == ["first", "second"]
    assert [e["reason"] for e in logs if e["event"] == "transcript_line_skipped"] == ["not_json"]


def test_codex_arguments_nested_too_deeply_are_passed_as_text() -> None:
    """The arguments string is parsed again: hostile text there must not raise either."""
    raw = "[" * 50_000 + "]" * 50_000
    events = CodexRolloutParser().feed(
        [
            {
                "type": "response_item",
                "payload": {
                    "type": "function_call",
                    "name": "f",
                    "call_id": "c1",
                    "arguments": raw,
                },
            },
            {
                "type": "response_item",
                "payload": {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": '{"output": ' + "[" * 50_000 + "]" * 50_000 + "}",
                },
            },
        ]
    )
    assert [e.type for e in events] == ["tool_call", "tool_result"]
    assert events[0].payload["call"]["input"]["arguments"].startswith("[[[")


def test_codex_rollout_walk_does_not_follow_a_symlinked_directory(tmp_path: Path) -> None:
    codex, outside = tmp_path / "home" / ".codex", tmp_path / "elsewhere"
    (codex / "sessions").mkdir(parents=True)
    day = outside / "11" / "22"
    day.mkdir(parents=True)
    outside_rollout = day / "rollout-2026-11-22T10-00-00-a.jsonl"
    outside_rollout.write_text("{}\n")
    (codex / "sessions" / "2026").symlink_to(outside)
    assert newest_file_sync(codex, ROLLOUT_GLOB) is None
    # A real one beside it is found.
    real = codex / "sessions" / "2025" / "01" / "02"
    real.mkdir(parents=True)
    (real / "rollout-2025-01-02T10-00-00-b.jsonl").write_text("{}\n")
    assert newest_file_sync(codex, ROLLOUT_GLOB) == real / "rollout-2025-01-02T10-00-00-b.jsonl"
    # Nor is a symlinked rollout file itself, nor ``.codex`` as a link from the home.
    (real / "rollout-2025-01-02T11-00-00-c.jsonl").symlink_to(outside_rollout)
    assert newest_file_sync(codex, ROLLOUT_GLOB) == real / "rollout-2025-01-02T10-00-00-b.jsonl"
    other_home = tmp_path / "other"
    other_home.mkdir()
    (other_home / ".codex").symlink_to(codex)
    assert newest_file_sync(other_home, f".codex/{ROLLOUT_GLOB}") is None


def test_homefs_read_is_capped_and_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 101)
    assert homefs.read_file(tmp_path, "big", limit=101) == b"x" * 101
    with pytest.raises(homefs.HostileFile, match="larger than 100 bytes"):
        homefs.read_file(tmp_path, "big", limit=100)
    (tmp_path / "d").mkdir()
    with pytest.raises(homefs.HostileFile, match="a directory"):
        homefs.read_file(tmp_path, "d")
    with pytest.raises(homefs.HostileFile, match="a directory where a file must be"):
        homefs.write_file(tmp_path, "d", b"x")
    with pytest.raises(ValueError, match="not a path under the root"):
        homefs.write_file(tmp_path, "a/../../x", b"x")


# -- real containers ---------------------------------------------------------------------

FAKE_AGENT = (
    "#!/bin/sh\n# Stands in for the agent CLI: a shell on the session's TTY.\nexec /bin/sh\n"
)


@pytest.fixture(scope="session")
def fake_agent_image(busybox_image: str) -> str:
    """The busybox image with ``claude`` and ``codex`` as a shell, so a session started
    with ``start_agent`` keeps running (built once per machine, reused by hash tag)."""
    digest = hashlib.sha256(f"{busybox_image}\n{FAKE_AGENT}".encode()).hexdigest()[:12]
    tag = f"corral-test-fake-agent:{digest}"
    found = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if found.returncode == 0:
        return tag
    context = ROOT / ".cache" / f"fake-agent-{digest}"
    context.mkdir(parents=True, exist_ok=True)
    for name in ("claude", "codex"):
        (context / name).write_text(FAKE_AGENT)
        (context / name).chmod(0o755)
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY claude codex /bin/\n")
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        check=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return tag


@pytest.fixture
def agent_settings(settings: Settings, fake_agent_image: str) -> Settings:
    settings.docker.default_image = fake_agent_image
    settings.sessions.start_agent = True
    settings.reconcile.auto_recover = False  # nothing but the test recreates
    return settings


def in_container(container_id: str, script: str) -> None:
    subprocess.run(
        ["docker", "exec", container_id, "/bin/sh", "-c", script], check=True, capture_output=True
    )


@pytest.mark.docker
async def test_symlinks_planted_in_the_container_survive_a_recreate_harmlessly(
    agent_settings: Settings, client: Any, git_repo: Path, victim: Path, tmp_path: Path
) -> None:
    host_dir = tmp_path / "host-claude"
    host_dir.mkdir()
    session = await create_running(client, git_repo)
    assert session["status"] == "running", session
    sid = session["id"]
    # The attack, from inside: the daemon's next write to these would land on the host.
    in_container(
        session["container_id"],
        f'ln -sf {victim} "$HOME/.claude.json" && rm -rf "$HOME/.claude" '
        f'&& ln -s {host_dir} "$HOME/.claude"',
    )
    home = agent_settings.data_dir / "sessions" / sid / "home"
    assert (home / ".claude.json").is_symlink()

    response = await client.post(f"/api/sessions/{sid}/recreate")
    assert response.status == 200, await response.text()

    assert victim.read_text() == VICTIM_TEXT
    assert list(host_dir.iterdir()) == []
    assert stat.S_ISREG((home / ".claude.json").lstat().st_mode)
    assert json.loads((home / ".claude.json").read_text())["hasCompletedOnboarding"] is True
    assert (home / ".claude" / "settings.json").is_file()
    # And the session works: running in a new container that sees the repaired home.
    recreated = await wait_for(client, sid, lambda s: s["status"] == "running")
    assert recreated["container_id"] != session["container_id"]
    health = await (await client.get(f"/api/sessions/{sid}/health")).json()
    assert health["health"] == "healthy", health
    in_container(recreated["container_id"], 'test -f "$HOME/.claude.json"')


@pytest.mark.docker
async def test_attachments_are_read_from_the_users_disk_once_at_create(
    agent_settings: Settings, client: Any, git_repo: Path, victim: Path, tmp_path: Path
) -> None:
    """An attached file may live where a container writes (an upload in some worktree):
    swapped later for a link to a host secret, a re-copy at recreate would hand the secret
    to the agent. The files are copied once, when the session is made."""
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"\x89PNG shot")
    session = await create_running(client, git_repo, image_paths=[str(shot)])
    assert session["status"] == "running", session
    sid = session["id"]
    copy = agent_settings.data_dir / "sessions" / sid / "home" / ATTACHMENTS_DIR / "1-shot.png"
    assert copy.read_bytes() == b"\x89PNG shot"
    shot.unlink()
    shot.symlink_to(victim)
    in_container(session["container_id"], f'rm "$HOME/{ATTACHMENTS_DIR}/1-shot.png"')

    response = await client.post(f"/api/sessions/{sid}/recreate")
    assert response.status == 200, await response.text()

    await wait_for(client, sid, lambda s: s["status"] == "running")
    assert not copy.exists()


async def wait_health(
    client: Any, session_id: str, predicate: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    health: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        health = await (await client.get(f"/api/sessions/{session_id}/health")).json()
        if predicate(health):
            return health
        await asyncio.sleep(0.1)
    raise AssertionError(f"health of {session_id} did not change; last: {health}")


@pytest.mark.docker
async def test_hostile_hook_files_are_reported_and_every_other_session_served(
    agent_settings: Settings, client: Any, git_repo: Path
) -> None:
    zero = await create_running(client, git_repo)
    fifo = await create_running(client, git_repo)
    fine = await create_running(client, git_repo)
    assert {s["status"] for s in (zero, fifo, fine)} == {"running"}
    in_container(zero["container_id"], f'ln -sf /dev/zero "$HOME/{HOOKS_FILE}"')
    in_container(fifo["container_id"], f'mkfifo "$HOME/{HOOKS_FILE}"')
    fifo_path = agent_settings.data_dir / "sessions" / fifo["id"] / "home" / HOOKS_FILE
    try:
        with capture_logs() as logs:
            for hostile, what in ((zero, "symlink"), (fifo, "FIFO")):
                health = await wait_health(
                    client, hostile["id"], lambda h: "hostile_files" in h["details"]
                )
                assert what in health["details"]["hostile_files"][HOOKS_FILE]
                assert health["health"] == "healthy"  # the agent itself still runs
            # Another session's hook is still read, and the daemon answers.
            in_container(
                fine["container_id"],
                f'echo \'{{"hook_event_name": "Stop"}}\' >> "$HOME/{HOOKS_FILE}"',
            )
            await wait_for(client, fine["id"], lambda s: s["agent_state"] == "waiting_input")
            assert (await client.get("/health")).status == 200
            # Reported once per file, not once per poll (several polls have run by now).
            await wait_for(client, fine["id"], lambda s: s["agent_state"] == "waiting_input")
        refused = [e for e in logs if e["event"] == "agent_file_refused"]
        assert sorted(e["session_id"] for e in refused) == sorted([zero["id"], fifo["id"]])
        # Made a plain file again, the report goes.
        in_container(zero["container_id"], f'rm "$HOME/{HOOKS_FILE}" && touch "$HOME/{HOOKS_FILE}"')
        await wait_health(client, zero["id"], lambda h: "hostile_files" not in h["details"])
    finally:
        release_fifo_readers(fifo_path)
