"""API shapes: the single source of truth for request and response bodies and the OpenAPI
(``SessionFields`` is also the base of the domain model, ``daemon/core/session.py``)."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

MOUNT_NAME_RE = r"^[a-z0-9_-]{1,64}$"
SESSION_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MAX_REPOSITORIES = 5


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionStatus(enum.StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETING = "deleting"


class AgentState(enum.StrEnum):
    WORKING = "working"
    WAITING_INPUT = "waiting_input"
    WAITING_APPROVAL = "waiting_approval"
    IDLE = "idle"
    UNKNOWN = "unknown"
    ERROR = "error"  # stopped by corral, not by the agent: ``agent_state_reason`` says why


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    STARTING = "starting"
    STOPPED = "stopped"
    MISSING = "missing"
    ERROR = "error"
    CRASH_LOOP = "crash_loop"
    WORKTREE_MISSING = "worktree_missing"
    ARCHIVED = "archived"


class Action(enum.StrEnum):
    START = "start"
    RECREATE = "recreate"
    RECREATE_FRESH = "recreate_fresh"
    REFRESH = "refresh"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"
    CLEANUP = "cleanup"
    DELETE = "delete"


BackendName = Literal["docker", "local"]
AgentName = Literal["claude", "codex"]
# How far a session's container may reach: ``none`` the model gateway only, ``allowlist``
# the gateway and the named hosts through corral's forward proxy, ``open`` anywhere.
EgressPolicy = Literal["none", "allowlist", "open"]
MountName = Annotated[str, StringConstraints(pattern=MOUNT_NAME_RE)]
SessionName = Annotated[str, StringConstraints(pattern=SESSION_NAME_RE)]


class Progress(ApiModel):
    step: int = Field(description="1-based number of the step under way.")
    total: int
    message: str


class Repository(ApiModel):
    path: str = Field(description="The repository's top-level folder on the host.")
    mount_name: str
    worktree_path: str
    branch_name: str
    base_branch: str
    is_primary: bool
    subdir: str = Field("", description="Folder inside the repository the session starts in.")


class SessionFields(BaseModel):
    """What a session is, as the daemon keeps it and the API shows it. The domain model
    (:class:`daemon.core.session.SessionRecord`) and the API's :class:`Session` both derive
    from it, so the two cannot drift apart."""

    id: str
    name: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    backend: BackendName
    agent: AgentName
    model: str | None = None
    status: SessionStatus
    archived: bool = False
    archived_at: datetime | None = None
    agent_state: AgentState = AgentState.UNKNOWN
    agent_state_reason: str | None = Field(
        None, description="Why agent_state is error, e.g. budget_exhausted; else null."
    )
    egress: EgressPolicy = Field(
        "open", description="Where the container may connect besides corral's model gateway."
    )
    max_cost_usd: float | None = Field(
        None, description="The session's budget in estimated US dollars; null: none."
    )
    max_tokens: int | None = Field(
        None, description="The session's budget in tokens (in and out, cache included)."
    )
    repositories: list[Repository]
    prompt: str
    no_plan_mode: bool = False
    image: str | None = None
    container_id: str | None = None
    progress: Progress | None = None
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime


class Session(SessionFields):
    """A session in API answers: the kept fields, the primary repository's, and health."""

    model_config = ConfigDict(extra="forbid")

    repo_path: str = Field(description="The primary repository's path.")
    worktree_path: str = Field(description="The primary repository's worktree.")
    branch_name: str
    base_branch: str
    health: Health
    cost_usd: float = Field(0.0, description="Estimated spend over the session's life, USD.")
    total_tokens: int = Field(0, description="Tokens used over the session's life.")


class ChatEvent(ApiModel):
    model_config = ConfigDict(extra="allow")
    type: str
    session_id: str
    seq: int
    timestamp: datetime


class ChatMessages(ApiModel):
    messages: list[ChatEvent]
    next_after: int = Field(description="Pass as `after` to get the next page.")


class MessageRequest(ApiModel):
    content: str = Field(min_length=1, max_length=100_000)


class SessionDetail(Session):
    chat_history: list[ChatEvent] = Field(default_factory=list)


class SessionEnvelope(ApiModel):
    session: Session


class SessionDetailEnvelope(ApiModel):
    session: SessionDetail


class SessionList(ApiModel):
    sessions: list[Session]
    total: int = Field(description="Sessions matching the filters, before limit and offset.")


class RepositoryRequest(ApiModel):
    path: str = Field(min_length=1, description="A git repository, or a folder inside one.")
    mount_name: MountName
    base_branch: str | None = Field(None, min_length=1)


class CreateSessionRequest(ApiModel):
    repo_path: str | None = Field(None, min_length=1)
    repositories: list[RepositoryRequest] | None = Field(
        None, min_length=1, max_length=MAX_REPOSITORIES
    )
    prompt: str = Field(min_length=1)
    backend: BackendName = "docker"
    agent: AgentName = "claude"
    model: str | None = None
    name: SessionName | None = None
    base_branch: str | None = Field(None, min_length=1)
    no_plan_mode: bool = False
    image: str | None = Field(None, min_length=1)
    image_paths: list[str] = Field(default_factory=list, max_length=20)
    egress: EgressPolicy | None = Field(None, description="Default: egress.default_policy.")
    max_cost_usd: float | None = Field(None, gt=0, description="Budget in estimated USD.")
    max_tokens: int | None = Field(None, gt=0, description="Budget in tokens.")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CreateSessionRequest:
        if (self.repo_path is None) == (self.repositories is None):
            raise ValueError("give exactly one of repo_path or repositories")
        if self.repositories is not None:
            names = [r.mount_name for r in self.repositories]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"mount names must be unique: {', '.join(duplicates)}")
            if self.base_branch is not None:
                raise ValueError("base_branch goes inside each repository with repositories")
        return self


class MetadataUpdate(ApiModel):
    name: SessionName | None = None
    description: str | None = Field(None, max_length=2000)
    tags: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        None, max_length=50
    )


class RecreateRequest(ApiModel):
    fresh: bool = False


class DataPreservation(ApiModel):
    model_config = ConfigDict(extra="allow")


class Reconciliation(ApiModel):
    attempts: int = 0
    last_attempt: datetime | None = None
    last_error: str | None = None
    next_attempt: datetime | None = None


class HealthReport(ApiModel):
    session_id: str
    health: Health
    details: dict[str, Any]
    available_actions: list[Action]
    recommended_action: Action | None
    data_preservation: dict[str, bool] = Field(
        description="For each offered action, whether the worktree's files and the "
        "conversation survive it."
    )
    reconciliation: Reconciliation


class DockerStatus(ApiModel):
    available: bool
    version: str | None


class DaemonHealth(ApiModel):
    status: Literal["healthy", "degraded"]
    version: str
    docker: DockerStatus


class HealthCounts(ApiModel):
    healthy: int = Field(description="Sessions healthy or starting, and not stalled.")
    idle: int = Field(description="Sessions at rest by the user's choice: stopped or archived.")
    needs_attention: int = Field(
        description="Sessions stalled, or down with an automatic recovery planned or under way."
    )
    blocked: int = Field(
        description="Sessions down with nothing planned (crash_loop, worktree_missing, or "
        "error/missing once automatic recovery stopped): only the user can move them."
    )
    total: int


class SessionHealthSummary(ApiModel):
    session_id: str
    name: str
    health: Health
    category: Literal["needs_attention", "blocked"]
    reason: str | None = None
    stalled_since: datetime | None = None
    reconciliation: Reconciliation


class EngineHealth(ApiModel):
    available: bool | None = Field(description="null until the engine first answers or fails.")
    since: datetime | None = Field(None, description="When it last became available or not.")
    last_error: str | None = None
    reconnects: int = Field(0, description="Times the engine came back after going away.")


class OrphanContainer(ApiModel):
    id: str
    name: str
    session_id: str | None
    state: str
    reason: str


class OrphanWorktree(ApiModel):
    path: str
    repository: str | None = Field(description="The repository it belongs to, if known.")
    branch: str | None = None
    uncommitted: int = Field(0, description="Changed or untracked files.")
    unique_commits: int = Field(0, description="Commits on no other branch, remote or tag.")
    reason: str


class Orphans(ApiModel):
    containers: list[OrphanContainer] = Field(
        default_factory=list, description="Labelled as this daemon's, unknown, not removed."
    )
    worktrees: list[OrphanWorktree] = Field(
        default_factory=list, description="Under the data dir, no session, kept: they hold work."
    )
    removed_containers: int = Field(0, description="Removed since the daemon started.")
    removed_worktrees: int = Field(0, description="Removed since the daemon started.")


class HealthSummary(ApiModel):
    status: Literal["healthy", "degraded"] = Field(
        description="degraded while an engine is away, a session is blocked or an orphan kept."
    )
    counts: HealthCounts
    by_health: dict[str, int] = Field(description="Sessions per health state.")
    sessions: list[SessionHealthSummary] = Field(
        description="Every session needing attention or blocked, with the reason."
    )
    engines: dict[str, EngineHealth]
    orphans: Orphans
    passes: int = Field(description="Reconciliation passes since the daemon started.")
    last_pass: datetime | None = None
    last_pass_ms: float | None = Field(None, description="How long the last pass took.")
    last_pass_engine_calls: int | None = Field(
        None,
        description="Engine requests the last pass made: one per backend, however many "
        "sessions, plus one per orphan removed.",
    )


class BrowseRequest(ApiModel):
    path: str = Field(min_length=1)
    show_hidden: bool = False


class DirectoryEntry(ApiModel):
    name: str
    path: str
    is_dir: bool
    is_git_repo: bool


class BrowseResponse(ApiModel):
    path: str
    parent: str | None
    entries: list[DirectoryEntry]


class UploadedFile(ApiModel):
    name: str
    path: str = Field(description="Absolute path on the host; usable in image_paths.")
    size: int


class UploadResponse(ApiModel):
    files: list[UploadedFile]


class ErrorDetail(ApiModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(ApiModel):
    error: ErrorDetail


def validation_details(exc: Any) -> list[dict[str, Any]]:
    """pydantic's errors as a list a client can show field by field."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        out.append({"field": loc, "message": err["msg"]})
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
