"""Merging a session's branch back (issue 17): POST /api/sessions/{id}/merge and
/merge/ask-agent, against real repositories.

Sessions run on the local backend with no agent; their work is committed in their worktree
with plain git, as an agent would. Every refusal is checked to have moved nothing: refs and
worktree status are compared before and after.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.core import landing
from daemon.keys import MANAGER, TASKS
from daemon.settings import Settings
from tests.conftest import create_running


def git(cwd: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(
    cwd: Path | str, files: dict[str, str | bytes | None], message: str, author: str | None = None
) -> str:
    """Write (or, for None, delete) files and commit them all; answer the commit."""
    for name, content in files.items():
        path = Path(cwd) / name
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message, *([f"--author={author}"] if author else []))
    return git(cwd, "rev-parse", "HEAD")


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def state(repo: Path, worktree: Path) -> tuple[str, str, str, str]:
    """Everything a refused merge must leave as it was."""
    return (
        refs(repo),
        git(repo, "status", "--porcelain"),
        git(worktree, "status", "--porcelain"),
        git(repo, "rev-parse", "HEAD"),
    )


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Any]:
    settings = Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "sessions": {"default_backend": "local", "start_agent": False, "git_timeout": 30},
        }
    )
    app = create_app(settings, backends={"local": LocalBackend()})
    test_client = await aiohttp_client(app)
    yield test_client
    await app[TASKS].wait(timeout=30)


async def session_on(client: Any, repo: Path) -> tuple[str, Path, str]:
    session = await create_running(client, repo, backend="local")
    assert session["status"] == "running", session
    return session["id"], Path(session["worktree_path"]), session["branch_name"]


async def merge(client: Any, session_id: str, status: int = 200, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/api/sessions/{session_id}/merge", json=body)
    answer = await response.json()
    assert response.status == status, answer
    if status == 409:
        assert answer["error"]["code"] == "CONFLICT", answer
        return dict(answer["error"]["details"])
    return dict(answer)


async def test_dry_run_clean_and_with_conflicts_moves_nothing(client: Any, git_repo: Path) -> None:
    session_id, worktree, _ = await session_on(client, git_repo)
    commit(worktree, {"feature.txt": "new\n", "README.md": "hello from the agent\n"}, "agent")
    before = state(git_repo, worktree)
    result = await merge(client, session_id, dry_run=True)
    assert result["clean"] is True
    assert result["refusal"] is None
    assert result["conflicts"] == []
    assert result["target_branch"] == "main"
    assert result["target_before"] == git(git_repo, "rev-parse", "main")
    assert result["target_after"] is None
    assert state(git_repo, worktree) == before

    commit(git_repo, {"README.md": "hello from the user\n"}, "user")
    before = state(git_repo, worktree)
    for strategy in ("merge", "squash", "rebase"):
        result = await merge(client, session_id, dry_run=True, strategy=strategy)
        assert result["clean"] is False, strategy
        assert result["refusal"] == "conflicts", strategy
        assert result["conflicts"] == ["README.md"], strategy
    result = await merge(client, session_id, dry_run=True, strategy="fast-forward")
    assert result["refusal"] == "not_fast_forward"
    assert state(git_repo, worktree) == before
    # The real merge is refused with the same verdict and moves nothing either.
    result = await merge(client, session_id, 409)
    assert result["refusal"] == "conflicts"
    assert result["conflicts"] == ["README.md"]
    assert "Nothing was moved" in result["kept"]
    assert state(git_repo, worktree) == before


@pytest.mark.parametrize("strategy", ["merge", "squash", "rebase", "fast-forward"])
async def test_each_strategy_lands_and_updates_the_users_clean_checkout(
    client: Any, git_repo: Path, strategy: str
) -> None:
    session_id, worktree, branch = await session_on(client, git_repo)
    first = commit(worktree, {"a.txt": "a\n"}, "add a", "the agent <agent@example.invalid>")
    second = commit(worktree, {"b.txt": "b\n"}, "add b\n\nwith a body",
                    "Agent Two <two@example.invalid>")  # fmt: skip
    if strategy != "fast-forward":
        commit(git_repo, {"user.txt": "user\n"}, "user's own work")
    old = git(git_repo, "rev-parse", "main")
    branch_refs = git(git_repo, "rev-parse", branch)

    result = await merge(client, session_id, strategy=strategy)

    new = git(git_repo, "rev-parse", "main")
    assert result["clean"] is True
    assert result["refusal"] is None
    assert result["target_before"] == old
    assert result["target_after"] == new != old
    # The backup ref holds the target as it was; the session's branch is untouched.
    assert result["backup_ref"].startswith("refs/corral/backup/main/")
    assert git(git_repo, "rev-parse", result["backup_ref"]) == old
    assert git(git_repo, "rev-parse", branch) == branch_refs
    # The user's checkout of main follows its branch, clean, with the session's files.
    assert result["updated_checkout"] == str(git_repo)
    assert git(git_repo, "status", "--porcelain") == ""
    assert (git_repo / "a.txt").read_text() == "a\n"
    assert (git_repo / "b.txt").read_text() == "b\n"
    assert branch in result["kept"]
    assert result["backup_ref"] in result["kept"]
    parents = git(git_repo, "rev-list", "--parents", "-n", "1", new).split()[1:]
    if strategy == "merge":
        assert parents == [old, second]
        assert git(git_repo, "log", "-1", "--format=%an", new) == "corral test"
    elif strategy == "squash":
        assert parents == [old]
        message = git(git_repo, "log", "-1", "--format=%B", new)
        assert "add a" in message
        assert "add b" in message
    elif strategy == "rebase":
        replayed = git(git_repo, "rev-list", "--reverse", f"{old}..{new}").split()
        assert len(replayed) == 2
        assert first not in replayed
        assert git(git_repo, "rev-parse", f"{replayed[0]}^") == old
        authors = git(git_repo, "log", "--reverse", "--format=%an <%ae>|%s|%cn", f"{old}..{new}")
        assert authors.splitlines() == [
            "the agent <agent@example.invalid>|add a|corral test",
            "Agent Two <two@example.invalid>|add b|corral test",
        ]
        assert git(git_repo, "log", "-1", "--format=%b", new) == "with a body"
    else:
        assert new == second
    if strategy != "fast-forward":
        assert (git_repo / "user.txt").read_text() == "user\n"
        # Both sides' files, nothing else.
        assert set(git(git_repo, "ls-tree", "--name-only", new).split()) == {
            "README.md", "a.txt", "b.txt", "user.txt"
        }  # fmt: skip
    # Merged now: a second merge has nothing to do.
    again = await merge(client, session_id, 409, strategy=strategy)
    assert again["refusal"] == "nothing_to_merge"


@pytest.mark.parametrize("strategy", ["merge", "rebase"])
async def test_renames_binary_and_deleted_files_merge(
    client: Any, git_repo: Path, strategy: str
) -> None:
    commit(git_repo, {"old_name.txt": "line\n" * 20, "gone.txt": "bye\n", "blob.bin": b"\0\1\2"},
           "files")  # fmt: skip
    session_id, worktree, _ = await session_on(client, git_repo)
    git(worktree, "mv", "old_name.txt", "new_name.txt")
    commit(worktree, {"gone.txt": None, "blob.bin": b"\0\1\2\3\xff"}, "rename, delete, binary")
    # The user changes the renamed file meanwhile: the change must follow the rename.
    commit(git_repo, {"old_name.txt": "line\n" * 19 + "changed\n"}, "user edits")
    result = await merge(client, session_id, strategy=strategy)
    assert result["clean"] is True, result
    assert not (git_repo / "old_name.txt").exists()
    assert (git_repo / "new_name.txt").read_text().endswith("changed\n")
    assert not (git_repo / "gone.txt").exists()
    assert (git_repo / "blob.bin").read_bytes() == b"\0\1\2\3\xff"
    assert git(git_repo, "status", "--porcelain") == ""


async def test_binary_conflict_is_listed(client: Any, git_repo: Path) -> None:
    commit(git_repo, {"blob.bin": b"\0base"}, "binary")
    session_id, worktree, _ = await session_on(client, git_repo)
    commit(worktree, {"blob.bin": b"\0agent"}, "agent")
    commit(git_repo, {"blob.bin": b"\0user"}, "user")
    result = await merge(client, session_id, dry_run=True)
    assert result["conflicts"] == ["blob.bin"]


async def test_uncommitted_work_is_refused_then_committed_when_asked(
    client: Any, git_repo: Path
) -> None:
    session_id, worktree, branch = await session_on(client, git_repo)
    commit(worktree, {"done.txt": "done\n"}, "agent")
    (worktree / "done.txt").write_text("changed, not committed\n")
    (worktree / "new.txt").write_text("untracked\n")
    # Something staged in the container's index but gone from disk is not taken: the
    # commit is made from the files, in an index of corral's own.
    (worktree / "staged.txt").write_text("staged\n")
    git(worktree, "add", "staged.txt")
    (worktree / "staged.txt").unlink()
    before = state(git_repo, worktree)
    result = await merge(client, session_id, 409)
    assert result["refusal"] == "uncommitted_changes"
    assert sorted(result["uncommitted"]) == [" M done.txt", "?? new.txt", "AD staged.txt"]
    assert state(git_repo, worktree) == before
    # A dry run with commit_uncommitted says it would merge, and still moves nothing.
    result = await merge(client, session_id, dry_run=True, commit_uncommitted=True)
    assert result["clean"] is True
    assert state(git_repo, worktree) == before
    old_branch = git(git_repo, "rev-parse", branch)

    result = await merge(client, session_id, commit_uncommitted=True)

    committed = result["committed_uncommitted"]
    assert git(git_repo, "rev-parse", branch) == committed
    assert git(git_repo, "rev-parse", f"{committed}^") == old_branch
    assert git(git_repo, "log", "-1", "--format=%s", committed).startswith(
        "corral: uncommitted work of "
    )
    assert (git_repo / "new.txt").read_text() == "untracked\n"
    assert (git_repo / "done.txt").read_text() == "changed, not committed\n"
    assert not (git_repo / "staged.txt").exists()
    assert "staged.txt" not in git(git_repo, "ls-tree", "--name-only", committed)
    # The session's files are as they were: only read, never written.
    assert (worktree / "new.txt").read_text() == "untracked\n"
    assert (worktree / "done.txt").read_text() == "changed, not committed\n"
    # And its git status is clean: the index follows the branch, not the old commit.
    assert git(worktree, "status", "--porcelain") == ""


async def test_target_checked_out_dirty_is_refused_and_nothing_moves(
    client: Any, git_repo: Path
) -> None:
    session_id, worktree, _ = await session_on(client, git_repo)
    commit(worktree, {"README.md": "agent\n"}, "agent")
    (git_repo / "README.md").write_text("the user's unsaved edit\n")
    before = state(git_repo, worktree)
    result = await merge(client, session_id, 409)
    assert result["refusal"] == "target_dirty"
    assert result["target_worktree"] == str(git_repo)
    assert result["backup_ref"] is None
    assert state(git_repo, worktree) == before
    assert (git_repo / "README.md").read_text() == "the user's unsaved edit\n"
    # An untracked file counts too; in a linked worktree of the user's as well.
    git(git_repo, "checkout", "-q", "README.md")
    git(git_repo, "checkout", "-q", "--detach")
    linked = git_repo.parent / "linked"
    git(git_repo, "worktree", "add", "-q", str(linked), "main")
    (linked / "scratch.txt").write_text("mine\n")
    before = state(git_repo, worktree)
    result = await merge(client, session_id, 409)
    assert result["refusal"] == "target_dirty"
    assert result["target_worktree"] == str(linked)
    assert state(git_repo, worktree) == before
    # Clean again: the merge goes ahead and the linked checkout is the one updated.
    (linked / "scratch.txt").unlink()
    result = await merge(client, session_id)
    assert result["updated_checkout"] == str(linked)
    assert (linked / "README.md").read_text() == "agent\n"
    assert git(linked, "status", "--porcelain") == ""


async def test_target_that_moves_during_the_merge_is_refused_and_nothing_is_lost(
    client: Any, git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id, worktree, branch = await session_on(client, git_repo)
    commit(worktree, {"agent.txt": "agent\n"}, "agent")
    old = git(git_repo, "rev-parse", "main")
    branch_before = git(git_repo, "rev-parse", branch)
    real = landing._make_commit
    moved: list[str] = []

    async def make_commit_while_target_moves(*args: Any, **kwargs: Any) -> str:
        # Someone commits on main after the checks, before the target is moved.
        moved.append(commit(git_repo, {"user.txt": "user\n"}, "user, meanwhile"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(landing, "_make_commit", make_commit_while_target_moves)
    result = await merge(client, session_id, 409)
    assert result["refusal"] == "target_moved"
    assert git(git_repo, "rev-parse", "main") == moved[0]
    assert git(git_repo, "rev-parse", result["backup_ref"]) == old
    assert git(git_repo, "rev-parse", branch) == branch_before
    assert git(git_repo, "status", "--porcelain") == ""
    assert result["backup_ref"] in result["kept"]


async def test_bad_requests(client: Any, git_repo: Path) -> None:
    session_id, _, branch = await session_on(client, git_repo)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/api/sessions/no-such-session/merge", {}, 404, "SESSION_NOT_FOUND"),
        ("/api/sessions/no-such-session/merge/ask-agent", {}, 404, "SESSION_NOT_FOUND"),
        (f"/api/sessions/{session_id}/merge", {"repository": "nope"}, 400, "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge", {"strategy": "octopus"}, 400, "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge", {"target_branch": "no-such"}, 400,
         "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge", {"target_branch": "-x"}, 400, "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge", {"target_branch": "a..b"}, 400, "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge", {"target_branch": branch}, 400, "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge", {"dry_run": "maybe"}, 400, "INVALID_REQUEST"),
        (f"/api/sessions/{session_id}/merge/ask-agent", {"repository": "nope"}, 400,
         "INVALID_REQUEST"),
    ]  # fmt: skip
    before = refs(git_repo)
    for url, body, status, code in cases:
        response = await client.post(url, json=body)
        answer = await response.json()
        assert response.status == status, (body, answer)
        assert answer["error"]["code"] == code, (body, answer)
    assert refs(git_repo) == before
    # A session's branch with nothing new on it: nothing to merge, nothing moved.
    result = await merge(client, session_id, 409)
    assert result["refusal"] == "nothing_to_merge"
    assert refs(git_repo) == before


async def test_ask_agent_sends_the_conflicts(
    client: Any, git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id, worktree, _ = await session_on(client, git_repo)
    manager = client.app[MANAGER]
    sent: list[tuple[str, str]] = []

    async def spy(sid: str, content: str) -> None:
        sent.append((sid, content))

    monkeypatch.setattr(manager, "send_message", spy)
    commit(worktree, {"clean.txt": "fine\n"}, "agent")
    response = await client.post(f"/api/sessions/{session_id}/merge/ask-agent")
    answer = await response.json()
    assert response.status == 409, answer
    assert "nothing to resolve" in answer["error"]["message"]
    assert sent == []

    commit(worktree, {"README.md": "agent\n", "other.txt": "agent\n"}, "agent")
    commit(git_repo, {"README.md": "user\n", "other.txt": "user\n"}, "user")
    before = refs(git_repo)
    response = await client.post(f"/api/sessions/{session_id}/merge/ask-agent", json={})
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["sent"] is True
    assert answer["conflicts"] == ["README.md", "other.txt"]
    assert sent == [(session_id, answer["message"])]
    for word in ("main", "README.md", "other.txt", "rebase"):
        assert word in answer["message"]
    assert refs(git_repo) == before


async def test_rebase_stops_at_a_conflicting_step(client: Any, git_repo: Path) -> None:
    session_id, worktree, _ = await session_on(client, git_repo)
    commit(worktree, {"one.txt": "one\n"}, "fine")
    commit(worktree, {"README.md": "agent\n"}, "conflicts")
    commit(git_repo, {"README.md": "user\n"}, "user")
    before = state(git_repo, worktree)
    result = await merge(client, session_id, 409, strategy="rebase")
    assert result["refusal"] == "conflicts"
    assert result["conflicts"] == ["README.md"]
    assert state(git_repo, worktree) == before
