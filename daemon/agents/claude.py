"""Claude Code: how it starts in the container, resumes, and what its home must hold.

It runs interactively in the container's TTY (the terminal users see), keyed by the
session id: ``--session-id`` on the first start, ``--resume`` once its transcript exists.
The home is seeded so the TUI starts without onboarding or trust dialogs (TESTING.md), and
its hooks append their JSON to a file in the home, which the daemon reads for the agent's
state: the container needs no network path to the daemon.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from daemon.agents.runner import (
    CONTAINER_HOME,
    TERMINAL_ENV,
    AgentLaunch,
    KeyedRunner,
    first_prompt,
    merge_json_file,
    proxy_env,
    shell_entry,
    write_hooks,
)
from daemon.core import homefs
from daemon.core.access import AgentAccess
from daemon.core.session import SessionRecord

CLI_VERSION = "2.1.197"
HOOK_EVENTS = ("UserPromptSubmit", "PreToolUse", "PostToolUse", "Notification", "Stop")
# Measured with 2.1.197: with these it makes no request but to the model endpoint.
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
}


def project_dir_name(working_dir: str) -> str:
    """Claude keys a project's transcripts on its cwd with every "/" made "-"."""
    return working_dir.replace("/", "-")


def transcript_path(home: Path, session_id: str, working_dir: str) -> Path:
    return home / ".claude" / "projects" / project_dir_name(working_dir) / f"{session_id}.jsonl"


class ClaudeRunner(KeyedRunner):
    name = "claude"
    key_env = "ANTHROPIC_API_KEY"

    def configured_key(self) -> SecretStr:
        return self.settings.agents.anthropic_api_key

    def prepare_home(
        self,
        home: Path,
        record: SessionRecord,
        working_dir: str,
        access: AgentAccess | None = None,
    ) -> None:
        # The home is the container's: every write goes through homefs, following no link.
        homefs.make_dir(home, ".corral")
        # The TUI asks before using an API key it has not seen; the placeholder is the one.
        placeholder = access.placeholder if access and access.kind == "api_key" else ""
        approved = [placeholder[-20:]] if placeholder else []
        merge_json_file(
            home,
            ".claude.json",
            {
                "hasCompletedOnboarding": True,
                "lastOnboardingVersion": CLI_VERSION,
                "theme": "dark",
                "bypassPermissionsModeAccepted": True,
                "customApiKeyResponses": {"approved": approved, "rejected": []},
                "projects": {
                    working_dir: {
                        "hasTrustDialogAccepted": True,
                        "hasCompletedProjectOnboarding": True,
                    }
                },
            },
        )
        write_hooks(home, ".claude/settings.json", HOOK_EVENTS)

    def launch(
        self,
        record: SessionRecord,
        working_dir: str,
        home: str = CONTAINER_HOME,
        access: AgentAccess | None = None,
    ) -> AgentLaunch:
        flags: list[str] = []
        if record.model:
            flags += ["--model", record.model]
        if not record.no_plan_mode:
            flags += ["--permission-mode", "plan"]
        # The transcript's path holds the working directory, a folder name any repository
        # may choose (``$(cmd)``): it reaches the shell as data in the environment.
        transcript = f".claude/projects/{project_dir_name(working_dir)}/{record.id}.jsonl"
        command = shell_entry(
            '[ -s "$HOME/$CORRAL_TRANSCRIPT" ]',
            ["claude", "--resume", record.id, *flags],
            ["claude", "--session-id", record.id, *flags],
        )
        env = {
            **TERMINAL_ENV,
            **QUIET_ENV,
            "CORRAL_PROMPT": first_prompt(record, home),
            "CORRAL_TRANSCRIPT": transcript,
        }
        if access is not None:
            # Only the placeholder: the gateway swaps in the real credential. Claude Code
            # takes its sign-in mode from the variable: CLAUDE_CODE_OAUTH_TOKEN alone keeps
            # subscription mode (an ANTHROPIC_API_KEY beside it would turn it off).
            env["ANTHROPIC_BASE_URL"] = access.base_url
            variable = "CLAUDE_CODE_OAUTH_TOKEN" if access.kind == "oauth_token" else self.key_env
            env[variable] = access.placeholder
            env.update(proxy_env(access))
        return AgentLaunch(command, env)
