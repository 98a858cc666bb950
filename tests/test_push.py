"""Pushing a session's branch: real repositories, real bare remotes on disk, local sessions."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from daemon.core import git as git_core
from daemon.core.push import classify
from tests.conftest import create_running


def git(cwd: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def bare_remote(tmp_path: Path, repo: Path, name: str = "origin", url: str | None = None) -> Path:
    remote = tmp_path / f"{name}.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(repo, "remote", "add", name, url or str(remote))
    git(repo, "push", "-q", name, "main")
    return remote


def commit(worktree: Path | str, name: str, text: str = "x\n") -> str:
    (Path(worktree) / name).write_text(text)
    git(worktree, "add", name)
    git(worktree, "commit", "-q", "-m", f"add {name}")
    return git(worktree, "rev-parse", "HEAD")


async def session_of(client: Any, repo: Path) -> dict[str, Any]:
    session = await create_running(client, repo, backend="local", name="pusher")
    assert session["status"] == "running", session
    return session


async def post_push(client: Any, session_id: str, status: int, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/api/sessions/{session_id}/push", json=body)
    answer = await response.json()
    assert response.status == status, answer
    return answer


async def test_push_then_push_again_after_a_new_commit(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    remote = bare_remote(tmp_path, git_repo, url=None)
    session = await session_of(client, git_repo)
    first = commit(session["worktree_path"], "one.txt")

    result = await post_push(client, session["id"], 200)
    assert result == {
        "mount_name": session["repositories"][0]["mount_name"],
        "remote": "origin",
        "branch": "corral/pusher",
        "commit": first,
        "output": result["output"],
    }
    assert git(remote, "rev-parse", "refs/heads/corral/pusher") == first
    # --set-upstream (the default) wrote the user's repository config.
    assert git(git_repo, "config", "branch.corral/pusher.remote") == "origin"

    second = commit(session["worktree_path"], "two.txt")
    result = await post_push(client, session["id"], 200, set_upstream=False)
    assert result["commit"] == second
    assert git(remote, "rev-parse", "refs/heads/corral/pusher") == second


async def test_push_over_a_file_url(client: Any, git_repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "mirror.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(git_repo, "remote", "add", "mirror", f"file://{remote}")
    session = await session_of(client, git_repo)
    head = commit(session["worktree_path"], "a.txt")
    result = await post_push(client, session["id"], 200, remote="mirror")
    assert result["remote"] == "mirror"
    assert git(remote, "rev-parse", "refs/heads/corral/pusher") == head


async def test_a_remote_branch_that_moved_is_rejected_never_forced(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    remote = bare_remote(tmp_path, git_repo)
    session = await session_of(client, git_repo)
    commit(session["worktree_path"], "mine.txt")
    await post_push(client, session["id"], 200)
    # Someone else pushes to the same branch from another clone.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", "corral/pusher", str(remote), str(other))
    theirs = commit(other, "theirs.txt")
    git(other, "push", "-q", "origin", "corral/pusher")
    commit(session["worktree_path"], "mine2.txt")

    answer = await post_push(client, session["id"], 409)
    error = answer["error"]
    assert error["code"] == "CONFLICT"
    assert error["details"]["kind"] == "rejected"
    assert error["details"]["remote"] == "origin"
    assert "rejected" in error["details"]["output"]
    # Their commit is still there: nothing was forced.
    assert git(remote, "rev-parse", "refs/heads/corral/pusher") == theirs


async def test_an_unreachable_remote_is_a_bad_gateway(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    git(git_repo, "remote", "add", "origin", str(tmp_path / "no-such-remote.git"))
    session = await session_of(client, git_repo)
    commit(session["worktree_path"], "a.txt")
    answer = await post_push(client, session["id"], 502)
    assert answer["error"]["code"] == "BACKEND_ERROR"
    assert answer["error"]["details"]["kind"] == "unreachable"
    assert answer["error"]["details"]["remote"] == "origin"


async def test_unknown_or_invalid_remote_and_unknown_repository_are_400(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    bare_remote(tmp_path, git_repo)
    session = await session_of(client, git_repo)
    bad: list[dict[str, Any]] = [
        {"remote": "upstream"},
        {"remote": "-oops"},
        {"remote": "a b"},
        {"remote": "../x"},
        {"repository": "nope"},
        {"set_upstream": "maybe"},
    ]
    for body in bad:
        answer = await post_push(client, session["id"], 400, **body)
        assert answer["error"]["code"] == "INVALID_REQUEST", body


async def test_unknown_session_is_404(client: Any) -> None:
    answer = await post_push(client, "00000000-0000-0000-0000-000000000000", 404)
    assert answer["error"]["code"] == "SESSION_NOT_FOUND"


async def test_no_pre_push_hook_runs(client: Any, git_repo: Path, tmp_path: Path) -> None:
    remote = bare_remote(tmp_path, git_repo)
    proof = tmp_path / "hook-ran"
    for hooks in (git_repo / ".git" / "hooks", tmp_path / "hooks"):
        hooks.mkdir(exist_ok=True)
        hook = hooks / "pre-push"
        hook.write_text(f"#!/bin/sh\ntouch {proof}\nexit 1\n")
        hook.chmod(0o755)
    # Even a hooks path in the repository's own config is not followed.
    git(git_repo, "config", "core.hooksPath", str(tmp_path / "hooks"))
    session = await session_of(client, git_repo)
    head = commit(session["worktree_path"], "a.txt")
    # The test's own push would run it: the hook is real.
    await post_push(client, session["id"], 200)
    assert not proof.exists()
    assert git(remote, "rev-parse", "refs/heads/corral/pusher") == head


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        ("remote: Invalid username or password.\nfatal: Authentication failed for 'x'", "auth"),
        (
            "git@github.com: Permission denied (publickey).\nfatal: Could not read from remote "
            "repository.",
            "auth",
        ),
        ("fatal: unable to access 'https://x/': The requested URL returned error: 403", "auth"),
        (" ! [rejected]        b -> b (non-fast-forward)", "rejected"),
        (" ! [rejected]        b -> b (fetch first)", "rejected"),
        (
            "fatal: unable to access 'https://nohost/': Could not resolve host: nohost",
            "unreachable",
        ),
        ("ssh: connect to host h port 22: Connection refused", "unreachable"),
        ("fatal: '/x' does not appear to be a git repository", "unreachable"),
        ("something else entirely", "failed"),
    ],
)
def test_classify(output: str, kind: str) -> None:
    assert classify(output) == kind


async def test_an_ext_remote_runs_nothing(client: Any, git_repo: Path, tmp_path: Path) -> None:
    proof = tmp_path / "ext-ran"
    git(git_repo, "remote", "add", "origin", f"ext::sh -c touch% {proof}")
    session = await session_of(client, git_repo)
    commit(session["worktree_path"], "a.txt")
    answer = await post_push(client, session["id"], 502)
    assert answer["error"]["details"]["remote"] == "origin"
    assert not proof.exists()


async def test_transports_stay_closed_for_every_other_call(git_repo: Path, tmp_path: Path) -> None:
    remote = bare_remote(tmp_path, git_repo)
    commit(git_repo, "b.txt")
    # Without transport="push", git cannot reach even a remote on disk.
    with pytest.raises(git_core.GitError):
        await git_core.run_git("push", str(remote), "main", cwd=str(git_repo))
    with pytest.raises(git_core.GitError, match="for git push"):
        await git_core.run_git("fetch", str(remote), cwd=str(git_repo), transport="push")
    await git_core.run_git("push", str(remote), "main", cwd=str(git_repo), transport="push")
    assert git(remote, "rev-parse", "main") == git(git_repo, "rev-parse", "main")


async def test_only_the_users_global_credential_helper_is_carried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gitconfig"
    config.write_text("[credential]\n\thelper = store --file /nonexistent/creds\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setattr(git_core, "_push_carried", None)
    args = await git_core._push_carried_args()
    assert args == ("-c", "credential.helper=store --file /nonexistent/creds")
    # A repository's own helper is emptied first (the list resets), then the user's is added.
    assert "credential.helper=" in git_core._PUSH_ARGS
