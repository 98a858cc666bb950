"""Create-time validation: everything a create request must pass before a record exists,
and the record it then becomes.

The repositories (inside ``server.allowed_roots``, each a git repository once, with a base
branch that exists), the attached image paths, the session name (reserved while the rest is
checked, free of folders and branches) and whether the engine answers. The roots are
checked before anything opens a path, so a path outside them gets one answer whether it
exists or not (tests/test_input_doors.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from backends.base import Backend
from daemon.core import worktrees
from daemon.core.confine import resolved_roots, within
from daemon.core.errors import BackendUnavailableError, Conflict, Forbidden, InvalidRequest
from daemon.core.failures import api_error
from daemon.core.models import (
    CreateSessionRequest,
    EgressPolicy,
    Progress,
    Repository,
    RepositoryRequest,
    SessionStatus,
    slug,
)
from daemon.core.names import generate_name
from daemon.core.session import SessionRecord, creation_time
from daemon.core.spawn import BRANCH_PREFIX, Spawner, branch_name
from daemon.settings import Settings

ENGINE_TRUST_SECONDS = 2.0

# One requested repository, what git says it is, and the base branch to start from.
Resolved = tuple[RepositoryRequest, worktrees.RepoInfo, str]


def repository_requests(request: CreateSessionRequest) -> list[RepositoryRequest]:
    """The repositories asked for, the single ``repo_path`` form included."""
    if request.repositories is not None:
        return request.repositories
    assert request.repo_path is not None
    mount = slug(Path(request.repo_path.rstrip("/")).name)[:64] or "repo"
    return [
        RepositoryRequest(path=request.repo_path, mount_name=mount, base_branch=request.base_branch)
    ]


async def resolve_repositories(
    settings: Settings, requests: list[RepositoryRequest]
) -> list[Resolved]:
    """Each request as a repository inside the roots with its base branch, or a 400/403."""
    timeout = settings.sessions.git_timeout
    field = "repo_path" if len(requests) == 1 else "repositories.{}.path"
    allowed = resolved_roots(settings.server.allowed_roots)
    # The roots first, before git or anything else opens a path: one answer for every
    # path outside them, whether it exists, is a repository or not (no probing).
    paths = [r.path for r in requests]
    outside = await asyncio.to_thread(outside_roots, paths, allowed)
    if outside is not None:
        raise outside_error(paths[outside], field.format(outside))
    results = await asyncio.gather(
        *(
            # Not a repository in the data dir: its config would be a container's.
            worktrees.resolve_repository(
                r.path, timeout=timeout, untrusted=(str(settings.data_dir),)
            )
            for r in requests
        ),
        return_exceptions=True,
    )
    problems: list[dict[str, str]] = []
    infos: list[worktrees.RepoInfo] = []
    for index, result in enumerate(results):
        if isinstance(result, worktrees.InvalidRepository):
            problems.append({"field": field.format(index), "message": result.message})
        elif isinstance(result, BaseException):
            raise api_error(result)
        else:
            infos.append(result)
    if problems:
        raise InvalidRequest(problems[0]["message"], problems)
    # A folder inside the roots of a repository whose top level is not: the same answer.
    roots_in = await asyncio.to_thread(outside_roots, [i.root for i in infos], allowed)
    if roots_in is not None:
        raise outside_error(paths[roots_in], field.format(roots_in))
    roots = [i.root for i in infos]
    if len(set(roots)) != len(roots):
        raise InvalidRequest(
            "the same repository is given twice",
            [{"field": "repositories", "message": "each repository may appear once"}],
        )
    resolved = []
    for index, (req, info) in enumerate(zip(requests, infos, strict=True)):
        base = req.base_branch or info.current_branch
        where = "base_branch" if len(requests) == 1 else f"repositories.{index}.base_branch"
        if base is None:
            raise InvalidRequest(
                f"{info.root} is on a detached HEAD; give base_branch",
                [{"field": where, "message": "required on a detached HEAD"}],
            )
        given = req.base_branch is not None and req.base_branch != info.current_branch
        if given and not await worktrees.ref_exists(info.root, base, timeout=timeout):
            raise InvalidRequest(
                f"base_branch '{base}' does not exist in {info.root}",
                [{"field": where, "message": "no such branch or commit"}],
            )
        resolved.append((req, info, base))
    return resolved


def outside_roots(paths: list[str], allowed: list[Path]) -> int | None:
    """The index of the first absolute path outside ``allowed`` (blocking: it resolves
    links). A relative path is left to the repository check, which refuses it unread."""
    for index, path in enumerate(paths):
        if Path(path).expanduser().is_absolute() and not within(path, allowed):
            return index
    return None


def outside_error(path: str, field: str) -> Forbidden:
    return Forbidden(
        f"{path} is outside the folders this daemon may use",
        [{"field": field, "message": "outside server.allowed_roots"}],
    )


async def check_image_paths(settings: Settings, paths: list[str]) -> None:
    allowed = resolved_roots(settings.server.allowed_roots)

    def missing() -> list[str]:
        # within() before is_file(): nothing outside the roots is looked at.
        return [
            p
            for p in paths
            if "\x00" in p
            or not (Path(p).is_absolute() and within(p, allowed) and Path(p).is_file())
        ]

    bad = await asyncio.to_thread(missing)
    if bad:
        raise InvalidRequest(
            "image_paths must be existing files given by absolute path (inside "
            f"server.allowed_roots when set): {bad[0]}",
            [{"field": "image_paths", "message": f"not a file: {p}"} for p in bad],
        )


class Names:
    """Session names: unique among the records, held while a create is being checked, and
    free of a worktree folder and a branch of that name."""

    def __init__(self, records: Mapping[str, SessionRecord], spawner: Spawner) -> None:
        self.records = records
        self.spawner = spawner
        self._reserved: set[str] = set()

    def taken(self, name: str) -> bool:
        """Whether a session has this name."""
        return any(r.name == name for r in self.records.values())

    def reserve(self, name: str) -> None:
        if name in self._reserved or self.taken(name):
            raise Conflict(f"a session named '{name}' already exists")
        self._reserved.add(name)

    def release(self, name: str) -> None:
        self._reserved.discard(name)

    async def _conflict(self, name: str, resolved: Iterable[Resolved]) -> str | None:
        if await asyncio.to_thread((self.spawner.worktrees_dir / name).exists):
            return f"the worktree folder for '{name}' already exists"
        timeout = self.spawner.settings.sessions.git_timeout
        for _, info, _ in resolved:
            if await worktrees.branch_exists(info.root, BRANCH_PREFIX + name, timeout=timeout):
                return f"branch '{BRANCH_PREFIX}{name}' already exists in {info.root}"
        return None

    async def check_free(self, name: str, resolved: Iterable[Resolved]) -> None:
        reason = await self._conflict(name, resolved)
        if reason:
            raise Conflict(f"{reason}; choose another name")

    async def generate_free(self, resolved: Iterable[Resolved]) -> str:
        """A new generated name, reserved; the caller releases it."""
        for _ in range(50):
            name = generate_name()
            try:
                self.reserve(name)
            except Conflict:
                continue
            if await self._conflict(name, resolved) is None:
                return name
            self.release(name)
        raise Conflict("could not find a free session name; give one")


class EngineCheck:
    """Answer 503 at once when the engine is away; a recent answer is trusted briefly."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    async def check(self, backend: Backend) -> None:
        loop_time = asyncio.get_running_loop().time()
        if self._seen.get(backend.name, -ENGINE_TRUST_SECONDS) > loop_time - ENGINE_TRUST_SECONDS:
            return
        info = await backend.info()
        if not info.available:
            raise BackendUnavailableError("The container engine does not answer")
        self._seen[backend.name] = loop_time


def egress_policy(settings: Settings, request: CreateSessionRequest) -> EgressPolicy:
    """The session's egress: asked for, else the configured default; a 400 when it cannot
    be kept. The local backend runs the agent on the host, which no policy confines, and a
    container on the host's network has every route the host has."""
    if request.backend == "local":
        if request.egress not in (None, "open"):
            raise InvalidRequest(
                f"egress '{request.egress}' needs a container: the local backend runs the "
                "agent on your host, where nothing confines its network; use egress 'open' "
                "or the docker backend",
                [{"field": "egress", "message": "local sessions are always open"}],
            )
        return "open"
    policy = request.egress or settings.egress.default_policy
    if policy != "open" and settings.docker.network_mode == "host":
        raise InvalidRequest(
            f"egress '{policy}' cannot be kept with docker.network_mode = 'host': the "
            "container shares the host's network; use egress 'open' or a bridge network",
            [{"field": "egress", "message": "only 'open' with host networking"}],
        )
    return policy


def new_record(
    settings: Settings,
    spawner: Spawner,
    request: CreateSessionRequest,
    name: str,
    resolved: list[Resolved],
) -> SessionRecord:
    """The record of a session the checks above let through, before anything is made."""
    now = creation_time()  # sub-second and increasing: the list's order
    return SessionRecord(
        id=str(uuid.uuid4()),
        name=name,
        backend=request.backend,
        agent=request.agent,
        model=request.model or settings.sessions.default_model or None,
        status=SessionStatus.CREATING,
        prompt=request.prompt,
        no_plan_mode=request.no_plan_mode,
        image=request.image or settings.docker.default_image,
        image_paths=request.image_paths,
        egress=egress_policy(settings, request),
        max_cost_usd=request.max_cost_usd,
        max_tokens=request.max_tokens,
        created_at=now,
        updated_at=now,
        progress=Progress(step=0, total=4, message="Queued"),
        repositories=[
            Repository(
                path=info.root,
                mount_name=req.mount_name,
                worktree_path=spawner.worktree_path(name, req.mount_name),
                branch_name=branch_name(name),
                base_branch=base,
                is_primary=index == 0,
                subdir=info.subdir,
            )
            for index, (req, info, base) in enumerate(resolved)
        ],
    )
