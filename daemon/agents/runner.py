"""What every agent runner provides: how its CLI starts in the container and what its home holds."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

from daemon.agents.transcript import loads_bounded
from daemon.core import homefs
from daemon.core.access import AgentAccess
from daemon.core.session import SessionRecord
from daemon.settings import Settings, deep_merge

log = structlog.get_logger(__name__)

# The agent's terminal is the container's TTY; these make the CLIs look right in xterm.js.
TERMINAL_ENV = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}
HOOKS_FILE = ".corral/hooks.jsonl"
ATTACHMENTS_DIR = ".corral/attachments"  # the create request's image_paths, copied here
CONTAINER_HOME = "/home/agent"  # the agent home inside a container


@dataclass(frozen=True)
class AgentLaunch:
    """The container's command and the environment the agent needs (secrets included)."""

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


class AgentRunner(Protocol):
    name: str

    def prepare_home(
        self,
        home: Path,
        record: SessionRecord,
        working_dir: str,
        access: AgentAccess | None = None,
    ) -> None:
        """Seed the agent home (runs in a worker thread); never touches the worktree."""

    def launch(
        self,
        record: SessionRecord,
        working_dir: str,
        home: str = CONTAINER_HOME,
        access: AgentAccess | None = None,
    ) -> AgentLaunch:
        """The command that starts the agent, resuming its own conversation if it has one.

        ``home`` is the agent home as the agent sees it (for the attached files' paths);
        ``access`` is how it reaches its model (corral's gateway and this launch's
        placeholder); without it the agent gets no credential at all."""


def proxy_env(access: AgentAccess | None) -> dict[str, str]:
    """The egress proxy for an allowlist session, in both spellings tools read."""
    if access is None or not access.proxy_url:
        return {}
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = env[name.lower()] = access.proxy_url
    env["NO_PROXY"] = env["no_proxy"] = access.no_proxy
    return env


class KeyedRunner:
    """What both runners hold: the settings, the environment, and the agent's API key."""

    key_env: str  # the environment variable the key falls back to (and is passed in)

    def __init__(self, settings: Settings, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ) if environ is None else environ

    def configured_key(self) -> SecretStr:
        raise NotImplementedError

    @property
    def api_key(self) -> str:
        """The configured key, else the daemon's environment's."""
        return self.configured_key().get_secret_value() or self.environ.get(self.key_env, "")


def write_hooks(home: Path, relative: str, events: Iterable[str]) -> None:
    """Hook every event to append its JSON to ``$HOME/HOOKS_FILE`` (Claude's and Codex's
    hooks files share this shape, ``relative`` to the home); the agent's own entries are kept."""
    hook = {"type": "command", "command": f'{{ cat; echo; }} >> "$HOME/{HOOKS_FILE}"'}
    merge_json_file(
        home, relative, {"hooks": {event: [{"matcher": "", "hooks": [hook]}] for event in events}}
    )


def shell_entry(resume_test: str, resume: list[str], first: list[str]) -> tuple[str, ...]:
    """``sh -c``: resume when ``resume_test`` holds, else start fresh with the prompt.

    ``resume_test`` is a fixed shell fragment, never built from data: the prompt comes
    from ``$CORRAL_PROMPT`` and paths (which hold folder names such as ``$(cmd)``) from
    other environment variables, so nothing a client or a repository names is ever
    parsed by the shell. The arguments are quoted word by word.
    """
    script = (
        f"if {resume_test}; then exec {shlex.join(resume)}; "
        f'else exec {shlex.join(first)} "$CORRAL_PROMPT"; fi'
    )
    return ("/bin/sh", "-c", script)


def attachment_names(image_paths: list[str]) -> list[str]:
    """Each attached file's name in the agent home: numbered, so two ``shot.png`` differ."""
    names = []
    for index, path in enumerate(image_paths, start=1):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).name).lstrip(".") or "file"
        names.append(f"{index}-{safe}")
    return names


def copy_attachments(home: Path, image_paths: list[str]) -> None:
    """Copy the attached files into the agent home (blocking: run it in a worker thread).

    The agent sees its home but not the user's disk, so the files travel with the session;
    a copy already there is kept (the first prompt is the one that names them). The home is
    the container's: a copy is written without following links (``homefs``), and anything
    but a regular file where one is expected is replaced.
    """
    for source, name in zip(image_paths, attachment_names(image_paths), strict=True):
        relative = f"{ATTACHMENTS_DIR}/{name}"
        try:
            if stat.S_ISREG(homefs.lstat(home, relative).st_mode):
                continue
        except (FileNotFoundError, homefs.HostileFile):
            pass  # not there, or reached through a link: the copy makes the path whole
        homefs.copy_into(home, relative, Path(source))


def first_prompt(record: SessionRecord, home: str) -> str:
    """The prompt, followed by where the agent finds the attached files (``home`` as it sees it)."""
    if not record.image_paths:
        return record.prompt
    listed = "\n".join(
        f"- {home}/{ATTACHMENTS_DIR}/{n}" for n in attachment_names(record.image_paths)
    )
    return f"{record.prompt}\n\nAttached files (read them from these paths):\n{listed}"


def merge_json_file(home: Path, relative: str, update: dict[str, Any]) -> None:
    """Merge ``update`` into a JSON file (``relative`` to the agent home) the agent also
    writes, keeping the agent's keys.

    The file is the container's: it is read bounded and only if it is a regular file, and
    replaced, never written through. Content that cannot be read that way (a link, a FIFO,
    too large, too deeply nested) is dropped for the daemon's own keys alone.
    """
    current: dict[str, Any] = {}
    try:
        loaded = loads_bounded(homefs.read_file(home, relative))
        current = loaded if isinstance(loaded, dict) else {}
    except FileNotFoundError:
        pass
    except homefs.HostileFile as exc:
        log.warning("agent_file_replaced", path=exc.path, reason=exc.reason)
    except ValueError:  # bad JSON, bad UTF-8, nesting too deep
        current = {}
    homefs.write_file(home, relative, json.dumps(deep_merge(current, update), indent=2).encode())
