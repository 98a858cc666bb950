"""What a backend needs to start a session, computed in one place.

As JupyterHub's ``Spawner.get_env``/``get_args`` do for a notebook server: the path layout
(session folders, agent homes, worktree paths, branch names), the agent's working
directory, the seeding of the agent home and the ``ContainerSpec`` (image, mounts with the
git mounts, environment, command, limits) are worked out here from the settings and the
session record. The manager journals and the backend carries them out; neither decides them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from backends.base import ContainerSpec, Mount
from daemon.agents.runner import CONTAINER_HOME, AgentRunner, copy_attachments
from daemon.core import homefs
from daemon.core.access import AgentAccess
from daemon.core.agent_access import AccessPlanner
from daemon.core.git_mounts import GitWorktree, git_mounts
from daemon.core.session import SessionRecord
from daemon.settings import Settings

CONTAINER_WORKSPACE = "/workspace"
BRANCH_PREFIX = "corral/"


def branch_name(session_name: str) -> str:
    """The branch a session works on in each of its repositories."""
    return BRANCH_PREFIX + session_name


class Spawner:
    """The paths, home and container spec of each session, from settings and record."""

    def __init__(self, settings: Settings, runners: dict[str, AgentRunner]) -> None:
        self.settings = settings
        self.runners = runners
        # How each launch reaches its model (the gateway, a placeholder, the network); set
        # by the app once the gateway exists. Without it (unit tests) agents get no
        # credential and containers the configured network.
        self.access: AccessPlanner | None = None

    # paths

    @property
    def worktrees_dir(self) -> Path:
        return self.settings.data_dir / "worktrees"

    def session_dir(self, session_id: str) -> Path:
        return self.settings.data_dir / "sessions" / session_id

    def agent_home(self, session_id: str) -> Path:
        return self.session_dir(session_id) / "home"

    def worktree_path(self, session_name: str, mount_name: str) -> str:
        return str(self.worktrees_dir / session_name / mount_name)

    # the agent

    def runner(self, record: SessionRecord) -> AgentRunner | None:
        """The session's agent runner; None when sessions start without an agent."""
        if not self.settings.sessions.start_agent:
            return None
        return self.runners[record.agent]

    def agent_working_dir(self, record: SessionRecord) -> str:
        if record.backend == "local":
            return str(Path(record.primary.worktree_path) / record.primary.subdir)
        subdir = record.primary.subdir
        return f"{CONTAINER_WORKSPACE}/{subdir}" if subdir else CONTAINER_WORKSPACE

    async def make_home(self, record: SessionRecord) -> None:
        """A new session's home, with the attached files.

        The files are read from the user's disk once, right after their paths were checked:
        one may live where a container writes (an upload in a worktree), and a later
        re-copy could find it swapped for a link to a host secret.
        """
        home = self.agent_home(record.id)
        # The home is the container's $HOME: made here, then written only through homefs.
        await asyncio.to_thread(homefs.make_home, home)
        if self.runner(record) is not None:
            await asyncio.to_thread(copy_attachments, home, record.image_paths)

    async def plan_access(self, record: SessionRecord) -> AgentAccess | None:
        """This launch's way to the model: a new placeholder (the last one stops working),
        the network and the gateway's address on it."""
        return await self.access.plan(record) if self.access is not None else None

    async def revoke_access(self, session_id: str) -> None:
        """The session's placeholder stops working (archived, deleted)."""
        if self.access is not None:
            await self.access.revoke(session_id)

    async def prepare_home(self, record: SessionRecord, access: AgentAccess | None) -> None:
        """Seed the agent home for a launch (the agent's settings, hooks, placeholder)."""
        home = self.agent_home(record.id)
        await asyncio.to_thread(homefs.make_home, home)
        runner = self.runner(record)
        if runner is not None:
            await asyncio.to_thread(
                runner.prepare_home, home, record, self.agent_working_dir(record), access
            )

    # the container

    def spec(self, record: SessionRecord, access: AgentAccess | None = None) -> ContainerSpec:
        """The container to create (blocking: the git mounts read and make folders)."""
        mounts: list[Mount] = []
        git_repos: list[GitWorktree] = []
        for repo in record.repositories:
            target = CONTAINER_WORKSPACE if repo.is_primary else f"/repos/{repo.mount_name}"
            mounts.append(Mount(repo.worktree_path, target))
            git_repos.append(GitWorktree(repo.path, repo.worktree_path, target))
        # The main .git read-only, but where this session's work lands (daemon/core/git_mounts.py).
        mounts += git_mounts(git_repos)
        mounts.append(Mount(str(self.agent_home(record.id)), CONTAINER_HOME))
        subdir = record.primary.subdir
        docker = self.settings.docker
        user = None
        if self.settings.sessions.run_as_host_user:
            user = f"{os.getuid()}:{os.getgid()}"
        env = {"HOME": CONTAINER_HOME, "CORRAL_SESSION_ID": record.id, "TERM": "xterm-256color"}
        command = None
        runner = self.runner(record)
        if runner is not None:
            # The local backend runs the agent on the host, in the home itself.
            home = str(self.agent_home(record.id)) if record.backend == "local" else CONTAINER_HOME
            launch = runner.launch(record, self.agent_working_dir(record), home, access)
            command = launch.command
            env.update(launch.env)
        return ContainerSpec(
            session_id=record.id,
            session_name=record.name,
            image=record.image or docker.default_image,
            working_dir=f"{CONTAINER_WORKSPACE}/{subdir}" if subdir else CONTAINER_WORKSPACE,
            mounts=tuple(mounts),
            env=env,
            command=command,
            user=user,
            cpu_limit=docker.cpu_limit or None,
            memory_limit=docker.memory_limit_mb * 1024 * 1024 or None,
            pids_limit=docker.pids_limit or None,
            network_mode=access.network if access and access.network else docker.network_mode,
            allow_host_network=docker.allow_host_network,
            daemon_instance=str(self.settings.data_dir),
        )
