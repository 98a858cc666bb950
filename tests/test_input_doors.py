"""The API's input doors (issue 13): uploads, paths outside allowed_roots, the agent's
working directory in its start command, and the order of sessions created together.

Each test is an attack that worked against the code before it, played with real parts:
sessions run on the local backend (a host PTY) in real git worktrees, uploads are real
multipart requests, and "git never ran there" is watched with the kernel's inotify.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData

from backends.local import LocalBackend
from daemon.agents.claude import ClaudeRunner
from daemon.agents.codex import CodexRunner
from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import create_running, make_repo, wait_for
from tests.test_agents import record as agent_record

BOUNDARY = "corraldoors"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
INJECTED = "$(touch pwned)"  # a folder name that is a shell command substitution


def doors_settings(tmp_path: Path, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "sessions": {"default_backend": "local", "start_agent": False, "git_timeout": 30},
        "uploads": {"max_bytes": 64 * 1024, "max_files": 20},
    }
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    return Settings.model_validate(data)


async def start_client(aiohttp_client: Any, settings: Settings) -> Any:
    app = create_app(settings, backends={"local": LocalBackend()})
    return await aiohttp_client(app)


async def stop_client(client: Any) -> None:
    await client.app[TASKS].wait(timeout=30)
    await client.close()


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Any]:
    test_client = await start_client(aiohttp_client, doors_settings(tmp_path))
    yield test_client
    await stop_client(test_client)


def part(filename: str, content: bytes) -> bytes:
    """One multipart file part with its filename exactly as given (clients would escape it)."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode() + content


def multipart(*parts: bytes) -> bytes:
    return b"\r\n".join(parts) + f"\r\n--{BOUNDARY}--\r\n".encode()


async def error_body(response: Any, status: int, code: str) -> dict[str, Any]:
    body = await response.json()
    assert response.status == status, body
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    return dict(body["error"])


def commit_folder(repo: Path, folder: str) -> Path:
    """A committed subfolder of ``repo`` (a worktree has only what is committed)."""
    (repo / folder).mkdir()
    (repo / folder / "kept.txt").write_text("kept\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "folder"], cwd=repo, check=True)
    return repo / folder


# --- uploads -----------------------------------------------------------------------------


async def test_upload_refuses_dot_names_and_leaves_the_worktrees_git_file_alone(
    client: Any, git_repo: Path
) -> None:
    session = await create_running(client, git_repo, backend="local")
    worktree = Path(session["worktree_path"])
    git_file = (worktree / ".git").read_bytes()
    url = f"/api/sessions/{session['id']}/upload"
    for name in (".git", ".bashrc", "..", ".", ".corral-upload-0123456789abcdef"):
        response = await client.post(
            url, data=multipart(part(name, b"gitdir: /evil\n")), headers={"Content-Type": MULTIPART}
        )
        error = await error_body(response, 400, "INVALID_REQUEST")
        assert repr(name) in error["message"], error
    # A refused name anywhere in the request refuses all of it: nothing is written.
    both = multipart(part("fine.txt", b"fine"), part(".bashrc", b"evil"))
    response = await client.post(url, data=both, headers={"Content-Type": MULTIPART})
    await error_body(response, 400, "INVALID_REQUEST")
    assert (worktree / ".git").read_bytes() == git_file
    assert not (worktree / ".bashrc").exists()
    assert not (worktree / "fine.txt").exists()
    assert not list(worktree.glob(".corral-upload-*"))
    # The worktree still works for git, and a delete is not stopped by a broken .git.
    status = subprocess.run(["git", "status", "--short"], cwd=worktree, capture_output=True)
    assert status.returncode == 0, status.stderr
    assert (await client.delete(f"/api/sessions/{session['id']}")).status == 202


async def test_upload_over_a_planted_symlink_or_fifo_never_writes_through_it(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    session = await create_running(client, git_repo, backend="local")
    worktree = Path(session["worktree_path"])
    url = f"/api/sessions/{session['id']}/upload"
    bashrc = tmp_path / "home" / ".bashrc"
    bashrc.parent.mkdir()
    bashrc.write_text("the user's own\n")
    (worktree / "upload.png").symlink_to(bashrc)
    form = FormData()
    form.add_field("file", b"\x89PNG", filename="upload.png")
    response = await client.post(url, data=form)
    assert response.status == 200, await response.text()
    assert bashrc.read_text() == "the user's own\n"
    assert not (worktree / "upload.png").is_symlink()
    assert (worktree / "upload.png").read_bytes() == b"\x89PNG"

    # A FIFO (or any special file) at the name is neither opened nor replaced.
    os.mkfifo(worktree / "pipe.txt")
    form = FormData()
    form.add_field("file", b"data", filename="pipe.txt")
    error = await error_body(await client.post(url, data=form), 400, "INVALID_REQUEST")
    assert "pipe.txt" in error["message"]
    assert (worktree / "pipe.txt").is_fifo()
    assert not list(worktree.glob(".corral-upload-*"))


async def test_upload_into_a_symlinked_working_directory_is_refused(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    commit_folder(git_repo, "sub")
    session = await create_running(client, git_repo / "sub", backend="local")
    worktree = Path(session["worktree_path"])
    url = f"/api/sessions/{session['id']}/upload"
    outside = tmp_path / "outside"
    outside.mkdir()
    (worktree / "sub").rename(worktree / "sub.real")
    for target in (outside, worktree / "sub.real"):  # a link out, and a link that stays in
        (worktree / "sub").unlink(missing_ok=True)
        (worktree / "sub").symlink_to(target)
        form = FormData()
        form.add_field("file", b"data", filename="notes.txt")
        await error_body(await client.post(url, data=form), 403, "FORBIDDEN")
    assert list(outside.iterdir()) == []
    assert not (worktree / "sub.real" / "notes.txt").exists()


@pytest.mark.timeout(60)
async def test_a_folder_swapped_for_a_symlink_during_an_upload_is_not_followed(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    """The container swaps the upload folder for a link while the upload streams in."""
    commit_folder(git_repo, "sub")
    session = await create_running(client, git_repo / "sub", backend="local")
    worktree = Path(session["worktree_path"])
    folder = worktree / "sub"
    outside = tmp_path / "outside"
    outside.mkdir()
    swapped = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield part("first.txt", b"first")
        await swapped.wait()
        yield b"\r\n" + multipart(part("second.txt", b"second"))

    url = f"/api/sessions/{session['id']}/upload"
    sent = asyncio.create_task(client.post(url, data=body(), headers={"Content-Type": MULTIPART}))
    # The daemon is writing the first file once its temporary file shows in the folder.
    while not list(folder.glob(".corral-upload-*")):
        assert not sent.done(), await (await sent).text()
        await asyncio.sleep(0.01)
    folder.rename(worktree / "sub.real")
    folder.symlink_to(outside)
    swapped.set()
    response = await sent
    assert list(outside.iterdir()) == []
    assert response.status == 200, await response.text()
    assert (worktree / "sub.real" / "first.txt").read_bytes() == b"first"
    assert (worktree / "sub.real" / "second.txt").read_bytes() == b"second"


# --- allowed_roots -----------------------------------------------------------------------


class OpenWatch:
    """Every file opened in the watched folders, from the kernel (inotify): proof that no
    process, git included, read anything there."""

    IN_OPEN = 0x20
    IN_ACCESS = 0x01

    def __init__(self, folders: list[Path]) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        for folder in folders:
            mask = self.IN_OPEN | self.IN_ACCESS
            assert self.libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) >= 0

    def opened(self) -> list[str]:
        names = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        offset = 0
        while offset < len(data):
            _, _, _, size = struct.unpack_from("iIII", data, offset)
            raw = data[offset + 16 : offset + 16 + size]
            names.append(raw.rstrip(b"\x00").decode() or ".")
            offset += 16 + size
        return names

    def close(self) -> None:
        os.close(self.fd)


def hostile_repo(path: Path, marker: Path) -> Path:
    """A repository whose hook and fsmonitor would leave ``marker`` if git ran in it."""
    make_repo(path)
    hook = path / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    subprocess.run(["git", "config", "core.fsmonitor", f"touch {marker}; :"], cwd=path, check=True)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    marker = tmp_path / "git-ran"
    paths = {
        "allowed": allowed,
        "marker": marker,
        "inside_repo": make_repo(allowed / "repo"),
        "repo": hostile_repo(outside / "repo", marker),
        "plain": outside / "plain",
        "file": outside / "file.txt",
        "missing": outside / "missing",
        "bare": outside / "bare.git",
        "link": allowed / "link-out",  # inside the roots by name, outside once resolved
    }
    paths["plain"].mkdir()
    paths["file"].write_text("x")
    subprocess.run(["git", "init", "-q", "--bare", str(paths["bare"])], check=True)
    paths["link"].symlink_to(paths["repo"])
    return paths


@pytest.fixture
async def rooted(aiohttp_client: Any, tmp_path: Path, roots: dict[str, Path]) -> Any:
    settings = doors_settings(tmp_path, server={"allowed_roots": [str(roots["allowed"])]})
    test_client = await start_client(aiohttp_client, settings)
    yield test_client
    await stop_client(test_client)


OUTSIDE = ("repo", "plain", "file", "missing", "bare", "link")


async def test_paths_outside_allowed_roots_get_one_answer_and_git_never_runs_there(
    rooted: Any, roots: dict[str, Path]
) -> None:
    repo = roots["repo"]
    watch = OpenWatch([repo, repo / ".git", roots["plain"], roots["bare"]])
    try:
        answers = set()
        for key in OUTSIDE:
            given = str(roots[key])
            response = await rooted.post(
                "/api/sessions", json={"repo_path": given, "prompt": "x", "backend": "local"}
            )
            error = await error_body(response, 403, "FORBIDDEN")
            answers.add(repr(error).replace(given, "<path>"))
            # As the second of several repositories: refused before git runs in the first.
            body = {
                "prompt": "x",
                "backend": "local",
                "repositories": [
                    {"path": str(roots["inside_repo"]), "mount_name": "a"},
                    {"path": given, "mount_name": "b"},
                ],
            }
            error = await error_body(
                await rooted.post("/api/sessions", json=body), 403, "FORBIDDEN"
            )
            answers.add(repr(error).replace(given, "<path>"))
        assert len(answers) == 2, answers  # one for repo_path, one for repositories.1.path
        assert watch.opened() == []
    finally:
        watch.close()
    assert not roots["marker"].exists()
    listed = await (await rooted.get("/api/sessions?include_archived=true")).json()
    assert listed["total"] == 0


async def test_image_paths_outside_allowed_roots_get_one_answer(
    rooted: Any, roots: dict[str, Path]
) -> None:
    answers = set()
    watch = OpenWatch([roots["plain"], roots["file"].parent])
    try:
        for key in OUTSIDE:
            given = str(roots[key])
            body = {
                "repo_path": str(roots["inside_repo"]),
                "prompt": "x",
                "backend": "local",
                "image_paths": [given],
            }
            error = await error_body(
                await rooted.post("/api/sessions", json=body), 400, "INVALID_REQUEST"
            )
            answers.add(repr(error).replace(given, "<path>"))
        assert len(answers) == 1, answers
        assert watch.opened() == []
    finally:
        watch.close()


async def test_browse_lists_links_out_of_the_roots_without_looking_behind_them(
    rooted: Any, roots: dict[str, Path]
) -> None:
    folder = roots["allowed"] / "links"
    folder.mkdir()
    for key in ("repo", "plain", "file", "missing", "bare"):
        (folder / key).symlink_to(roots[key])
    (folder / "inside").symlink_to(roots["inside_repo"])
    response = await rooted.post("/api/browse-directory", json={"path": str(folder)})
    assert response.status == 200, await response.text()
    entries = {e["name"]: e for e in (await response.json())["entries"]}
    for key in ("repo", "plain", "file", "missing", "bare"):
        assert (entries[key]["is_dir"], entries[key]["is_git_repo"]) == (False, False), key
    assert (entries["inside"]["is_dir"], entries["inside"]["is_git_repo"]) == (True, True)
    answers = set()
    for key in OUTSIDE:
        given = str(roots[key])
        response = await rooted.post("/api/browse-directory", json={"path": given})
        answers.add(repr(await error_body(response, 403, "FORBIDDEN")).replace(given, "<path>"))
    assert len(answers) == 1, answers


# --- the agent's working directory in its start command ----------------------------------


def fake_cli(folder: Path, name: str) -> Path:
    """A stand-in for the agent CLI that records the arguments it was started with."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder}/{name}.args"\n')
    script.chmod(0o755)
    return folder / f"{name}.args"


@pytest.mark.parametrize("runner_class", [ClaudeRunner, CodexRunner])
def test_the_start_command_never_runs_a_folder_name(runner_class: Any, tmp_path: Path) -> None:
    runner = runner_class(Settings.model_validate({}), environ={})
    record = agent_record(agent=runner.name)
    working_dir = f"/workspace/{INJECTED}"
    launch = runner.launch(record, working_dir, str(tmp_path / "home"))
    args = fake_cli(tmp_path / "bin", runner.name)
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**launch.env, "HOME": str(home), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}

    def start() -> list[str]:
        subprocess.run(launch.command, cwd=cwd, env=env, check=True, timeout=30)
        return args.read_text().splitlines()

    first = start()
    assert first[-1] == record.prompt
    assert list(cwd.iterdir()) == []
    assert not list(tmp_path.rglob("pwned"))
    if runner.name == "claude":
        assert first[:2] == ["--session-id", record.id]
        transcript = home / ".claude" / "projects" / working_dir.replace("/", "-")
        transcript.mkdir(parents=True)
        (transcript / f"{record.id}.jsonl").write_text("{}\n")
        assert start()[:2] == ["--resume", record.id]  # its own transcript is still found
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.timeout(60)
async def test_a_repository_folder_named_like_a_command_runs_nothing_on_the_host(
    aiohttp_client: Any, tmp_path: Path, git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = commit_folder(git_repo, INJECTED)
    args = fake_cli(tmp_path / "bin", "claude")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    settings = doors_settings(tmp_path, sessions={"start_agent": True})
    client = await start_client(aiohttp_client, settings)
    try:
        session = await create_running(client, folder, backend="local", agent="claude")
        # The agent's start command has run to its end once the stand-in CLI has its args.
        while not args.exists() or not args.read_text().endswith("do it\n"):
            await asyncio.sleep(0.05)
        assert args.read_text().splitlines()[:2] == ["--session-id", session["id"]]
        assert not list(tmp_path.rglob("pwned"))
    finally:
        await stop_client(client)


# --- order ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_sessions_created_in_the_same_second_list_newest_first(
    aiohttp_client: Any, tmp_path: Path, git_repo: Path
) -> None:
    settings = doors_settings(tmp_path)
    client = await start_client(aiohttp_client, settings)
    made: list[str] = []
    try:
        for index in range(8):
            response = await client.post(
                "/api/sessions",
                json={
                    "repo_path": str(git_repo),
                    "prompt": "x",
                    "backend": "local",
                    "name": f"order-{index}",
                },
            )
            assert response.status == 201, await response.text()
            made.append((await response.json())["session"]["id"])
        for session_id in made:
            await wait_for(client, session_id, lambda s: s["status"] != "creating")
        listed = (await (await client.get("/api/sessions")).json())["sessions"]
        assert [s["id"] for s in listed] == made[::-1]
        stamps = [s["created_at"] for s in listed]
        assert all(s.endswith("Z") for s in stamps)
        assert stamps == sorted(stamps, reverse=True)  # as text too: the web UI sorts so
    finally:
        await stop_client(client)
    # The same order after a restart, read back from the store.
    again = await start_client(aiohttp_client, settings)
    try:
        listed = (await (await again.get("/api/sessions")).json())["sessions"]
        assert [s["id"] for s in listed] == made[::-1]
    finally:
        await stop_client(again)
