"""The git boundary: nothing a session's container writes makes host git run a program.

Each attack plants, where a container can (or could before the boundary), a hook, a config
key or a redirect that would run ``evil.sh`` on the host, then drives the daemon through
the operations that run host git (create, the unsaved-work check of DELETE, the orphan
sweep). ``evil.sh`` leaves a marker file; it must never appear. The container tests run
git in the real Debian agent image and try to write where they must not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.core import git as git_boundary
from daemon.core import worktrees as wt
from daemon.core.worktrees import admin_dir_of, common_dir_of
from daemon.keys import MANAGER
from daemon.supervise.orphans import OrphanSweeper
from tests.conftest import create_running, docker_exec, make_repo, wait_for


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def evil_script(tmp_path: Path) -> tuple[Path, Path]:
    """A program that records each time anything runs it: (the program, its marker)."""
    marker = tmp_path / "ran-on-host"
    script = tmp_path / "evil.sh"
    # A filter or fsmonitor must still answer; cat passes stdin through.
    script.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\ncat >/dev/null 2>&1 || true\n')
    script.chmod(0o755)
    return script, marker


def plant_fsmonitor(config: Path, script: Path) -> None:
    with config.open("a") as file:
        file.write(f"[core]\n\tfsmonitor = {script}\n")


async def delete(client: Any, session_id: str, *, force: bool = False) -> tuple[int, Any]:
    response = await client.delete(
        f"/api/sessions/{session_id}", params={"force": "true"} if force else None
    )
    return response.status, await response.json() if response.status != 202 else None


def admin_dir(repo: Path, worktree: str) -> Path:
    admin = admin_dir_of(common_dir_of(str(repo)), worktree)
    assert admin is not None
    return Path(admin)


# host git at create, at DELETE's unsaved-work check, in the orphan sweep


@pytest.mark.docker
async def test_hooks_planted_in_the_repository_do_not_run_at_create_or_delete(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    script, marker = evil_script(tmp_path)
    hooks = git_repo / ".git" / "hooks"
    for name in ("post-checkout", "reference-transaction", "post-index-change", "pre-auto-gc"):
        (hooks / name).write_text(f"#!/bin/sh\n{script} {name}\n")
        (hooks / name).chmod(0o755)
    session = await create_running(client, git_repo)
    assert session["status"] == "running", session
    status, _ = await delete(client, session["id"])
    assert status == 202
    await wait_for(client, session["id"], lambda s: s["status"] == "gone")
    assert not Path(session["worktree_path"]).exists()
    assert not marker.exists(), marker.read_text()


@pytest.mark.docker
async def test_fsmonitor_in_repository_config_does_not_run_at_the_unsaved_work_check(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    script, marker = evil_script(tmp_path)
    session = await create_running(client, git_repo)
    (Path(session["worktree_path"]) / "draft.txt").write_text("not committed\n")
    plant_fsmonitor(git_repo / ".git" / "config", script)
    status, body = await delete(client, session["id"])
    assert status == 409, body
    [repo] = body["error"]["details"]["repositories"]
    assert repo["uncommitted"] == ["?? draft.txt"]
    assert not marker.exists(), marker.read_text()


@pytest.mark.docker
async def test_a_rewritten_worktree_git_file_is_ignored_by_host_git(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    script, marker = evil_script(tmp_path)
    session = await create_running(client, git_repo)
    worktree = Path(session["worktree_path"])
    (worktree / "draft.txt").write_text("not committed\n")
    # What a container could do in its own /workspace: its own repository, with a config
    # that runs a program, and the worktree's .git file pointing at it.
    decoy = tmp_path / "decoy"
    git(tmp_path, "init", "-q", str(decoy))
    (decoy / ".git").rename(worktree / ".evil")
    plant_fsmonitor(worktree / ".evil" / "config", script)
    (worktree / ".git").write_text("gitdir: .evil\n")

    status, body = await delete(client, session["id"])
    assert not marker.exists(), marker.read_text()
    assert status == 409, body
    [repo] = body["error"]["details"]["repositories"]
    # Answered from the worktree's real index and HEAD, found through the main repository.
    assert sorted(repo["uncommitted"]) == ["?? .evil/", "?? draft.txt"]
    assert repo["unique_commits"] == 0

    # A forced delete still removes the worktree (git's own check of the .git file is
    # satisfied again first) and keeps the branch.
    status, body = await delete(client, session["id"], force=True)
    assert status == 202, body
    await wait_for(client, session["id"], lambda s: s["status"] == "gone")
    assert not worktree.exists()
    assert git(git_repo, "branch", "--list", session["branch_name"])
    assert not marker.exists(), marker.read_text()


@pytest.mark.docker
async def test_a_populated_submodule_is_never_entered_and_counts_as_unsaved(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    script, marker = evil_script(tmp_path)
    sub = make_repo(tmp_path / "sub")
    git(git_repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub")
    git(git_repo, "commit", "-qm", "add a submodule")
    session = await create_running(client, git_repo)
    worktree = Path(session["worktree_path"])
    # Populated from inside the container: its .git is the container's, with a config of
    # its choosing; git status would run git inside it to see whether it is dirty.
    (worktree / "sub").rmdir()
    git(tmp_path, "clone", "-q", str(sub), str(worktree / "sub"))
    plant_fsmonitor(worktree / "sub" / ".git" / "config", script)
    (worktree / "sub" / "work.txt").write_text("inside the submodule\n")

    status, body = await delete(client, session["id"])
    assert not marker.exists(), marker.read_text()
    assert status == 409, body
    [repo] = body["error"]["details"]["repositories"]
    assert repo["uncommitted"] == ["?? sub/ (a submodule; not inspected)"]


@pytest.mark.docker
async def test_the_orphan_sweep_runs_nothing_planted(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    script, marker = evil_script(tmp_path)
    manager = client.app[MANAGER]
    worktrees = manager.worktrees_dir
    with_work = worktrees / "ghost" / "repo"
    redirected = worktrees / "redirected-ghost" / "repo"
    for path, branch in ((with_work, "corral/ghost"), (redirected, "corral/redirected-ghost")):
        git(git_repo, "worktree", "add", "-q", "-b", branch, str(path), "main")
    (with_work / "notes.txt").write_text("not committed anywhere\n")
    plant_fsmonitor(git_repo / ".git" / "config", script)
    decoy = tmp_path / "decoy"
    git(tmp_path, "init", "-q", str(decoy))
    (decoy / ".git").rename(redirected / ".evil")
    plant_fsmonitor(redirected / ".evil" / "config", script)
    (redirected / ".git").write_text("gitdir: .evil\n")

    sweeper = OrphanSweeper(manager, remove=True)
    await sweeper.sweep_worktrees()
    kept = {w.path: w for w in sweeper.worktrees}
    assert kept[str(with_work)].uncommitted == 1
    assert kept[str(with_work)].repository == str(git_repo)
    # Its own .git file is all that names a repository, and it leads nowhere trusted: kept.
    assert kept[str(redirected)].repository is None
    assert (redirected / "README.md").exists()
    assert not marker.exists(), marker.read_text()


# inside a real container


@pytest.mark.docker
async def test_git_in_the_container_commits_to_its_branch_and_nothing_else(
    client: Any, git_repo: Path, agent_image: str
) -> None:
    session = await create_running(client, git_repo, image=agent_image)
    assert session["status"] == "running", session
    cid = session["container_id"]
    main_before = git(git_repo, "rev-parse", "main")
    done = docker_exec(
        cid,
        "cd /workspace && echo x > x.txt && git add x.txt && "
        "git -c user.email=agent@example.invalid -c user.name=agent commit -qm inside && "
        "git rev-parse HEAD",
    )
    assert done.returncode == 0, done.stderr
    inside = done.stdout.strip()
    assert git(git_repo, "rev-parse", session["branch_name"]) == inside
    assert git(git_repo, "log", "-1", "--format=%s", session["branch_name"]) == "inside"
    assert git(git_repo, "rev-parse", "main") == main_before

    common = git_repo / ".git"
    admin = admin_dir(git_repo, session["worktree_path"])
    targets = {
        "a hook": common / "hooks" / "post-checkout",
        "the repository config": common / "config",
        "the user's branch": common / "refs" / "heads" / "main",
        "info/attributes": common / "info" / "attributes",
        "an alternates file": common / "objects" / "info" / "alternates",
        "the admin dir's commondir": admin / "commondir",
        "the admin dir's gitdir": admin / "gitdir",
        "per-worktree config": admin / "config.worktree",
        "the worktree's .git file": Path("/workspace/.git"),
    }
    for what, path in targets.items():
        tried = docker_exec(cid, f"echo planted >> '{path}'")
        assert tried.returncode != 0, f"the container could write {what}"
        assert "Read-only file system" in tried.stderr, (what, tried.stderr)
    assert git(git_repo, "rev-parse", "main") == main_before
    assert "planted" not in (common / "config").read_text()
    assert "planted" not in (admin / "commondir").read_text()


@pytest.mark.docker
async def test_attributes_and_worktree_config_from_the_container_run_no_filter(
    client: Any, git_repo: Path, tmp_path: Path, agent_image: str
) -> None:
    script, marker = evil_script(tmp_path)
    # The user's choice: per-worktree config on. A filter driver there would run on the host
    # for every file git status re-reads, selected by the container's .gitattributes.
    git(git_repo, "config", "extensions.worktreeConfig", "true")
    session = await create_running(client, git_repo, image=agent_image)
    cid = session["container_id"]
    docker_exec(
        cid, "echo '* filter=evil' > /workspace/.gitattributes && touch -d @0 /workspace/README.md"
    )
    planted = docker_exec(
        cid, f"cd /workspace && git config --worktree filter.evil.clean '{script}'"
    )
    status, body = await delete(client, session["id"])
    assert not marker.exists(), marker.read_text()
    assert planted.returncode != 0, "the container could write its per-worktree config"
    assert status == 409, body
    [repo] = body["error"]["details"]["repositories"]
    assert "?? .gitattributes" in repo["uncommitted"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a repository owned by another user")
async def test_of_the_users_global_config_only_safe_directory_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, marker = evil_script(tmp_path)
    hooks = tmp_path / "global-hooks"
    hooks.mkdir()
    (hooks / "post-checkout").write_text(f"#!/bin/sh\n{script} post-checkout\n")
    (hooks / "post-checkout").chmod(0o755)
    repo = make_repo(tmp_path / "theirs")
    # Another user's repository, which this user trusts by name in the global config.
    subprocess.run(["chown", "-R", "4321:4321", str(repo)], check=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        f"[safe]\n\tdirectory = {repo}\n[core]\n\thooksPath = {hooks}\n\tfsmonitor = {script}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(git_boundary, "_carried", None)  # read the user's config anew

    info = await wt.resolve_repository(str(repo))
    worktree = tmp_path / "data" / "worktrees" / "s" / "repo"
    await wt.add_worktree(info.root, str(worktree), "corral/s", "main", new_branch=True)
    (worktree / "draft.txt").write_text("x\n")
    work = await wt.unsaved_work(str(worktree), "corral/s", repo_root=info.root)
    assert not marker.exists(), marker.read_text()
    assert work.uncommitted == ["?? draft.txt"]


@pytest.mark.docker
async def test_a_repository_made_inside_a_worktree_is_refused_as_a_session_repository(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    script, marker = evil_script(tmp_path)
    session = await create_running(client, git_repo)
    # What a container can make in /workspace: a repository whose config has a filter
    # that its own .gitattributes selects; checking it out would run the filter.
    planted = make_repo(Path(session["worktree_path"]) / "planted")
    (planted / ".gitattributes").write_text("* filter=evil\n")
    git(planted, "add", ".gitattributes")
    git(planted, "commit", "-qm", "attributes")
    with (planted / ".git" / "config").open("a") as config:
        config.write(f'[filter "evil"]\n\tsmudge = {script}\n\tclean = {script}\n')

    response = await client.post(
        "/api/sessions", json={"repo_path": str(planted), "prompt": "do it"}
    )
    body = await response.json()
    if response.status == 201:  # made after all: let its checkout run, then judge
        await wait_for(client, body["session"]["id"], lambda s: s["status"] != "creating")
    assert not marker.exists(), marker.read_text()
    assert response.status == 400, body
    assert body["error"]["code"] == "INVALID_REQUEST"
    assert "data folder" in body["error"]["message"]


async def test_removing_a_worktree_whose_git_file_became_a_symlink_writes_nothing_through_it(
    git_repo: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "authorized_keys"
    victim.write_text("precious\n")
    worktree = tmp_path / "data" / "worktrees" / "s" / "repo"
    await wt.add_worktree(str(git_repo), str(worktree), "corral/s", "main", new_branch=True)
    (worktree / ".git").unlink()
    (worktree / ".git").symlink_to(victim)
    await wt.remove_worktree(str(git_repo), str(worktree))
    assert victim.read_text() == "precious\n"
    assert not worktree.exists()
    assert git(git_repo, "branch", "--list", "corral/s")


def test_a_ref_that_never_ends_costs_host_git_bounded_memory(
    git_repo: Path, tmp_path: Path
) -> None:
    worktree = tmp_path / "data" / "worktrees" / "s" / "repo"
    git(git_repo, "worktree", "add", "-q", "-b", "corral/s", str(worktree), "main")
    # refs/heads/corral/ is writable in a container: its branch made a symlink to an endless
    # file, which git reads to the end whenever it resolves HEAD.
    ref = git_repo / ".git" / "refs" / "heads" / "corral" / "s"
    ref.unlink()
    ref.symlink_to("/dev/zero")
    # In a process of its own, so that the largest child it waited for is this git; its own
    # data limit (inherited by git) keeps a run without the bound from starving the machine.
    script = f"""
import asyncio, resource
resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))
from daemon.core import git, worktrees as wt
git.GIT_MEMORY_LIMIT = 256 << 20
try:
    asyncio.run(wt.unsaved_work({str(worktree)!r}, "corral/s", repo_root={str(git_repo)!r}))
except wt.GitError as exc:
    print("refused:", exc.message)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    refused, peak_kib = done.stdout.splitlines()
    assert refused.startswith("refused: git "), done.stdout
    assert int(peak_kib) < 400 * 1024, f"git grew to {int(peak_kib) // 1024} MiB"
