"""Codex: how it starts in the container, resumes, and what its home must hold.

It runs interactively in the container's TTY. Codex names its own sessions, so the
daemon resumes the newest rollout in this session's private home (``resume --last``),
which can only be this session's. ``$HOME/.codex/config.toml`` is the daemon's, rewritten
at every start; what it holds, each measured with Codex 0.169.0 (docs/decisions.md):

* the configured OpenAI-compatible endpoint as the model provider;
* the working directory marked trusted: otherwise the TUI opens on a "Trust this
  folder?" screen and the prompt given on its command line waits behind it;
* no sandbox and approval on request: the container is the sandbox (Codex's own, bwrap,
  cannot make its namespaces in an unprivileged container, so every command fails);
* the model upgrades of its bundled catalog marked as seen: otherwise a session whose
  model has an upgrade (``gpt-5.5`` → ``gpt-6-sol``) opens on a "Try new model" screen;
* no update check, plugin fetch or analytics.

Its hooks take the same JSON on stdin as Claude Code's and append it to the hooks file in
the home, read by the daemon for ``agent_state``. Codex runs a hook only once the user has
trusted it in the TUI; ``--dangerously-bypass-hook-trust`` runs them without that screen.
``--no-daemon`` keeps the TUI from starting its shared background server, which the one
TUI in a container does not need and which delays the first prompt by about 4 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from daemon.agents.runner import (
    CONTAINER_HOME,
    TERMINAL_ENV,
    AgentLaunch,
    KeyedRunner,
    first_prompt,
    proxy_env,
    shell_entry,
    write_hooks,
)
from daemon.core import homefs
from daemon.core.access import AgentAccess, unsigned_jwt
from daemon.core.session import SessionRecord

API_KEY_ENV = "OPENAI_API_KEY"
HOOK_EVENTS = ("UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop")
# Every upgrade the 0.169.0 catalog offers, as Codex records a declined one.
MIGRATIONS = {
    "gpt-5.5": "gpt-6-sol",
    "gpt-5.6-sol": "gpt-6-sol",
    "gpt-5.6-terra": "gpt-6-sol",
    "gpt-5.6-luna": "gpt-6-luna",
}
# Before any subcommand: they apply to a first start and to ``resume`` alike.
_FLAGS = ["--no-daemon", "--dangerously-bypass-hook-trust"]


class CodexRunner(KeyedRunner):
    name = "codex"
    key_env = API_KEY_ENV

    def configured_key(self) -> SecretStr:
        return self.settings.agents.openai_api_key

    def config_toml(
        self, record: SessionRecord, working_dir: str, access: AgentAccess | None = None
    ) -> str:
        lines = [
            "check_for_update_on_startup = false",
            'approval_policy = "on-request"',
            'sandbox_mode = "danger-full-access"',
        ]
        if record.model:
            lines.append(f"model = {_toml_string(record.model)}")
        if access is not None:
            lines.append('model_provider = "corral"')
            if access.chatgpt_url:  # the sign-in's other calls (account, settings) too
                lines.append(f"chatgpt_base_url = {_toml_string(access.chatgpt_url)}")
        lines += ["", "[features]", "plugins = false", "", "[analytics]", "enabled = false"]
        lines += ["", "[notice.model_migrations]"]
        lines += [f"{_toml_string(old)} = {_toml_string(new)}" for old, new in MIGRATIONS.items()]
        if access is not None:
            lines += [
                "",
                "[model_providers.corral]",
                'name = "corral"',
                f"base_url = {_toml_string(access.base_url)}",
                'wire_api = "responses"',
            ]
            # A ChatGPT sign-in: the provider takes its bearer from auth.json (a placeholder
            # one, below); an API key: from the environment (the placeholder).
            if access.kind == "chatgpt":
                lines.append("requires_openai_auth = true")
            else:
                lines.append(f'env_key = "{API_KEY_ENV}"')
        lines += ["", f"[projects.{_toml_string(working_dir)}]", 'trust_level = "trusted"']
        return "\n".join(lines) + "\n"

    def prepare_home(
        self,
        home: Path,
        record: SessionRecord,
        working_dir: str,
        access: AgentAccess | None = None,
    ) -> None:
        # The home is the container's: every write goes through homefs, following no link.
        homefs.make_dir(home, ".corral")
        homefs.write_file(
            home, ".codex/config.toml", self.config_toml(record, working_dir, access).encode()
        )
        if access is not None and access.kind == "chatgpt":
            homefs.write_file(home, ".codex/auth.json", placeholder_auth_json(access))
        else:  # a sign-in left from an earlier launch is never a real one, but stale
            homefs.remove_file(home, ".codex/auth.json")
        write_hooks(home, ".codex/hooks.json", HOOK_EVENTS)

    def launch(
        self,
        record: SessionRecord,
        working_dir: str,
        home: str = CONTAINER_HOME,
        access: AgentAccess | None = None,
    ) -> AgentLaunch:
        command = shell_entry(
            '[ -n "$(ls -A "$HOME/.codex/sessions" 2>/dev/null)" ]',
            ["codex", *_FLAGS, "resume", "--last"],
            ["codex", *_FLAGS],
        )
        env = {**TERMINAL_ENV, "CORRAL_PROMPT": first_prompt(record, home)}
        if access is not None:
            if access.kind == "chatgpt":
                # Should Codex ever try to refresh its placeholder sign-in, it asks corral.
                env["CODEX_REFRESH_TOKEN_URL_OVERRIDE"] = f"{access.chatgpt_url}oauth/token"
            else:
                env[API_KEY_ENV] = access.placeholder
            env.update(proxy_env(access))
        return AgentLaunch(command, env)


CHATGPT_AUTH = "https://api.openai.com/auth"
PLACEHOLDER_ACCOUNT = "corral-placeholder-account"
# Far enough that Codex never refreshes the placeholder (measured: 0.169.0 refreshes a
# token near its expiry, or one whose last_refresh is over 8 days old).
PLACEHOLDER_LIFETIME = 10 * 365 * 24 * 3600


def chatgpt_claims(access: AgentAccess | dict[str, str]) -> dict[str, object]:
    """The claims of a placeholder ChatGPT token: the plan and email Codex shows, and a
    placeholder account (the gateway sends the real one upstream)."""
    claims = access.claims if isinstance(access, AgentAccess) else access
    return {
        "email": claims.get("email", ""),
        "exp": int(time.time()) + PLACEHOLDER_LIFETIME,
        CHATGPT_AUTH: {
            "chatgpt_plan_type": claims.get("plan") or "plus",
            "chatgpt_account_id": PLACEHOLDER_ACCOUNT,
            "chatgpt_user_id": "corral-placeholder-user",
        },
    }


def chatgpt_placeholder(claims: dict[str, str]) -> Callable[[str], str]:
    """Shapes a placeholder as the access token Codex expects: a JWT with the claims."""
    return lambda random_part: unsigned_jwt(chatgpt_claims(claims), random_part)


def placeholder_auth_json(access: AgentAccess) -> bytes:
    """``$CODEX_HOME/auth.json`` with nothing real in it: the access token is the session's
    placeholder, the id token has the same claims and a signature of zeros."""
    claims = chatgpt_claims(access)
    return json.dumps(
        {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": unsigned_jwt(claims, "cGxhY2Vob2xkZXI"),
                "access_token": access.placeholder,
                "refresh_token": "corral-placeholder-refresh",
                "account_id": PLACEHOLDER_ACCOUNT,
            },
            "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        indent=2,
    ).encode()


def _toml_string(value: str) -> str:
    """A TOML basic string; control characters are escaped, as TOML requires."""
    escaped = "".join(
        f"\\{char}" if char in '"\\' else f"\\u{ord(char):04x}" if _is_control(char) else char
        for char in value
    )
    return f'"{escaped}"'


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or ord(char) == 0x7F
