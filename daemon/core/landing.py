"""Merging a session's branch back into a target branch without losing anything.

Everything is git plumbing on the repository's refs and objects: ``merge-tree
--write-tree`` for the verdict and the result's tree, ``commit-tree`` for new commits,
``update-ref`` with the old value for every ref move (a ref that moved meanwhile refuses
the move instead of being overwritten). The session's worktree is only read, never
written; its container-written index is never used. Before the target moves, its old
commit is kept under ``refs/corral/backup/<target>/<UTC time>``. Nothing is forced, reset
or deleted; a refusal answers what it would have cost (:class:`MergeResult`).

All git runs through ``daemon/core/git.py`` (the git boundary).
"""

# Every public call takes a per-call timeout on purpose (see daemon/core/git.py).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from daemon.core import git
from daemon.core.changes_models import MergeRefusalReason, MergeRequest, MergeResult, Strategy
from daemon.core.errors import Conflict, InvalidRequest
from daemon.core.git import GitDirs, GitError
from daemon.core.gitdirs import admin_dir_of, common_dir_of, locate_worktree
from daemon.core.models import Repository
from daemon.core.unsaved import uncommitted_files

__all__ = ["MergeRefused", "ask_agent_message", "merge"]

log = structlog.get_logger(__name__)

# A container writes the branch's commits: bound what is read and replayed from them.
_MAX_COMMIT_BYTES = 1024 * 1024
_MAX_REPLAYED = 1000
_MAX_LISTED = 200
_MAX_CONFLICTS = 500
_MAX_UNCOMMITTED_SHOWN = 50
_FALLBACK_NAME = "corral"
_FALLBACK_EMAIL = "corral@localhost"

# Merges into one repository take turns: two at once would race on the same target.
_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


class MergeRefused(Conflict):
    """409 with the :class:`MergeResult` that says why, as ``details``."""

    def __init__(self, message: str, result: MergeResult) -> None:
        super().__init__(message, result.model_dump(mode="json"))
        self.result = result


@dataclass(frozen=True)
class _Dirs(GitDirs):
    """GitDirs plus environment git needs for one call (a scratch index, an identity).

    ``run`` passes only GitDirs' environment through to git, so this is how it gets there.
    """

    extra: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra)
        return env


def _clean_env_value(value: str) -> str:
    # A container-written commit may hold a NUL, which no environment variable can.
    return value.replace("\0", "")


@dataclass
class _Repo:
    """One repository's refs and objects, reached through its common git dir."""

    dirs: GitDirs
    timeout: float

    @property
    def cwd(self) -> str:
        return self.dirs.git_dir

    async def out(self, *args: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
        dirs = _Dirs(self.dirs.git_dir, extra=extra) if extra else self.dirs
        return await git.run_git(*args, cwd=self.cwd, timeout=self.timeout, dirs=dirs)

    async def code(self, *args: str) -> tuple[int, str, str]:
        return await git.run(args, self.cwd, self.timeout, self.dirs)

    async def commit_of(self, ref: str) -> str | None:
        code, out, _ = await self.code("rev-parse", "--verify", "--quiet", "--end-of-options",
                                       f"{ref}^{{commit}}")  # fmt: skip
        return out.strip() if code == 0 and out.strip() else None

    async def tree_of(self, commit: str) -> str:
        return (await self.out("rev-parse", "--verify", "--end-of-options",
                               f"{commit}^{{tree}}")).strip()  # fmt: skip

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        code, _, err = await self.code("merge-base", "--is-ancestor", ancestor, descendant)
        if code not in (0, 1):
            raise git.failure(("merge-base",), code, err)
        return code == 0

    async def merge_tree(self, ours: str, theirs: str) -> tuple[str | None, list[str]]:
        """(tree, []) for a clean merge, (None, conflicting files) otherwise."""
        code, out, err = await self.code("merge-tree", "--write-tree", "-z", "--name-only",
                                         "--no-messages", ours, theirs)  # fmt: skip
        if code not in (0, 1):
            raise git.failure(("merge-tree",), code, err)
        tree, *names = out.split("\0")
        if code == 0:
            return tree.strip(), []
        files = list(dict.fromkeys(n for n in names if n))
        return None, files[:_MAX_CONFLICTS]

    async def commit_tree(self, tree: str, parents: list[str], message: str,
                          identity: tuple[tuple[str, str], ...]) -> str:  # fmt: skip
        with _scratch() as folder:
            message_file = folder / "message"
            await asyncio.to_thread(message_file.write_text, message, "utf-8", "surrogateescape")
            args = ["commit-tree", tree]
            for parent in parents:
                args += ["-p", parent]
            out = await self.out(*args, "-F", str(message_file), extra=identity)
        return out.strip()


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A private folder (mode 0700) for a message file or a scratch index."""
    folder = Path(tempfile.mkdtemp(prefix="corral-merge-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _user_identity(repo: _Repo) -> tuple[tuple[str, str], ...]:
    """The user's git identity for new commits, as GIT_AUTHOR_*/GIT_COMMITTER_* variables.

    What the daemon's environment sets wins (``run`` passes it on); then the repository's
    config; then the user's global and system config, which ``run`` hides from git (it
    reads them with the safe config, as data); else corral's own name.
    """
    found: dict[str, str] = {}
    for key, default in (("name", _FALLBACK_NAME), ("email", _FALLBACK_EMAIL)):
        code, out, _ = await repo.code("config", "--get", f"user.{key}")
        value = out.strip() if code == 0 else ""
        for scope in ("--global", "--system"):
            if value:
                break
            with contextlib.suppress(OSError, TimeoutError):
                values = await git.read_user_config(scope, f"user.{key}")
                value = values[-1].strip() if values else ""
        found[key] = _clean_env_value(value) or default
    extra: list[tuple[str, str]] = []
    for role in ("AUTHOR", "COMMITTER"):
        for key in ("name", "email"):
            var = f"GIT_{role}_{key.upper()}"
            if not os.environ.get(var):
                extra.append((var, found[key]))
    return tuple(extra)


@dataclass(frozen=True)
class _Checkout:
    path: str
    dirs: GitDirs


async def _checkouts_of(repo: _Repo, target: str) -> list[_Checkout]:
    """Every existing worktree of the repository with ``target`` checked out."""
    out = await repo.out("worktree", "list", "--porcelain", "-z")
    common = repo.dirs.git_dir
    found: list[_Checkout] = []
    entries = [e for e in out.split("\0\0") if e.strip("\0")]
    for index, entry in enumerate(entries):
        fields = {k: v for k, _, v in (f.partition(" ") for f in entry.split("\0") if f)}
        path = fields.get("worktree")
        if path is None or fields.get("branch") != f"refs/heads/{target}":
            continue
        if not await asyncio.to_thread(os.path.isdir, path):
            continue  # registered but gone: nothing there to leave behind
        real = await asyncio.to_thread(os.path.realpath, path)
        # The first entry is the main worktree; the others are linked ones, whose admin
        # dir is found from the repository's own records, never from their .git file.
        if index == 0:
            dirs = GitDirs(git_dir=common, work_tree=real)
        else:
            admin = await asyncio.to_thread(admin_dir_of, common, path)
            if admin is None:
                raise GitError(f"{path} has {target} checked out but cannot be located")
            dirs = GitDirs(git_dir=admin, common_dir=common, work_tree=real)
        found.append(_Checkout(path, dirs))
    return found


async def _snapshot(repo: _Repo, located: GitDirs, base: str, session_name: str,
                    identity: tuple[tuple[str, str], ...]) -> str | None:  # fmt: skip
    """A commit on ``base`` of the worktree's files as they are; None when they equal it.

    Built in a scratch index (the worktree's own index is the container's), written as
    objects only: no ref moves here.
    """
    with _scratch() as folder:
        index = str(folder / "index")
        dirs = _Dirs(located.git_dir, located.common_dir, located.work_tree,
                     extra=(("GIT_INDEX_FILE", index),))  # fmt: skip
        assert located.work_tree is not None
        cwd = located.work_tree
        await git.run_git("read-tree", base, cwd=cwd, timeout=repo.timeout, dirs=dirs)
        await git.run_git("add", "-A", cwd=cwd, timeout=repo.timeout, dirs=dirs)
        tree = (await git.run_git("write-tree", cwd=cwd, timeout=repo.timeout, dirs=dirs)).strip()
    if tree == await repo.tree_of(base):
        return None
    return await repo.commit_tree(
        tree, [base], f"corral: uncommitted work of {session_name}\n", identity
    )


@dataclass
class _Plan:
    """What the dry run found: the verdict and what a real merge needs."""

    result: MergeResult
    branch_ref: str
    branch_before: str
    head: str
    located: GitDirs | None


async def _verdict(repo: _Repo, strategy: Strategy, target: str, head: str,
                   identity: tuple[tuple[str, str], ...]
                   ) -> tuple[MergeRefusalReason | None, list[str]]:  # fmt: skip
    if await repo.is_ancestor(head, target):
        return "nothing_to_merge", []
    if strategy == "fast-forward":
        return (None, []) if await repo.is_ancestor(target, head) else ("not_fast_forward", [])
    if strategy == "rebase":
        refusal, conflicts, new = await _replay(repo, target, head, identity)
        if refusal is None and new == target:
            return "nothing_to_merge", []
        return refusal, conflicts
    tree, conflicts = await repo.merge_tree(target, head)
    if tree is None:
        return "conflicts", conflicts
    # Squashed or rebased before: every change is in already, a merge would add nothing.
    return ("nothing_to_merge" if tree == await repo.tree_of(target) else None), []


async def _replay(repo: _Repo, onto: str, head: str, identity: tuple[tuple[str, str], ...]
                  ) -> tuple[MergeRefusalReason | None, list[str], str]:  # fmt: skip
    """Replay ``onto..head`` onto ``onto``, one commit at a time, as cherry-picks keeping
    each commit's author and message; answer (refusal, conflicts, the last commit).

    git 2.39's merge-tree has no ``--merge-base``: each step merges the commit with a
    stand-in commit that has the result so far as its tree and the commit's parent as its
    parent, so the merge base is exactly that parent. Everything made here is objects only;
    a dry run leaves them unreachable (git gc removes them).
    """
    listed = await repo.out("rev-list", "--reverse", "--topo-order", "--no-merges",
                            f"--max-count={_MAX_REPLAYED + 1}", f"{onto}..{head}")  # fmt: skip
    commits = listed.split()
    if len(commits) > _MAX_REPLAYED:
        raise InvalidRequest(
            f"more than {_MAX_REPLAYED} commits to rebase; merge or squash instead"
        )
    current = onto
    for commit in commits:
        parent = await repo.commit_of(f"{commit}^")
        if parent is None:
            raise InvalidRequest(f"commit {commit} has no parent: the histories are unrelated")
        onto_tree = await repo.tree_of(current)
        stand_in = await repo.commit_tree(onto_tree, [parent], "corral rebase step\n",
                                          identity)  # fmt: skip
        tree, conflicts = await repo.merge_tree(stand_in, commit)
        if tree is None:
            return "conflicts", conflicts, current
        if tree == onto_tree:
            # Already in the target (git rebase drops such commits too).
            continue
        author, message = await _read_commit(repo, commit)
        current = await repo.commit_tree(tree, [current], message, (*identity, *author))
    return None, [], current


async def _read_commit(repo: _Repo, commit: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """A commit's author (as GIT_AUTHOR_* variables) and raw message, bounded in size."""
    size = int((await repo.out("cat-file", "-s", commit)).strip())
    if size > _MAX_COMMIT_BYTES:
        raise InvalidRequest(f"commit {commit} is over {_MAX_COMMIT_BYTES} bytes; not replayed")
    raw = await repo.out("cat-file", "commit", commit)
    headers, _, message = raw.partition("\n\n")
    author: tuple[tuple[str, str], ...] = ()
    for line in headers.splitlines():
        if line.startswith("author "):
            ident, _, when = line.removeprefix("author ").rpartition("> ")
            name, _, email = ident.partition(" <")
            author = (
                ("GIT_AUTHOR_NAME", _clean_env_value(name.strip()) or _FALLBACK_NAME),
                ("GIT_AUTHOR_EMAIL", _clean_env_value(email.strip())),
                ("GIT_AUTHOR_DATE", "@" + _clean_env_value(when.strip())),
            )
            break
    return author, message or "(no message)\n"


def _result(request: MergeRequest, mount: str, target: str, target_before: str,
            **fields: object) -> MergeResult:  # fmt: skip
    return MergeResult.model_validate(
        {"mount_name": mount, "strategy": request.strategy, "target_branch": target,
         "dry_run": request.dry_run, "target_before": target_before, **fields}
    )  # fmt: skip


async def _plan(repo: _Repo, source: Repository, request: MergeRequest, session_name: str,
                identity: tuple[tuple[str, str], ...]) -> _Plan:  # fmt: skip
    """The dry run: every check that needs no ref to move."""
    target = request.target_branch or source.base_branch
    if target.startswith("-") or target == source.branch_name:
        raise InvalidRequest(f"'{target}' cannot be the target of the session's branch")
    code, _, _ = await repo.code("check-ref-format", f"refs/heads/{target}")
    if code != 0:
        raise InvalidRequest(f"'{target}' is not a valid branch name")
    target_before = await repo.commit_of(f"refs/heads/{target}")
    if target_before is None:
        raise InvalidRequest(f"the target branch '{target}' is not a local branch of "
                             f"{source.path}")  # fmt: skip
    branch_ref = f"refs/heads/{source.branch_name}"
    branch_before = await repo.commit_of(branch_ref)
    if branch_before is None:
        raise Conflict(f"the session's branch '{source.branch_name}' no longer exists")

    located: GitDirs | None = None
    uncommitted: list[str] = []
    if await asyncio.to_thread(os.path.isdir, source.worktree_path):
        located = await locate_worktree(source.worktree_path, source.path)
        uncommitted = await uncommitted_files(located, repo.timeout)
    head = branch_before
    if uncommitted and request.commit_uncommitted and located is not None:
        # Made as objects now, so the verdict covers them; the branch moves only if the
        # real merge goes ahead.
        head = await _snapshot(repo, located, branch_before, session_name, identity) or head

    refusal, conflicts = await _verdict(repo, request.strategy, target_before, head, identity)
    if refusal is None and uncommitted and not request.commit_uncommitted:
        refusal = "uncommitted_changes"
    result = _result(
        request, source.mount_name, target, target_before,
        clean=refusal is None, conflicts=conflicts, refusal=refusal,
        branch_head=head, uncommitted=uncommitted[:_MAX_UNCOMMITTED_SHOWN],
        kept=_kept_unmoved(source.branch_name, target, refusal),
    )  # fmt: skip
    return _Plan(result, branch_ref, branch_before, head, located)


def _kept_unmoved(branch: str, target: str, refusal: MergeRefusalReason | None) -> str:
    if refusal is None:
        return f"Nothing was moved yet; a merge keeps the branch {branch} as it is."
    return f"Nothing was moved: {target}, the branch {branch} and every worktree are as they were."


_REFUSAL_WORDS: dict[str, str] = {
    "uncommitted_changes": "the session has uncommitted work a merge would leave out; "
    "commit it first or merge with commit_uncommitted",
    "conflicts": "the branches conflict",
    "not_fast_forward": "the target has commits the session's branch lacks",
    "nothing_to_merge": "the target already has every commit of the session's branch",
    "target_dirty": "the target is checked out in a worktree with local changes",
    "target_moved": "the target branch moved during the merge",
    "branch_moved": "the session's branch moved during the merge",
}


def _refuse(result: MergeResult) -> MergeRefused:
    assert result.refusal is not None
    words = _REFUSAL_WORDS[result.refusal]
    if result.conflicts:
        words += ": " + ", ".join(result.conflicts[:20])
    if result.target_worktree:
        words += f": {result.target_worktree}"
    return MergeRefused(f"merge refused: {words}", result)


@contextlib.asynccontextmanager
async def _repository_lock(common_dir: str) -> AsyncIterator[None]:
    lock = _locks.get(common_dir)
    if lock is None:
        lock = _locks[common_dir] = asyncio.Lock()
    async with lock:
        yield


async def merge(
    session_id: str, session_name: str, source: Repository, request: MergeRequest,
    *, timeout: float,
) -> MergeResult:  # fmt: skip
    """Dry-run or merge the session's branch of ``source`` as ``request`` asks.

    A dry run answers the verdict and moves nothing. A real merge raises
    :class:`MergeRefused` (409) whenever it would lose something.
    """
    bound = log.bind(session_id=session_id, mount_name=source.mount_name)
    common = await asyncio.to_thread(common_dir_of, source.path)
    repo = _Repo(GitDirs(common), timeout)
    identity = await _user_identity(repo)
    plan = await _plan(repo, source, request, session_name, identity)
    if request.dry_run:
        return plan.result
    if plan.result.refusal is not None:
        raise _refuse(plan.result)
    async with _repository_lock(common):
        return await _land(repo, source, request, plan, identity, bound)


async def _land(repo: _Repo, source: Repository, request: MergeRequest, plan: _Plan,
                identity: tuple[tuple[str, str], ...], bound: Any
                ) -> MergeResult:  # fmt: skip
    result = plan.result
    target = result.target_branch
    target_ref = f"refs/heads/{target}"
    old = result.target_before

    checkouts = await _checkouts_of(repo, target)
    for checkout in checkouts:
        if await uncommitted_files(checkout.dirs, repo.timeout):
            result = result.model_copy(update={
                "clean": False, "refusal": "target_dirty", "target_worktree": checkout.path,
                "kept": f"Nothing was moved: {target} is checked out in {checkout.path} with "
                "local changes, which a merge there could overwrite; commit or stash them.",
            })  # fmt: skip
            raise _refuse(result)

    committed: str | None = None
    if plan.head != plan.branch_before:
        # Step 1: the session's uncommitted work becomes a commit on its branch, but only if
        # the branch is still where the snapshot was taken from.
        code, _, _ = await repo.code("update-ref", "-m", "corral: commit uncommitted work",
                                     plan.branch_ref, plan.head, plan.branch_before)  # fmt: skip
        if code != 0:
            raise _refuse(result.model_copy(update={
                "clean": False, "refusal": "branch_moved",
                "kept": f"Nothing was moved: the branch {source.branch_name} changed "
                "while merging; try again.",
            }))  # fmt: skip
        committed = plan.head
        bound.info("merge_uncommitted_committed", commit=committed)
        if plan.located is not None:
            # The worktree's index still holds the old commit's tree, so git status there
            # would show the committed work as staged to be undone. Reset the index (never
            # the files) to the new commit; the files already are what it holds. The index
            # is written, never read, by the daemon.
            code, _, err = await git.run(("read-tree", committed), plan.located.work_tree or "/",
                                         repo.timeout, plan.located)  # fmt: skip
            if code != 0:
                bound.warning("merge_index_not_reset", error=git.trim(err))

    backup = await _write_backup(repo, target, old)
    new = await _make_commit(repo, source, request, result, plan.head, identity)

    code, _, err = await repo.code("update-ref", "-m", f"corral: {request.strategy} of "
                                   f"{source.branch_name}", target_ref, new, old)  # fmt: skip
    if code != 0:
        bound.warning("merge_target_moved", target=target, error=git.trim(err))
        raise _refuse(result.model_copy(update={
            "clean": False, "refusal": "target_moved", "backup_ref": backup,
            "committed_uncommitted": committed,
            "kept": f"{target} moved while merging and was left as it is now; its commit "
            f"before the merge is kept at {backup}, and the branch {source.branch_name} "
            "is untouched" + (" (but for the commit of its uncommitted work)." if committed
                              else "."),
        }))  # fmt: skip
    bound.info("merge_done", target=target, strategy=request.strategy, old=old, new=new,
               backup=backup)  # fmt: skip

    updated: str | None = None
    failed: list[str] = []
    for checkout in checkouts:
        code, _, err = await git.run(("read-tree", "-m", "-u", old, new), checkout.path,
                                     repo.timeout, checkout.dirs)  # fmt: skip
        if code == 0:
            updated = updated or checkout.path
        else:
            failed.append(checkout.path)
            bound.warning("merge_checkout_not_updated", path=checkout.path, error=git.trim(err))
    kept = (f"The branch {source.branch_name} is kept as it was"
            + (" plus a commit of its uncommitted work" if committed else "")
            + f"; {target}'s previous commit is kept at {backup}.")  # fmt: skip
    if updated:
        kept += f" The checkout of {target} in {updated} now shows the merge."
    if failed:
        kept += (f" The checkout of {target} in {', '.join(failed)} could not be updated: "
                 f"the branch has moved but its files are those of {old[:12]}.")  # fmt: skip
    return result.model_copy(update={
        "clean": True, "target_after": new, "backup_ref": backup,
        "updated_checkout": updated, "committed_uncommitted": committed, "kept": kept,
    })  # fmt: skip


async def _write_backup(repo: _Repo, target: str, commit: str) -> str:
    """``refs/corral/backup/<target>/<UTC time>`` = ``commit``; never replaces one."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    zero = "0" * len(commit)
    for attempt in range(20):
        ref = f"refs/corral/backup/{target}/{stamp}" + (f"-{attempt}" if attempt else "")
        # The zero old value: create only, refused if the ref exists.
        code, _, _ = await repo.code("update-ref", "-m", "corral: backup before merge", ref,
                                     commit, zero)  # fmt: skip
        if code == 0:
            return ref
    raise GitError(f"could not write a backup ref for {target}")


async def _make_commit(repo: _Repo, source: Repository, request: MergeRequest,
                       result: MergeResult, head: str,
                       identity: tuple[tuple[str, str], ...]) -> str:  # fmt: skip
    """The target's new commit for the strategy (objects only; no ref moves)."""
    old, target, branch = result.target_before, result.target_branch, source.branch_name
    if request.strategy == "fast-forward":
        return head
    if request.strategy == "rebase":
        refusal, conflicts, new = await _replay(repo, old, head, identity)
        if refusal is not None:
            raise _refuse(result.model_copy(update={
                "clean": False, "refusal": refusal, "conflicts": conflicts}))  # fmt: skip
        return new
    tree, conflicts = await repo.merge_tree(old, head)
    if tree is None:
        raise _refuse(result.model_copy(update={
            "clean": False, "refusal": "conflicts", "conflicts": conflicts}))  # fmt: skip
    if request.strategy == "merge":
        message = request.message or f"Merge branch '{branch}' into {target}\n"
        return await repo.commit_tree(tree, [old, head], message, identity)
    message = request.message or await _squash_message(repo, branch, old, head)
    return await repo.commit_tree(tree, [old], message, identity)


async def _squash_message(repo: _Repo, branch: str, old: str, head: str) -> str:
    listed = await repo.out("log", "--no-show-signature", "--no-decorate", "-z",
                            "--format=%h %s", f"--max-count={_MAX_LISTED + 1}",
                            f"{old}..{head}")  # fmt: skip
    lines = [f"* {line.strip()}" for line in listed.split("\0") if line.strip()]
    more = len(lines) > _MAX_LISTED
    body = "\n".join(lines[:_MAX_LISTED]) + ("\n* ..." if more else "")
    return f"Squashed commits of branch '{branch}'\n\n{body}\n"


def ask_agent_message(target: str, strategy: Strategy, result: MergeResult) -> str:
    """What the agent is asked when its branch does not merge cleanly into ``target``."""
    files = "\n".join(f"- {name}" for name in result.conflicts) or "- (none listed)"
    if result.refusal == "conflicts":
        why = f"Your branch conflicts with {target} in these files:\n{files}\n"
    else:
        why = f"{target} has commits your branch does not have, so it cannot fast-forward.\n"
    return (
        f"Merging your branch into {target} ({strategy}) was refused. {why}"
        f"Please rebase your branch onto {target} (git rebase {target}), resolve the "
        "conflicts keeping both sides' intent, run the tests, and commit. "
        "The merge will then be tried again."
    )
