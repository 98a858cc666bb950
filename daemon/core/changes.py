"""A session's work as git sees it: its diff against the base branch, and its commits.

Everything read here is the container's: the worktree, the branch, the objects, the
worktree's index. So every git call goes through ``daemon/core/git.py`` with explicit
:class:`GitDirs`, diff-like calls carry ``--no-ext-diff --no-textconv --no-color``, paths
come out ``-z``, files larger than ``big_file_bytes`` are never read whole (git counts them
as binary), and the session's own index is never read or written: uncommitted work is read
through a temporary index of the daemon's made from the branch head alone (the session's
index could mark a changed file as unchanged), with untracked files added as intent-to-add
(never hashed into the repository's objects).
"""

# Every public call takes a per-call timeout on purpose (see daemon/core/git.py).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from daemon.core import git, homefs
from daemon.core.changes_models import (
    Commit,
    DiffTotals,
    FileChange,
    FileStatus,
    Include,
    RepoCommits,
)
from daemon.core.errors import Conflict, InvalidRequest, PayloadTooLarge
from daemon.core.git import GitDirs, GitError
from daemon.core.gitdirs import common_dir_of, locate_worktree
from daemon.core.models import Repository

__all__ = [
    "MAX_COMMITS",
    "DiffLimits",
    "DiffView",
    "commits",
    "diff_view",
    "heads",
    "patch",
]

MAX_COMMITS = 500
_DIFF_FLAGS = ("--no-ext-diff", "--no-textconv", "--no-color", "-M")
_STATUS: dict[str, FileStatus] = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "copied",
    "T": "type_changed",
}
_NULL_MODE = "000000"


@dataclass(frozen=True)
class DiffLimits:
    max_patch_bytes: int
    max_total_patch_bytes: int
    big_file_bytes: int
    timeout: float


@dataclass(frozen=True)
class _IndexedDirs(GitDirs):
    """A worktree's directories read through the daemon's own index file."""

    index_file: str = ""

    def env(self) -> dict[str, str]:
        env = super().env()
        env["GIT_INDEX_FILE"] = self.index_file
        return env


@dataclass
class _Entry:
    path: str  # as git wrote it (may hold surrogates: a non-UTF-8 name)
    old_path: str | None
    status: FileStatus
    old_mode: str
    new_mode: str
    additions: int = 0
    deletions: int = 0
    binary: bool = False
    summarised: bool = False

    def api(self) -> FileChange:
        mode_changed = self.old_mode != self.new_mode and _NULL_MODE not in (
            self.old_mode,
            self.new_mode,
        )
        return FileChange(
            path=shown(self.path),
            old_path=shown(self.old_path) if self.old_path is not None else None,
            status=self.status,
            additions=self.additions,
            deletions=self.deletions,
            binary=self.binary,
            old_mode=self.old_mode if mode_changed else None,
            new_mode=self.new_mode if mode_changed else None,
            summarised=self.summarised,
        )


@dataclass
class DiffView:
    """One repository's diff: every changed file (in git's order), its ends and totals."""

    merge_base: str
    head_commit: str
    includes_uncommitted: bool
    entries: list[_Entry] = field(default_factory=list)

    @property
    def totals(self) -> DiffTotals:
        return DiffTotals(
            files=len(self.entries),
            additions=sum(e.additions for e in self.entries),
            deletions=sum(e.deletions for e in self.entries),
        )

    def page(self, offset: int, limit: int) -> tuple[list[FileChange], int | None]:
        chosen = self.entries[offset : offset + limit]
        after = offset + len(chosen)
        return [e.api() for e in chosen], after if after < len(self.entries) else None

    def find(self, path: str) -> _Entry | None:
        """The changed file named ``path`` as the API shows it; None if it is not one."""
        return next((e for e in self.entries if shown(e.path) == path), None)


def shown(path: str) -> str:
    """A path as JSON can carry it: bytes that are not UTF-8 become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- where to look ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    repo: GitDirs  # refs and objects only
    worktree: GitDirs | None  # None when the worktree folder is gone (commits still count)

    @property
    def cwd(self) -> str:
        return self.repo.git_dir


async def _place(repo: Repository, timeout: float) -> _Place:
    if await asyncio.to_thread(os.path.isdir, repo.worktree_path):
        located = await locate_worktree(repo.worktree_path, repo.path)
        return _Place(located.repository_only(), located)
    common = await asyncio.to_thread(common_dir_of, repo.path)
    return _Place(GitDirs(common), None)


async def _commit_of(place: _Place, branch: str, timeout: float) -> str | None:
    code, out, _ = await git.run(
        ("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}"),
        place.cwd,
        timeout,
        place.repo,
    )
    return out.strip() if code == 0 else None


async def _ends(place: _Place, repo: Repository, timeout: float) -> tuple[str, str]:
    """(merge base, branch head) of the session's branch with its base branch."""
    head = await _commit_of(place, repo.branch_name, timeout)
    if head is None:
        raise Conflict(f"the session's branch {repo.branch_name} no longer exists")
    base = await _commit_of(place, repo.base_branch, timeout)
    if base is None:
        raise Conflict(f"the base branch {repo.base_branch} no longer exists")
    code, out, err = await git.run(("merge-base", head, base), place.cwd, timeout, place.repo)
    if code == 1:
        raise Conflict(f"{repo.branch_name} shares no history with {repo.base_branch}")
    if code != 0:
        raise git.failure(("merge-base",), code, err)
    return out.strip(), head


async def heads(repo: Repository, timeout: float, dirs: GitDirs | None = None) -> str | None:
    """The branch's head commit; None when the branch or repository is gone. ``dirs``: the
    worktree's, already located (spares finding them again)."""
    try:
        if dirs is not None:
            place = _Place(dirs.repository_only(), dirs)
        else:
            place = await _place(repo, timeout)
        return await _commit_of(place, repo.branch_name, timeout)
    except GitError:
        return None


# --- the worktree through a temporary index -------------------------------------------


@contextlib.asynccontextmanager
async def _worktree_index(
    worktree: GitDirs, head: str, timeout: float
) -> AsyncIterator[_IndexedDirs]:
    """The worktree read through a temporary index of the daemon's at ``head``."""
    assert worktree.work_tree is not None
    temp = await asyncio.to_thread(tempfile.mkdtemp, prefix="corral-diff-")
    try:
        index = str(Path(temp) / "index")
        dirs = _IndexedDirs(worktree.git_dir, worktree.common_dir, worktree.work_tree, index)
        cwd = worktree.work_tree
        # From the tree alone, never from the session's index: that is the container's,
        # and its flags (assume-unchanged, skip-worktree) or planted stat data would make
        # git skip a changed file, hiding it from review. Every file is compared by content.
        await git.run_git("read-tree", head, cwd=cwd, timeout=timeout, dirs=dirs)
        # Untracked files (not ignored) count as added; intent-to-add hashes nothing.
        await git.run_git(
            "add", "--intent-to-add", "--all", "--", ".", cwd=cwd, timeout=timeout, dirs=dirs
        )
        yield dirs
    finally:
        await asyncio.to_thread(shutil.rmtree, temp, True)


@contextlib.asynccontextmanager
async def _diff_args(
    place: _Place, merge_base: str, head: str, include: Include, timeout: float
) -> AsyncIterator[tuple[GitDirs, str, tuple[str, ...]]]:
    """(dirs, cwd, the revisions to diff) for ``include``."""
    if include == "committed" or place.worktree is None:
        yield place.repo, place.cwd, (merge_base, head)
        return
    async with _worktree_index(place.worktree, head, timeout) as dirs:
        assert dirs.work_tree is not None
        yield dirs, dirs.work_tree, (merge_base if include == "all" else head,)


def _big(limits: DiffLimits) -> tuple[str, ...]:
    """Files over big_file_bytes are never read whole: git counts them as binary."""
    return ("-c", f"core.bigFileThreshold={limits.big_file_bytes}")


# --- the diff --------------------------------------------------------------------------


def _parse(raw: str) -> list[_Entry]:
    """``diff --raw --numstat -z`` output: raw records, then numstat records."""
    tokens = raw.split("\0")
    entries: list[_Entry] = []
    i = 0
    while i < len(tokens) and tokens[i].startswith(":"):
        meta = tokens[i][1:].split(" ")
        letter = meta[4][:1]
        if letter in ("R", "C"):
            old, new = tokens[i + 1], tokens[i + 2]
            i += 3
        else:
            old, new = "", tokens[i + 1]
            i += 2
        entries.append(
            _Entry(
                path=new,
                old_path=old or None,
                status=_STATUS.get(letter, "modified"),
                old_mode=meta[0],
                new_mode=meta[1],
            )
        )
    # numstat: "add\tdel\tpath" or, for a rename or copy, "add\tdel\t" then old, new.
    for entry in entries:
        if i >= len(tokens):
            break
        added, deleted, rest = tokens[i].split("\t", 2)
        i += 1 if rest else 3
        if added == "-":
            entry.binary = True
        else:
            entry.additions, entry.deletions = int(added), int(deleted)
    return entries


def _worktree_size(work_tree: str, path: str) -> int:
    try:
        return homefs.lstat(Path(work_tree), path).st_size
    except (OSError, homefs.HostileFile, ValueError):
        return 0


async def _tree_sizes(
    place: _Place, commit: str, paths: Sequence[str], timeout: float
) -> dict[str, int]:
    if not paths:
        return {}
    out = await git.run_git(
        "ls-tree", "-r", "-l", "-z", commit, "--", *(f":(literal){p}" for p in paths),
        cwd=place.cwd, timeout=timeout, dirs=place.repo,
    )  # fmt: skip
    sizes: dict[str, int] = {}
    for record in out.split("\0"):
        meta, _, path = record.partition("\t")
        size = meta.split()[-1] if meta else "-"
        if size.isdigit():
            sizes[path] = int(size)
    return sizes


async def _summarise(
    place: _Place,
    view: DiffView,
    entries: Sequence[_Entry],
    include: Include,
    limits: DiffLimits,
) -> None:
    """Mark files too large to send a patch of: either side over ``max_patch_bytes``.

    Only for the files asked for (a page): sizes come from the trees (``ls-tree -l``) and,
    for the worktree's side, from ``lstat`` (never through a link)."""
    if not entries:
        return
    old_paths = [e.old_path or e.path for e in entries if e.status != "added"]
    old = await _tree_sizes(place, view.merge_base if include != "uncommitted"
                            else view.head_commit, old_paths, limits.timeout)  # fmt: skip
    new_paths = [e.path for e in entries if e.status != "deleted"]
    if view.includes_uncommitted and place.worktree is not None:
        work_tree = place.worktree.work_tree
        assert work_tree is not None
        new = await asyncio.to_thread(lambda: {p: _worktree_size(work_tree, p) for p in new_paths})
    else:
        new = await _tree_sizes(place, view.head_commit, new_paths, limits.timeout)
    for entry in entries:
        larger = max(old.get(entry.old_path or entry.path, 0), new.get(entry.path, 0))
        entry.summarised = larger > limits.max_patch_bytes


async def diff_view(
    repo: Repository,
    include: Include,
    limits: DiffLimits,
    *,
    page: tuple[int, int] | None = None,
) -> DiffView:
    """The repository's diff for ``include``; files of ``page`` (offset, limit) get their
    ``summarised`` flag (it costs a look at sizes, so only for what is shown)."""
    place = await _place(repo, limits.timeout)
    merge_base, head = await _ends(place, repo, limits.timeout)
    view = DiffView(
        merge_base=merge_base,
        head_commit=head,
        includes_uncommitted=include != "committed" and place.worktree is not None,
    )
    async with _diff_args(place, merge_base, head, include, limits.timeout) as (dirs, cwd, revs):
        out = await git.run_git(
            *_big(limits), "diff", *_DIFF_FLAGS, "--raw", "--numstat", "-z", "--no-abbrev",
            *revs, "--", cwd=cwd, timeout=limits.timeout, dirs=dirs,
        )  # fmt: skip
    view.entries = _parse(out)
    if page is not None:
        offset, limit = page
        await _summarise(place, view, view.entries[offset : offset + limit], include, limits)
    return view


async def patch(
    repo: Repository, include: Include, limits: DiffLimits, path: str | None = None
) -> bytes:
    """The unified patch of one changed file (``path``, as the API shows it) or of all.

    One file's patch over ``max_patch_bytes``, or the whole over ``max_total_patch_bytes``,
    is PayloadTooLarge; a path that is not a changed file is InvalidRequest."""
    place = await _place(repo, limits.timeout)
    merge_base, head = await _ends(place, repo, limits.timeout)
    view = DiffView(merge_base, head, include != "committed" and place.worktree is not None)
    pathspec: tuple[str, ...] = ()
    bound = limits.max_total_patch_bytes
    if path is not None:
        view = await diff_view(repo, include, limits)
        entry = view.find(path)
        if entry is None:
            raise InvalidRequest(f"'{path}' is not one of the session's changed files")
        await _summarise(place, view, [entry], include, limits)
        if entry.summarised:
            raise PayloadTooLarge(
                f"'{path}' is too large to show: its patch would be over "
                f"{limits.max_patch_bytes} bytes (changes.max_patch_bytes)"
            )
        pathspec = tuple(f":(literal){p}" for p in {entry.path, entry.old_path or entry.path})
        bound = limits.max_patch_bytes
    async with _diff_args(place, view.merge_base, view.head_commit, include,
                          limits.timeout) as (dirs, cwd, revs):  # fmt: skip
        out = await git.run_git(
            *_big(limits), "diff", *_DIFF_FLAGS,
            "--full-index", "--patch", *revs, "--", *pathspec,
            cwd=cwd, timeout=limits.timeout, dirs=dirs,
        )  # fmt: skip
    data = out.encode("utf-8", "surrogateescape")
    if len(data) > bound:
        what = f"'{path}'" if path is not None else "the whole diff"
        key = "max_patch_bytes" if path is not None else "max_total_patch_bytes"
        raise PayloadTooLarge(
            f"{what} is too large to send: over {bound} bytes (changes.{key}); "
            "ask for one file with path="
        )
    return data


# --- the commits -----------------------------------------------------------------------

_LOG_FORMAT = "%x1e%H%x00%an%x00%ae%x00%aI%x00%s%x00%b%x00"
# A record: its fields, then the empty token that ends it (a file name is never empty, so
# no list of names can pass for one), then its file names.
_RECORD = re.compile(
    r"\x1e([0-9a-f]{40,64})\0([^\0]*)\0([^\0]*)\0([^\0]*)\0([^\0]*)\0([^\0]*)\0\0\n?"
)


def _parse_log(out: str) -> list[Commit]:
    found: list[Commit] = []
    position = 0
    while (match := _RECORD.match(out, position)) is not None:
        position = match.end()
        files: list[str] = []
        while position < len(out) and _RECORD.match(out, position) is None:
            end = out.find("\0", position)
            end = len(out) if end < 0 else end
            if end > position:
                files.append(shown(out[position:end]))
            position = end + 1
        sha, name, email, date, subject, body = match.groups()
        found.append(
            Commit(
                hash=sha,
                author_name=shown(name),
                author_email=shown(email),
                date=datetime.fromisoformat(date),
                subject=shown(subject),
                body=shown(body).strip(),
                files=files,
            )
        )
    return found


def _unreadable(sha: str, stamp: str) -> Commit:
    """A commit whose message the log's format could not carry: shown, with what is sure."""
    when = datetime.fromtimestamp(int(stamp) if stamp.isdigit() else 0, UTC)
    return Commit(
        hash=sha,
        author_name="",
        author_email="",
        date=when,
        subject="(this commit's message could not be read)",
    )


async def commits(repo: Repository, timeout: float) -> RepoCommits:
    """The branch's commits not on the base branch, newest first, at most MAX_COMMITS."""
    place = await _place(repo, timeout)
    merge_base, head = await _ends(place, repo, timeout)
    out = await git.run_git(
        "log", "-z", "--name-only", "--no-renames", f"--format={_LOG_FORMAT}",
        f"--max-count={MAX_COMMITS + 1}", f"{merge_base}..{head}", "--",
        cwd=place.cwd, timeout=timeout, dirs=place.repo,
    )  # fmt: skip
    # The list itself comes from rev-list (hashes and dates only, which no message can
    # fake): a commit whose message breaks the log's format (a crafted object with a NUL)
    # is still listed, never hidden from review.
    listed = await git.run_git(
        "log", "--no-patch", "--format=%H %at", f"--max-count={MAX_COMMITS + 1}",
        f"{merge_base}..{head}", "--",
        cwd=place.cwd, timeout=timeout, dirs=place.repo,
    )  # fmt: skip
    parsed = {commit.hash: commit for commit in _parse_log(out)}
    found = []
    for line in listed.splitlines():
        sha, _, stamp = line.partition(" ")
        found.append(parsed.get(sha) or _unreadable(sha, stamp))
    return RepoCommits(
        mount_name=repo.mount_name,
        branch=repo.branch_name,
        base_branch=repo.base_branch,
        commits=found[:MAX_COMMITS],
        truncated=len(found) > MAX_COMMITS,
    )
