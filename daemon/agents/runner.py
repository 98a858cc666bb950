"""What every agent runner provides: how its CLI starts in the container and what its home holds."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon.settings import deep_merge
from daemon.store import SessionRecord

# The agent's terminal is the container's TTY; these make the CLIs look right in xterm.js.
TERMINAL_ENV = {"TERM": "xterm-256color", "COLORTERM": "truecolor"}
HOOKS_FILE = ".corral/hooks.jsonl"


@dataclass(frozen=True)
class AgentLaunch:
    """The container's command and the environment the agent needs (secrets included)."""

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


class AgentRunner(Protocol):
    name: str

    def prepare_home(self, home: Path, record: SessionRecord, working_dir: str) -> None:
        """Seed the agent home (runs in a worker thread); never touches the worktree."""

    def launch(self, record: SessionRecord, working_dir: str) -> AgentLaunch:
        """The command that starts the agent, resuming its own conversation if it has one."""


def shell_entry(resume_test: str, resume: list[str], first: list[str]) -> tuple[str, ...]:
    """``sh -c``: resume when ``resume_test`` holds, else start fresh with the prompt.

    The prompt comes from ``$CORRAL_PROMPT`` so no quoting of user text is ever needed.
    """
    script = (
        f"if {resume_test}; then exec {shlex.join(resume)}; "
        f'else exec {shlex.join(first)} "$CORRAL_PROMPT"; fi'
    )
    return ("/bin/sh", "-c", script)


def merge_json_file(path: Path, update: dict[str, Any]) -> None:
    """Merge ``update`` into a JSON file the agent also writes, keeping the agent's keys."""
    current: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            current = loaded if isinstance(loaded, dict) else {}
        except (OSError, json.JSONDecodeError):
            current = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deep_merge(current, update), indent=2))
