"""API shapes of ``/api/credentials``, and the one way a secret is ever shown: masked."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from daemon.core.access import CredentialKind
from daemon.core.models import AgentName, ApiModel

# ok: the provider accepted it (2xx); invalid: it refused it (401/403); unreachable: no
# answer, a timeout or a 5xx (the message says which); missing: no credential at all;
# unchecked: found but not checked since it was found or changed.
CheckStatus = Literal["ok", "invalid", "unreachable", "missing", "unchecked"]


def mask(secret: str) -> str:
    """First 7 and last 4 characters of a long secret; of a short one only the last 2."""
    if len(secret) >= 20:
        return f"{secret[:7]}…{secret[-4:]}"
    return f"…{secret[-2:]}"


class CredentialAccount(ApiModel):
    plan: str | None = Field(None, description="The ChatGPT plan (plus, pro, team, ...).")
    email: str | None = Field(None, description="The ChatGPT account's email address.")


class CredentialEntry(ApiModel):
    agent: AgentName
    kind: CredentialKind | None = Field(
        description="api_key, oauth_token (a Claude subscription) or chatgpt (a Codex "
        "ChatGPT sign-in); null when none is found."
    )
    source: str | None = Field(
        description='Where it was found: "stored", "config:agents.anthropic_api_key", '
        '"command", "env:ANTHROPIC_API_KEY", "file:~/.codex/auth.json", ...; null when none.'
    )
    masked: str | None = Field(
        description="The secret's first 7 and last 4 characters (a short one: its last 2)."
    )
    status: CheckStatus
    checked_at: str | None = Field(description="When it was last checked (RFC 3339), if ever.")
    message: str = Field(
        description="What the check found, or how to add a credential when none is found."
    )
    stored: bool = Field(False, description="A stored credential exists (DELETE removes it).")
    account: CredentialAccount | None = Field(None, description="chatgpt: plan and email.")


class CredentialList(ApiModel):
    credentials: list[CredentialEntry] = Field(description="One entry per agent.")


class CredentialPut(ApiModel):
    """Exactly one of ``secret`` (an API key or a ``claude setup-token`` token) or
    ``auth_json`` (the content of a Codex ``auth.json``, for a ChatGPT sign-in)."""

    secret: SecretStr | None = Field(
        None, description="An API key, or a Claude subscription's OAuth token."
    )
    auth_json: dict[str, Any] | None = Field(
        None, description="Codex only: the object in ~/.codex/auth.json after codex login."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialPut:
        if (self.secret is None) == (self.auth_json is None):
            raise ValueError("give exactly one of secret or auth_json")
        return self
