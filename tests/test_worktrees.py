"""daemon.core.worktrees against real git in temporary folders."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from datetime import datetime, tzinfo
from pathlib import Path

import pytest
from conftest import make_repo

from daemon.core import worktrees as wt
from daemon.core.worktrees import GitError, InvalidRepository

BRANCH = "corral/test-session"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_file(cwd: Path, name: str, text: str = "x\n") -> str:
    (cwd / name).write_text(text)
    git(cwd, "add", name)
    git(cwd, "commit", "-q", "-m", f"add {name}")
    return git(cwd, "rev-parse", "HEAD")


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # A zombie has been killed; it only waits for its new parent to reap it.
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return process_gone(pid)


@pytest.fixture
def worktree_path(tmp_path: Path) -> Path:
    # Deeper than tmp_path so add_worktree has to create the parent folders.
    return tmp_path / "data" / "worktrees" / "test-session" / "repo"


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Stop git's discovery at tmp_path, whatever repository the machine's /tmp sits in.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path


# resolve_repository


async def test_resolve_repository_root(git_repo: Path) -> None:
    info = await wt.resolve_repository(str(git_repo))
    assert info.root == str(git_repo.resolve())
    assert info.git_dir == str((git_repo / ".git").resolve())
    assert info.subdir == ""
    assert info.current_branch == "main"


async def test_resolve_repository_subfolder_and_symlink(git_repo: Path, tmp_path: Path) -> None:
    deeper = git_repo / "src" / "pkg"
    deeper.mkdir(parents=True)
    link = tmp_path / "link-to-src"
    link.symlink_to(git_repo / "src")

    direct = await wt.resolve_repository(str(deeper))
    via_link = await wt.resolve_repository(str(link / "pkg"))

    for info in (direct, via_link):
        assert info.root == str(git_repo.resolve())
        assert info.subdir == "src/pkg"
        assert info.git_dir == str((git_repo / ".git").resolve())


async def test_resolve_repository_from_a_linked_worktree_gives_common_git_dir(
    git_repo: Path, worktree_path: Path
) -> None:
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    info = await wt.resolve_repository(str(worktree_path))
    assert info.root == str(worktree_path.resolve())
    assert info.git_dir == str((git_repo / ".git").resolve())
    assert info.current_branch == BRANCH


async def test_resolve_repository_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidRepository, match="does not exist"):
        await wt.resolve_repository(str(tmp_path / "nope"))


async def test_resolve_repository_file(git_repo: Path) -> None:
    with pytest.raises(InvalidRepository, match="is not a directory"):
        await wt.resolve_repository(str(git_repo / "README.md"))


async def test_resolve_repository_relative_path_refused(git_repo: Path) -> None:
    with pytest.raises(InvalidRepository, match="not an absolute path"):
        await wt.resolve_repository("repo")


async def test_resolve_repository_plain_folder(isolated: Path) -> None:
    plain = isolated / "plain"
    plain.mkdir()
    with pytest.raises(InvalidRepository, match="is not a git repository"):
        await wt.resolve_repository(str(plain))


async def test_resolve_repository_bare(isolated: Path) -> None:
    bare = isolated / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    with pytest.raises(InvalidRepository, match="bare repository"):
        await wt.resolve_repository(str(bare))


async def test_resolve_repository_inside_dot_git(git_repo: Path) -> None:
    with pytest.raises(InvalidRepository, match=r"inside a \.git directory"):
        await wt.resolve_repository(str(git_repo / ".git"))


async def test_resolve_repository_without_commits(isolated: Path) -> None:
    empty = isolated / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(InvalidRepository, match="no commits"):
        await wt.resolve_repository(str(empty))


async def test_resolve_repository_detached_head(git_repo: Path) -> None:
    git(git_repo, "checkout", "-q", "--detach", "HEAD")
    info = await wt.resolve_repository(str(git_repo))
    assert info.current_branch is None
    assert info.root == str(git_repo.resolve())


# refs


async def test_branch_and_ref_exists(git_repo: Path, tmp_path: Path) -> None:
    git(git_repo, "tag", "v1")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(git_repo, "remote", "add", "origin", str(remote))
    git(git_repo, "push", "-q", "origin", "main")
    git(git_repo, "fetch", "-q", "origin")
    root = str(git_repo)

    assert await wt.branch_exists(root, "main")
    assert not await wt.branch_exists(root, "v1")  # a tag is not a branch
    assert not await wt.branch_exists(root, "origin/main")  # nor is a remote branch
    assert not await wt.branch_exists(root, "nope")
    for ref in ("main", "v1", "origin/main", git(git_repo, "rev-parse", "HEAD")):
        assert await wt.ref_exists(root, ref), ref
    for ref in ("nope", "origin/nope", "--all"):
        assert not await wt.ref_exists(root, ref), ref


# add_worktree


async def test_add_worktree_creates_branch_from_base(git_repo: Path, worktree_path: Path) -> None:
    base_head = git(git_repo, "rev-parse", "main")
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")

    assert (worktree_path / "README.md").read_text() == "hello\n"
    assert git(git_repo, "rev-parse", BRANCH) == base_head
    assert git(worktree_path, "symbolic-ref", "--short", "HEAD") == BRANCH
    listing = git(git_repo, "worktree", "list", "--porcelain")
    assert f"worktree {worktree_path.resolve()}" in listing
    assert await wt.worktree_is_registered(str(git_repo), str(worktree_path))


async def test_add_worktree_from_remote_branch_does_not_track_it(
    git_repo: Path, worktree_path: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(git_repo, "remote", "add", "origin", str(remote))
    git(git_repo, "push", "-q", "origin", "main")
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "origin/main")
    assert git(worktree_path, "rev-parse", "HEAD") == git(git_repo, "rev-parse", "origin/main")
    # A pushed session branch must not land on the base's remote branch.
    upstream = subprocess.run(
        ["git", "config", f"branch.{BRANCH}.merge"], cwd=git_repo, capture_output=True
    )
    assert upstream.returncode == 1


async def test_add_worktree_twice_is_a_no_op(git_repo: Path, worktree_path: Path) -> None:
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    (worktree_path / "work.txt").write_text("keep me\n")
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    assert (worktree_path / "work.txt").read_text() == "keep me\n"


async def test_add_worktree_after_folder_deleted_keeps_branch(
    git_repo: Path, worktree_path: Path
) -> None:
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    work = commit_file(worktree_path, "work.txt", "agent work\n")
    shutil.rmtree(worktree_path)
    assert await wt.worktree_is_registered(str(git_repo), str(worktree_path))  # stale

    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")

    assert git(git_repo, "rev-parse", BRANCH) == work
    assert git(worktree_path, "rev-parse", "HEAD") == work
    assert (worktree_path / "work.txt").read_text() == "agent work\n"


async def test_add_worktree_from_tag(git_repo: Path, worktree_path: Path) -> None:
    tagged = git(git_repo, "rev-parse", "HEAD")
    git(git_repo, "tag", "v1")
    commit_file(git_repo, "later.txt")
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "v1")
    assert git(worktree_path, "rev-parse", "HEAD") == tagged
    assert not (worktree_path / "later.txt").exists()


async def test_add_worktree_unknown_base(git_repo: Path, worktree_path: Path) -> None:
    with pytest.raises(GitError) as info:
        await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "no-such-base")
    assert info.value.details is not None
    assert "no-such-base" in info.value.details
    assert not await wt.branch_exists(str(git_repo), BRANCH)
    assert not await wt.worktree_is_registered(str(git_repo), str(worktree_path))


# remove_worktree


async def test_remove_worktree_with_uncommitted_changes_keeps_branch(
    git_repo: Path, worktree_path: Path
) -> None:
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    work = commit_file(worktree_path, "work.txt")
    (worktree_path / "README.md").write_text("changed\n")
    (worktree_path / "untracked.txt").write_text("new\n")

    await wt.remove_worktree(str(git_repo), str(worktree_path))

    assert not worktree_path.exists()
    assert not await wt.worktree_is_registered(str(git_repo), str(worktree_path))
    assert git(git_repo, "rev-parse", BRANCH) == work


async def test_remove_worktree_that_is_locked(git_repo: Path, worktree_path: Path) -> None:
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    git(git_repo, "worktree", "lock", str(worktree_path))
    await wt.remove_worktree(str(git_repo), str(worktree_path))
    assert not worktree_path.exists()
    assert not await wt.worktree_is_registered(str(git_repo), str(worktree_path))


async def test_remove_worktree_already_gone(git_repo: Path, worktree_path: Path) -> None:
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    shutil.rmtree(worktree_path)
    await wt.remove_worktree(str(git_repo), str(worktree_path))
    assert not await wt.worktree_is_registered(str(git_repo), str(worktree_path))
    # Never existed at all: also fine.
    await wt.remove_worktree(str(git_repo), str(worktree_path.with_name("other")))
    assert await wt.branch_exists(str(git_repo), BRANCH)


async def test_remove_worktree_deletes_unregistered_leftover(
    git_repo: Path, worktree_path: Path
) -> None:
    # As if git had stopped half way: a folder with files that git no longer knows.
    (worktree_path / "sub").mkdir(parents=True)
    (worktree_path / "sub" / "file.txt").write_text("left over\n")
    await wt.remove_worktree(str(git_repo), str(worktree_path))
    assert not worktree_path.exists()


async def test_remove_worktree_never_deletes_the_repository(git_repo: Path) -> None:
    with pytest.raises(GitError):
        await wt.remove_worktree(str(git_repo), str(git_repo))
    assert (git_repo / "README.md").exists()
    assert (git_repo / ".git").is_dir()


async def test_remove_worktree_refuses_a_standalone_repository(
    git_repo: Path, tmp_path: Path
) -> None:
    other = make_repo(tmp_path / "other")
    with pytest.raises(GitError, match="refusing"):
        await wt.remove_worktree(str(git_repo), str(other))
    assert (other / "README.md").exists()


# unsaved_work


async def test_unsaved_work(git_repo: Path, worktree_path: Path, tmp_path: Path) -> None:
    root, path = str(git_repo), str(worktree_path)
    await wt.add_worktree(root, path, BRANCH, "main")

    clean = await wt.unsaved_work(path, BRANCH)
    assert clean == wt.UnsavedWork(uncommitted=[], unique_commits=0)
    assert not clean.any

    (worktree_path / "notes.txt").write_text("draft\n")
    dirty = await wt.unsaved_work(path, BRANCH)
    assert dirty.uncommitted == ["?? notes.txt"]
    assert dirty.unique_commits == 0
    assert dirty.any

    (worktree_path / "README.md").write_text("edited\n")
    assert " M README.md" in (await wt.unsaved_work(path, BRANCH)).uncommitted

    git(worktree_path, "add", "-A")
    git(worktree_path, "commit", "-q", "-m", "agent work")
    committed = await wt.unsaved_work(path, BRANCH)
    assert committed.uncommitted == []
    assert committed.unique_commits == 1
    assert committed.any

    # Gone worktree: commits still counted, in the main repository.
    shutil.rmtree(worktree_path)
    gone = await wt.unsaved_work(path, BRANCH, repo_root=root)
    assert gone == wt.UnsavedWork(uncommitted=[], unique_commits=1)
    with pytest.raises(GitError):
        await wt.unsaved_work(path, BRANCH)

    git(git_repo, "merge", "-q", "--ff-only", BRANCH)
    assert (await wt.unsaved_work(path, BRANCH, repo_root=root)).unique_commits == 0


async def test_unique_commits_saved_on_a_remote_branch(git_repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(git_repo, "remote", "add", "origin", str(remote))
    git(git_repo, "checkout", "-q", "-b", BRANCH)
    commit_file(git_repo, "a.txt")
    commit_file(git_repo, "b.txt")
    git(git_repo, "checkout", "-q", "main")
    root = str(git_repo)
    before = await wt.unsaved_work(str(tmp_path / "gone"), BRANCH, repo_root=root)
    assert before.unique_commits == 2

    # The same name under refs/remotes must count as a copy, not be excluded with the branch.
    git(git_repo, "push", "-q", "origin", BRANCH)
    after = await wt.unsaved_work(str(tmp_path / "gone"), BRANCH, repo_root=root)
    assert after.unique_commits == 0


async def test_unique_commits_saved_on_a_tag(git_repo: Path, tmp_path: Path) -> None:
    git(git_repo, "checkout", "-q", "-b", BRANCH)
    commit_file(git_repo, "a.txt")
    git(git_repo, "checkout", "-q", "main")
    root, gone = str(git_repo), str(tmp_path / "gone")
    assert (await wt.unsaved_work(gone, BRANCH, repo_root=root)).unique_commits == 1
    git(git_repo, "tag", "keep", BRANCH)
    assert (await wt.unsaved_work(gone, BRANCH, repo_root=root)).unique_commits == 0


async def test_unsaved_work_refuses_a_folder_that_is_no_worktree(git_repo: Path) -> None:
    # Its .git file lost: git would otherwise report on the enclosing repository.
    inside = git_repo / "nested"
    inside.mkdir()
    with pytest.raises(GitError, match="no longer a git worktree"):
        await wt.unsaved_work(str(inside), BRANCH)


# archive_branch and reset_branch


class FrozenClock(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> FrozenClock:
        return cls(2026, 1, 28, 12, 30, 0, tzinfo=tz)


async def test_archive_branch_with_unique_commits(
    git_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wt, "datetime", FrozenClock)
    git(git_repo, "checkout", "-q", "-b", BRANCH)
    work = commit_file(git_repo, "a.txt")
    git(git_repo, "checkout", "-q", "main")

    first = await wt.archive_branch(str(git_repo), BRANCH)
    assert first == f"{BRANCH}-prev-20260128123000"
    assert not await wt.branch_exists(str(git_repo), BRANCH)
    assert git(git_repo, "rev-parse", first) == work

    # A second archive within the same second must not overwrite the first.
    git(git_repo, "checkout", "-q", "-b", BRANCH, first)
    more = commit_file(git_repo, "b.txt")
    git(git_repo, "checkout", "-q", "main")
    second = await wt.archive_branch(str(git_repo), BRANCH)
    assert second == f"{BRANCH}-prev-20260128123000-2"
    assert git(git_repo, "rev-parse", first) == work
    assert git(git_repo, "rev-parse", second) == more


async def test_archive_branch_without_unique_commits(git_repo: Path) -> None:
    git(git_repo, "branch", BRANCH, "main")
    assert await wt.archive_branch(str(git_repo), BRANCH) is None
    assert await wt.branch_exists(str(git_repo), BRANCH)
    assert "-prev-" not in git(git_repo, "branch", "--list")
    assert await wt.archive_branch(str(git_repo), "missing") is None


async def test_reset_branch(git_repo: Path, worktree_path: Path) -> None:
    git(git_repo, "branch", BRANCH, "main")
    newer = commit_file(git_repo, "later.txt")
    git(git_repo, "tag", "v2")
    await wt.reset_branch(str(git_repo), BRANCH, "v2")
    assert git(git_repo, "rev-parse", BRANCH) == newer

    # Checked out somewhere: git refuses, and the branch stays where it is.
    await wt.add_worktree(str(git_repo), str(worktree_path), BRANCH, "main")
    with pytest.raises(GitError):
        await wt.reset_branch(str(git_repo), BRANCH, "main~1")
    assert git(git_repo, "rev-parse", BRANCH) == newer


# running git


async def test_run_git_failure_carries_stderr(git_repo: Path) -> None:
    with pytest.raises(GitError) as info:
        await wt.run_git("show", "no-such-ref", cwd=str(git_repo))
    assert info.value.message.startswith("git show failed: fatal:")
    assert info.value.details is not None
    assert "no-such-ref" in info.value.details


async def test_run_git_missing_cwd(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="does not exist"):
        await wt.run_git("status", cwd=str(tmp_path / "nope"))


def _hanging_alias(pid_file: Path) -> tuple[str, ...]:
    # A shell alias really blocks (stdin is /dev/null, so nothing that reads input would),
    # and it runs as git's child holding git's pipes: the case where killing git alone
    # would leave us waiting. It records its pid to prove the whole group was killed.
    return ("-c", f"alias.hang=!echo $$ > '{pid_file}'; exec sleep 30", "hang")


async def test_run_git_timeout_kills_git_and_its_children(git_repo: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(GitError, match="timed out"):
        await wt.run_git(*_hanging_alias(pid_file), cwd=str(git_repo), timeout=0.5)
    # The bound is only for a git left to run: its child sleeps 30 s. Killed, it is gone in
    # well under a second; 20 s leaves a loaded 2-core machine all the room it needs.
    assert time.monotonic() - started < 20
    assert await wait_gone(int(pid_file.read_text()))


async def test_cancelled_run_git_kills_git(git_repo: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(wt.run_git(*_hanging_alias(pid_file), cwd=str(git_repo)))
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(int(pid_file.read_text()))


async def test_concurrent_adds_in_one_repository_all_succeed(
    tmp_path: Path, git_repo: Path
) -> None:
    # Every folder has the same last name, so git must pick distinct admin dirs for each.
    paths = [tmp_path / "wt" / f"s{i}" / "repo" for i in range(8)]
    await asyncio.gather(
        *(
            wt.add_worktree(str(git_repo), str(p), f"corral/c{i}", "main", new_branch=True)
            for i, p in enumerate(paths)
        )
    )
    for path in paths:
        assert (path / "README.md").read_text() == "hello\n"
    await asyncio.gather(*(wt.remove_worktree(str(git_repo), str(p)) for p in paths))
    assert not any(p.exists() for p in paths)
