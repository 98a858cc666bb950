"""API shapes of reviewing and landing a session's work: its diff, its commits, merging it
back, pushing it and its pull request (issue "review and land").

One module for all of them so that the handlers, the CLI and the web UI read one contract;
the OpenAPI document is generated from these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from daemon.core.models import ApiModel

FileStatus = Literal["added", "modified", "deleted", "renamed", "copied", "type_changed"]
Include = Literal["all", "committed", "uncommitted"]
Strategy = Literal["merge", "squash", "rebase", "fast-forward"]


class DiffTotals(ApiModel):
    files: int = 0
    additions: int = 0
    deletions: int = 0


class FileChange(ApiModel):
    path: str
    old_path: str | None = Field(None, description="Before a rename or copy; else null.")
    status: FileStatus
    additions: int = Field(0, description="Lines added; 0 for a binary file.")
    deletions: int = 0
    binary: bool = False
    old_mode: str | None = Field(None, description="Octal mode before, when it changed.")
    new_mode: str | None = Field(None, description="Octal mode after, when it changed.")
    summarised: bool = Field(
        False, description="Too large to show: counted, but its patch is not sent."
    )


class RepoDiff(ApiModel):
    mount_name: str
    repo_path: str
    branch: str = Field(description="The session's branch.")
    base_branch: str
    merge_base: str = Field(description="Where the branch left the base branch.")
    head_commit: str = Field(description="The branch's last commit.")
    includes_uncommitted: bool
    totals: DiffTotals
    files: list[FileChange]
    next_offset: int | None = Field(
        None, description="More files follow: pass as `offset` for the next page."
    )


class SessionDiff(ApiModel):
    session_id: str
    include: Include
    totals: DiffTotals
    repositories: list[RepoDiff]


class Commit(ApiModel):
    hash: str
    author_name: str
    author_email: str
    date: datetime
    subject: str
    body: str = ""
    files: list[str] = Field(default_factory=list)


class RepoCommits(ApiModel):
    mount_name: str
    branch: str
    base_branch: str
    commits: list[Commit] = Field(description="Newest first: the branch's commits not on the base.")
    truncated: bool = False


class SessionCommits(ApiModel):
    session_id: str
    repositories: list[RepoCommits]


class MergeRequest(ApiModel):
    strategy: Strategy = "merge"
    repository: str | None = Field(
        None, description="The mount name of the repository to merge; default the primary."
    )
    target_branch: str | None = Field(
        None, min_length=1, description="Default: the session's base branch."
    )
    message: str | None = Field(None, min_length=1, max_length=20_000)
    dry_run: bool = False
    commit_uncommitted: bool = Field(
        False, description="Commit the session's uncommitted work on its branch first."
    )


MergeRefusalReason = Literal[
    "uncommitted_changes",
    "conflicts",
    "target_dirty",
    "target_moved",
    "not_fast_forward",
    "nothing_to_merge",
    "branch_moved",
]


class MergeResult(ApiModel):
    mount_name: str
    strategy: Strategy
    target_branch: str
    dry_run: bool
    clean: bool = Field(description="Merges without conflicts (and, for a real merge, did).")
    conflicts: list[str] = Field(default_factory=list)
    refusal: MergeRefusalReason | None = None
    target_before: str
    target_after: str | None = Field(None, description="The target's commit after the merge.")
    backup_ref: str | None = Field(
        None, description="refs/corral/backup/...: the target as it was before the merge."
    )
    updated_checkout: str | None = Field(
        None, description="The user's worktree of the target, updated to the merge."
    )
    kept: str = Field(description="What the merge keeps, in a sentence, for the user.")
    branch_head: str | None = Field(
        None, description="The session's commit merged (with its uncommitted work, if asked)."
    )
    uncommitted: list[str] = Field(
        default_factory=list,
        description="The session's uncommitted files (git status lines), first 50.",
    )
    committed_uncommitted: str | None = Field(
        None, description="The commit made of the session's uncommitted work on its branch."
    )
    target_worktree: str | None = Field(
        None, description="The worktree where the target is checked out with local changes."
    )


class AskAgentRequest(ApiModel):
    strategy: Strategy = "merge"
    repository: str | None = None
    target_branch: str | None = Field(None, min_length=1)


class AskAgentResult(ApiModel):
    sent: bool
    message: str = Field(description="What the agent was sent.")
    conflicts: list[str] = Field(default_factory=list)


class PushRequest(ApiModel):
    repository: str | None = None
    remote: str | None = Field(None, min_length=1, description="Default: origin.")
    set_upstream: bool = True


class PushResult(ApiModel):
    mount_name: str
    remote: str
    branch: str
    commit: str
    output: str = Field("", description="What the remote said.")


class PullRequestRequest(ApiModel):
    repository: str | None = None
    remote: str | None = Field(
        None, min_length=1, description="The GitHub remote; default: origin."
    )
    title: str | None = Field(None, min_length=1, max_length=256)
    body: str | None = Field(None, max_length=65_536)
    draft: bool = False
    base: str | None = Field(None, min_length=1, description="Default: the base branch.")
    generate: bool = Field(False, description="Have the metadata model write title and body.")


class Checks(ApiModel):
    state: Literal["pending", "success", "failure", "none"]
    total: int = 0
    passed: int = 0
    failed: int = 0
    pending: int = 0


class PullRequest(ApiModel):
    mount_name: str
    number: int
    url: str
    state: Literal["open", "closed", "merged"]
    draft: bool = False
    title: str
    head: str
    base: str
    checks: Checks | None = None
    updated_at: datetime | None = None


class ChangesTotals(ApiModel):
    """The ``session_changes`` event's body."""

    totals: DiffTotals
    heads: dict[str, str] = Field(description="Each repository's branch head, by mount name.")
