"""Codex: how it starts in the container, resumes, and what its home must hold.

It runs interactively in the container's TTY. Codex names its own sessions, so the
daemon resumes the newest rollout in this session's private home (``resume --last``),
which can only be this session's. ``$HOME/.codex/config.toml`` points it at the
configured OpenAI-compatible endpoint and turns off its plugin fetches and analytics.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.agents.runner import TERMINAL_ENV, AgentLaunch, shell_entry
from daemon.settings import Settings
from daemon.store import SessionRecord

API_KEY_ENV = "OPENAI_API_KEY"


class CodexRunner:
    name = "codex"

    def __init__(self, settings: Settings, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ) if environ is None else environ

    @property
    def api_key(self) -> str:
        configured = self.settings.agents.openai_api_key.get_secret_value()
        return configured or self.environ.get(API_KEY_ENV, "")

    def config_toml(self, record: SessionRecord) -> str:
        lines = ["check_for_update_on_startup = false"]
        if record.model:
            lines.append(f"model = {_toml_string(record.model)}")
        base_url = self.settings.agents.openai_base_url
        if base_url:
            lines.append('model_provider = "corral"')
        lines += ["", "[features]", "plugins = false", "", "[analytics]", "enabled = false"]
        if base_url:
            lines += [
                "",
                "[model_providers.corral]",
                'name = "corral"',
                f"base_url = {_toml_string(base_url)}",
                f'env_key = "{API_KEY_ENV}"',
                'wire_api = "responses"',
            ]
        return "\n".join(lines) + "\n"

    def prepare_home(self, home: Path, record: SessionRecord, working_dir: str) -> None:
        (home / ".corral").mkdir(parents=True, exist_ok=True)
        config = home / ".codex" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(self.config_toml(record))

    def launch(self, record: SessionRecord, working_dir: str) -> AgentLaunch:
        command = shell_entry(
            '[ -n "$(ls -A "$HOME/.codex/sessions" 2>/dev/null)" ]',
            ["codex", "resume", "--last"],
            ["codex"],
        )
        env = {**TERMINAL_ENV, "CORRAL_PROMPT": record.prompt}
        if self.api_key:
            env[API_KEY_ENV] = self.api_key
        return AgentLaunch(command, env)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
