"""A session's diff, its commits and ``session_changes`` events: real repositories, local
sessions (no engine), the daemon's REST API and event socket."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import create_running, make_repo


def git(cwd: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


async def session_on(client: Any, repo: Path, **body: Any) -> dict[str, Any]:
    session = await create_running(client, repo, backend="local", **body)
    assert session["status"] == "running", session
    return session


def files_of(answer: dict[str, Any], index: int = 0) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in answer["repositories"][index]["files"]}


async def get_json(client: Any, url: str, status: int = 200) -> dict[str, Any]:
    response = await client.get(url)
    body = await response.json()
    assert response.status == status, body
    return dict(body)


@pytest.fixture
def rich_repo(tmp_path: Path) -> Path:
    """A base with files to modify, delete, rename, chmod and make binary."""
    repo = make_repo(tmp_path / "repo")
    (repo / "modify.txt").write_text("one\ntwo\nthree\n")
    (repo / "delete.txt").write_text("gone soon\n")
    (repo / "rename.txt").write_text("".join(f"line {i}\n" for i in range(20)))
    (repo / "script.sh").write_text("echo hi\n")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base files")
    return repo


def change_everything(worktree: Path) -> None:
    (worktree / "modify.txt").write_text("one\nTWO\nthree\nfour\n")
    (worktree / "delete.txt").unlink()
    (worktree / "rename.txt").rename(worktree / "renamed.txt")
    (worktree / "script.sh").chmod(0o755)
    (worktree / "added.txt").write_text("a\nb\n")
    (worktree / "image.bin").write_bytes(b"\x00\x01\x02binary\x00" * 10)


async def test_committed_changes_of_every_kind(client: Any, rich_repo: Path) -> None:
    session = await session_on(client, rich_repo)
    worktree = Path(session["worktree_path"])
    change_everything(worktree)
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", "everything")
    answer = await get_json(client, f"/api/sessions/{session['id']}/diff?include=committed")
    repo = answer["repositories"][0]
    assert repo["merge_base"] == git(rich_repo, "rev-parse", "main")
    assert repo["head_commit"] == git(worktree, "rev-parse", "HEAD")
    assert repo["includes_uncommitted"] is False
    files = files_of(answer)
    assert files["modify.txt"]["status"] == "modified"
    assert (files["modify.txt"]["additions"], files["modify.txt"]["deletions"]) == (2, 1)
    assert files["delete.txt"]["status"] == "deleted"
    assert files["renamed.txt"]["status"] == "renamed"
    assert files["renamed.txt"]["old_path"] == "rename.txt"
    assert files["script.sh"]["old_mode"] == "100644"
    assert files["script.sh"]["new_mode"] == "100755"
    assert files["added.txt"] == {**files["added.txt"], "status": "added", "additions": 2}
    assert files["image.bin"]["binary"] is True
    assert files["image.bin"]["additions"] == 0
    assert answer["totals"]["files"] == 6
    assert answer["totals"] == repo["totals"]
    assert repo["next_offset"] is None
    # Nothing uncommitted: the three views agree.
    uncommitted = await get_json(client, f"/api/sessions/{session['id']}/diff?include=uncommitted")
    assert uncommitted["totals"]["files"] == 0
    everything = await get_json(client, f"/api/sessions/{session['id']}/diff")
    assert files_of(everything) == files


async def test_uncommitted_and_untracked_without_touching_the_session_index(
    client: Any, rich_repo: Path
) -> None:
    session = await session_on(client, rich_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    (worktree / "committed.txt").write_text("c\n")
    git(worktree, "add", "committed.txt")
    git(worktree, "commit", "-q", "-m", "one commit")
    change_everything(worktree)
    (worktree / "ignored.log").write_text("not counted\n")
    git(worktree, "add", "added.txt")  # staged in the session's index, the rest not
    status_before = git(worktree, "status", "--porcelain")
    index = Path(git(worktree, "rev-parse", "--git-path", "index"))
    index = index if index.is_absolute() else worktree / index
    index_before = index.read_bytes()

    uncommitted = files_of(await get_json(client, f"/api/sessions/{sid}/diff?include=uncommitted"))
    assert set(uncommitted) == {"modify.txt", "delete.txt", "renamed.txt", "script.sh",
                                "added.txt", "image.bin"}  # fmt: skip
    assert uncommitted["renamed.txt"]["status"] == "renamed"
    assert uncommitted["added.txt"]["status"] == "added"
    assert uncommitted["image.bin"] == {**uncommitted["image.bin"], "status": "added",
                                        "binary": True}  # fmt: skip
    assert "ignored.log" not in uncommitted
    assert "committed.txt" not in uncommitted

    whole = await get_json(client, f"/api/sessions/{sid}/diff?include=all")
    assert set(files_of(whole)) == set(uncommitted) | {"committed.txt"}
    assert whole["repositories"][0]["includes_uncommitted"] is True
    committed = files_of(await get_json(client, f"/api/sessions/{sid}/diff?include=committed"))
    assert set(committed) == {"committed.txt"}

    assert index.read_bytes() == index_before
    assert git(worktree, "status", "--porcelain") == status_before


async def test_the_session_index_cannot_hide_an_uncommitted_change(
    client: Any, git_repo: Path
) -> None:
    """The session's index is the container's: flags or stat data planted there (here
    assume-unchanged and skip-worktree, which make git skip a file) must not hide a change
    from the review."""
    session = await session_on(client, git_repo)
    worktree = Path(session["worktree_path"])
    tracked = sorted(git(worktree, "ls-files").split())
    assert tracked, "the test repository has tracked files"
    hidden = tracked[0]
    (worktree / hidden).write_text("changed behind the index's back\n")
    git(worktree, "update-index", "--assume-unchanged", hidden)
    assert git(worktree, "status", "--porcelain") == ""  # git itself is fooled
    for include in ("uncommitted", "all"):
        files = files_of(
            await get_json(client, f"/api/sessions/{session['id']}/diff?include={include}")
        )
        assert hidden in files, (include, files)
    git(worktree, "update-index", "--no-assume-unchanged", "--skip-worktree", hidden)
    files = files_of(await get_json(client, f"/api/sessions/{session['id']}/diff"))
    assert hidden in files


async def test_paging_and_the_patch_of_one_file(client: Any, git_repo: Path) -> None:
    session = await session_on(client, git_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    for i in range(7):
        (worktree / f"file{i}.txt").write_text(f"content {i}\n")
    first = await get_json(client, f"/api/sessions/{sid}/diff?limit=3")
    repo = first["repositories"][0]
    assert len(repo["files"]) == 3
    assert repo["next_offset"] == 3
    assert first["totals"]["files"] == 7
    seen = [f["path"] for f in repo["files"]]
    offset = repo["next_offset"]
    while offset is not None:
        page = await get_json(client, f"/api/sessions/{sid}/diff?limit=3&offset={offset}")
        seen += [f["path"] for f in page["repositories"][0]["files"]]
        offset = page["repositories"][0]["next_offset"]
    assert seen == [f"file{i}.txt" for i in range(7)]

    response = await client.get(f"/api/sessions/{sid}/diff", params={"path": "file3.txt"})
    assert response.status == 200
    assert response.content_type == "text/x-diff"
    text = await response.text()
    assert "+content 3" in text
    assert "file4.txt" not in text

    whole = await client.get(f"/api/sessions/{sid}/diff?format=patch")
    assert whole.content_type == "text/x-diff"
    text = await whole.text()
    assert all(f"+content {i}" in text for i in range(7))


async def test_bad_paths_and_queries(client: Any, git_repo: Path) -> None:
    session = await session_on(client, git_repo)
    sid = session["id"]
    (Path(session["worktree_path"]) / "real.txt").write_text("x\n")
    for path in ("../../etc/passwd", "/etc/passwd", "README.md", "nope.txt", "real.txt/..",
                 "x" * 513):  # fmt: skip
        body = await get_json(client, f"/api/sessions/{sid}/diff?path={path}", status=400)
        assert body["error"]["code"] == "INVALID_REQUEST"
    for query in ("include=some", "limit=0", "limit=5001", "offset=-1", "format=zip", "what=1",
                  "repository=nosuch"):  # fmt: skip
        body = await get_json(client, f"/api/sessions/{sid}/diff?{query}", status=400)
        assert body["error"]["code"] == "INVALID_REQUEST", query
    body = await get_json(client, f"/api/sessions/{sid}/commits?repository=nosuch", status=400)
    assert body["error"]["code"] == "INVALID_REQUEST"
    for url in ("/api/sessions/nope/diff", "/api/sessions/nope/commits"):
        body = await get_json(client, url, status=404)
        assert body["error"]["code"] == "SESSION_NOT_FOUND"


async def test_a_huge_file_is_summarised_and_the_whole_patch_bounded(
    client: Any, settings: Any, daemon: Any, git_repo: Path
) -> None:
    settings.changes.max_patch_bytes = 4096
    settings.changes.max_total_patch_bytes = 8192
    client = await daemon(settings)
    session = await session_on(client, git_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    (worktree / "huge.txt").write_text("".join(f"line {i}\n" for i in range(2000)))
    (worktree / "small.txt").write_text("small\n")
    files = files_of(await get_json(client, f"/api/sessions/{sid}/diff"))
    assert files["huge.txt"]["summarised"] is True
    assert files["huge.txt"]["additions"] == 2000
    assert files["small.txt"]["summarised"] is False
    body = await get_json(client, f"/api/sessions/{sid}/diff?path=huge.txt", status=413)
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "max_patch_bytes" in body["error"]["message"]
    body = await get_json(client, f"/api/sessions/{sid}/diff?format=patch", status=413)
    assert "max_total_patch_bytes" in body["error"]["message"]
    assert (await client.get(f"/api/sessions/{sid}/diff?path=small.txt")).status == 200


async def test_two_repositories(client: Any, tmp_path: Path) -> None:
    first = make_repo(tmp_path / "first")
    second = make_repo(tmp_path / "second")
    session = await create_running(
        client, first, repo_path=None, backend="local",
        repositories=[{"path": str(first), "mount_name": "first"},
                      {"path": str(second), "mount_name": "second"}],
    )  # fmt: skip
    sid = session["id"]
    worktrees = {r["mount_name"]: Path(r["worktree_path"]) for r in session["repositories"]}
    (worktrees["first"] / "a.txt").write_text("a\n")
    (worktrees["second"] / "b.txt").write_text("b\nb\n")
    answer = await get_json(client, f"/api/sessions/{sid}/diff")
    assert [r["mount_name"] for r in answer["repositories"]] == ["first", "second"]
    assert answer["totals"] == {"files": 2, "additions": 3, "deletions": 0}
    only = await get_json(client, f"/api/sessions/{sid}/diff?repository=second")
    assert [r["mount_name"] for r in only["repositories"]] == ["second"]
    assert set(files_of(only)) == {"b.txt"}
    response = await client.get(f"/api/sessions/{sid}/diff?repository=second&path=b.txt")
    assert "+b" in await response.text()


async def test_commits_with_bodies_and_files(client: Any, git_repo: Path) -> None:
    session = await session_on(client, git_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    (worktree / "one.txt").write_text("1\n")
    git(worktree, "add", "one.txt")
    git(worktree, "commit", "-q", "-m", "First subject", "-m", "A body\nover two lines")
    (worktree / "two.txt").write_text("2\n")
    (worktree / "odd \x1e name.txt").write_text("odd\n")
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", "Second subject")
    git(worktree, "commit", "-q", "--allow-empty", "-m", "Empty")
    # A commit on the base alone is not the session's.
    (git_repo / "base.txt").write_text("base\n")
    git(git_repo, "add", "base.txt")
    git(git_repo, "commit", "-q", "-m", "on base")

    answer = await get_json(client, f"/api/sessions/{sid}/commits")
    repo = answer["repositories"][0]
    assert repo["truncated"] is False
    assert [c["subject"] for c in repo["commits"]] == ["Empty", "Second subject", "First subject"]
    empty, second, first = repo["commits"]
    assert first["body"] == "A body\nover two lines"
    assert first["files"] == ["one.txt"]
    assert sorted(second["files"]) == ["odd \x1e name.txt", "two.txt"]
    assert empty["files"] == []
    assert first["hash"] == git(worktree, "rev-parse", "HEAD~2")
    assert first["author_email"] == "test@example.invalid"
    assert first["date"].endswith(("Z", "+00:00")) or "T" in first["date"]


async def test_a_crafted_commit_message_hides_no_commit(client: Any, git_repo: Path) -> None:
    """A commit object written by hand with a NUL and a record separator in its message
    (the container can write objects and its branch) must not hide itself or later ones."""
    session = await session_on(client, git_repo)
    worktree = Path(session["worktree_path"])
    (worktree / "one.txt").write_text("1\n")
    git(worktree, "add", "one.txt")
    git(worktree, "commit", "-q", "-m", "Honest")
    tree = git(worktree, "rev-parse", "HEAD^{tree}")
    parent = git(worktree, "rev-parse", "HEAD")
    ident = "Mallory <m@example.invalid> 1700000000 +0000"
    raw = (
        f"tree {tree}\nparent {parent}\nauthor {ident}\ncommitter {ident}\n\n"
        "Looks fine\0\x1e" + "0" * 40 + "\0fake\0\0\0\0\0\0\n"
    ).encode()
    crafted = subprocess.run(
        ["git", "hash-object", "-t", "commit", "--literally", "-w", "--stdin"],
        cwd=worktree, input=raw, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    git(worktree, "update-ref", "HEAD", crafted)
    git(worktree, "commit", "-q", "--allow-empty", "-m", "After")

    answer = await get_json(client, f"/api/sessions/{session['id']}/commits")
    listed = answer["repositories"][0]["commits"]
    assert [c["hash"] for c in listed] == [
        git(worktree, "rev-parse", "HEAD"),
        crafted,
        parent,
    ]
    assert listed[0]["subject"] == "After"
    assert listed[2]["subject"] == "Honest"


async def test_a_worktree_symlink_is_listed_never_followed(client: Any, git_repo: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n" * 10)
    session = await session_on(client, git_repo)
    worktree = Path(session["worktree_path"])
    (worktree / "link").symlink_to(secret)
    files = files_of(await get_json(client, f"/api/sessions/{session['id']}/diff"))
    assert files["link"]["additions"] == 1  # the link's target name, one line
    response = await client.get(f"/api/sessions/{session['id']}/diff?path=link")
    assert "host secret" not in await response.text()


async def test_session_changes_event_after_a_commit(client: Any, git_repo: Path) -> None:
    session = await session_on(client, git_repo)
    sid = session["id"]
    worktree = Path(session["worktree_path"])
    ws = await client.ws_connect("/ws/events")
    await ws.send_json({"type": "subscribe", "session_id": sid})
    # Let the watcher see the session as it is before the commit.
    await asyncio.sleep(0.5)
    (worktree / "new.txt").write_text("x\ny\n")
    git(worktree, "add", "new.txt")
    git(worktree, "commit", "-q", "-m", "new")
    head = git(worktree, "rev-parse", "HEAD")
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(5):
        while True:
            event = await ws.receive_json()
            if event.get("type") == "session_changes" and event["heads"].get("repo") == head:
                break
    assert asyncio.get_running_loop().time() - start < 3
    assert event["session_id"] == sid
    assert event["totals"] == {"files": 1, "additions": 2, "deletions": 0}
    await ws.close()
