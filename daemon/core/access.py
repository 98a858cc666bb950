"""How an agent reaches its model without holding a secret: the shared vocabulary.

A session's container never holds a real credential. It holds a **placeholder**, made for
that session when its container is made, and an endpoint of corral's **model gateway**
(``daemon/gateway/``) that only containers reach. The gateway checks the placeholder and
where it came from, swaps in the real credential (``CredentialSource``), streams the
answer back unchanged, counts what it cost (``UsageMeter``) and refuses once a budget is
spent. This module names those parts; each lives in its own room:

* credentials: ``daemon/credentials/`` (where each secret comes from, masked listing),
* the gateway and the egress proxy: ``daemon/gateway/``,
* usage and budgets: ``daemon/core/usage.py``,
* placeholders: :class:`Placeholders` below, kept hashed in the store so that running
  containers keep working across a daemon restart; revoked when the session is archived
  or deleted, replaced when its container is made anew.

Decisions and their measurements: ``docs/decisions.md`` ("Credentials").
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from daemon.core.models import AgentName, EgressPolicy
from daemon.core.session import rfc3339, utcnow

# api_key: an Anthropic or OpenAI API key. oauth_token: a Claude subscription's long-lived
# token (``claude setup-token``). chatgpt: a Codex ChatGPT sign-in (``~/.codex/auth.json``).
CredentialKind = Literal["api_key", "oauth_token", "chatgpt"]


@dataclass(frozen=True)
class Credential:
    """A real credential, as the gateway sends it upstream. Never logged, never returned."""

    agent: AgentName
    kind: CredentialKind
    secret: str  # the API key, the OAuth token, or the ChatGPT access token
    source: str  # where it came from, for the user: "config", "env:ANTHROPIC_API_KEY", ...
    account_id: str = ""  # chatgpt: the ChatGPT account the token belongs to
    # chatgpt: the id token's claims the agent shows (plan, email), for its placeholder file
    claims: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # a credential printed by accident shows no secret
        return f"Credential(agent={self.agent!r}, kind={self.kind!r}, source={self.source!r})"


class CredentialSource(Protocol):
    """Where the gateway and the runners get the real credential for an agent."""

    async def credential(self, agent: AgentName) -> Credential | None:
        """The credential to use now (refreshed if it expires), or None when none is set."""
        ...


@dataclass
class Usage:
    """What one model request cost, counted from the answer passing the gateway."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens + self.output_tokens + self.cache_read_tokens
            + self.cache_write_tokens
        )  # fmt: skip


class UsageMeter(Protocol):
    """Counts usage per session and keeps the budgets."""

    def refusal(self, session_id: str) -> str | None:
        """None while the session may spend; else why not, for the agent's user to read
        (a budget reached: which one, how much was spent)."""
        ...

    async def record(
        self, session_id: str, model: str, usage: Usage, *, error: bool = False
    ) -> None:
        """Add one request (an error counts as a request and an error)."""
        ...

    async def refused(self, session_id: str) -> None:
        """The gateway refused a request of the session because of ``refusal``: the session
        shows it (agent_state error, reason budget_exhausted) if it does not already."""
        ...


@dataclass(frozen=True)
class AgentAccess:
    """What an agent runner gives the agent so that it reaches its model through corral."""

    kind: CredentialKind  # the real credential's kind: the agent runs in that mode
    placeholder: str  # the stand-in credential, this session's only
    base_url: str  # the gateway, as the agent reaches it, with the provider's prefix
    chatgpt_url: str = ""  # codex with a ChatGPT sign-in: the gateway's ChatGPT prefix
    network: str = ""  # the container's network ("" for a local session)
    proxy_url: str = ""  # allowlist egress: corral's forward proxy; else empty
    no_proxy: str = ""  # hosts reached without the proxy (the gateway's address)
    account_id: str = ""  # chatgpt: shown to the agent as is (not a secret)
    claims: dict[str, Any] = field(default_factory=dict)  # chatgpt: plan and email


class GatewayEndpoints(Protocol):
    """Where a session reaches corral from its container (or, for local, its process)."""

    async def gateway_url(self, address: str) -> str:
        """``http://address:port`` of the model gateway, listening there from now on."""
        ...

    async def proxy_url(self, address: str) -> str:
        """``http://address:port`` of the egress proxy, listening there from now on."""
        ...


PLACEHOLDER_PREFIX: dict[tuple[AgentName, CredentialKind], str] = {
    # The CLIs pick their sign-in mode from the variable, not the text; the shapes follow
    # the real ones so that anything checking a prefix is satisfied.
    ("claude", "api_key"): "sk-ant-api03-corral-",
    ("claude", "oauth_token"): "sk-ant-oat01-corral-",
    ("codex", "api_key"): "sk-corral-",
    ("codex", "chatgpt"): "corral-",
}


def unsigned_jwt(claims: dict[str, Any], signature: str) -> str:
    """A JWT-shaped token (``alg: none``): Codex reads the claims of its ChatGPT tokens
    (plan, account, expiry) but cannot check a signature; the last part carries the
    placeholder's random text."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.{signature}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccessDenied(Exception):
    """A gateway request that carries no placeholder of a live session, or the wrong one
    for where it came from. The message says which, never the token."""


@dataclass(frozen=True)
class GatewayClient:
    """The session a gateway or proxy request came from, once checked."""

    session_id: str
    agent: AgentName
    kind: CredentialKind  # the kind its placeholder was made for
    egress: EgressPolicy


class SessionGuard(Protocol):
    """Tells the gateway and the proxy which session a request comes from (the lead's
    ``daemon/core/gatekeeper.py``)."""

    async def authorize(self, token: str, remote: str) -> GatewayClient:
        """The session whose live placeholder ``token`` is, if ``remote`` (the peer's IP
        address) is that session's container (or, for a local session, the loopback).
        Raises :class:`AccessDenied` otherwise."""
        ...

    async def session_at(self, remote: str) -> GatewayClient | None:
        """The running, unarchived docker session whose container has address ``remote``."""
        ...


class Placeholders:
    """The placeholder of every session that has one: made, looked up, revoked.

    Only hashes are kept (in memory and in the store's ``gateway_tokens``); the token
    itself lives in the container alone.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._by_hash: dict[str, tuple[str, str]] = {}  # token hash -> (session id, kind)

    async def load(self) -> None:
        async with self.store.db.execute(
            "SELECT session_id, token_hash, kind FROM gateway_tokens"
        ) as cursor:
            self._by_hash = {row[1]: (row[0], row[2]) async for row in cursor}

    async def issue(
        self,
        session_id: str,
        kind: CredentialKind,
        shape: Callable[[str], str] | None = None,
        *,
        agent: AgentName = "claude",
    ) -> str:
        """A new placeholder for the session, replacing any it had. ``shape`` turns the
        random part into the token the agent needs (Codex wants a JWT)."""
        token = PLACEHOLDER_PREFIX.get((agent, kind), "corral-") + secrets.token_urlsafe(32)
        if shape is not None:
            token = shape(token)
        hashed = token_hash(token)
        await self.store.write(
            [
                (
                    "INSERT INTO gateway_tokens (session_id, token_hash, kind, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(session_id) DO UPDATE SET "
                    "token_hash = excluded.token_hash, kind = excluded.kind, "
                    "created_at = excluded.created_at",
                    [session_id, hashed, kind, rfc3339(utcnow())],
                )
            ]
        )
        self._drop(session_id)
        self._by_hash[hashed] = (session_id, kind)
        return token

    async def revoke(self, session_id: str) -> None:
        """The session's placeholder stops working (archived, deleted)."""
        self._drop(session_id)
        await self.store.write([("DELETE FROM gateway_tokens WHERE session_id = ?", [session_id])])

    def session_for(self, token: str) -> tuple[str, CredentialKind] | None:
        """(session id, kind) of a live placeholder, or None."""
        found = self._by_hash.get(token_hash(token))
        return None if found is None else (found[0], cast(CredentialKind, found[1]))

    def kind_of(self, session_id: str) -> CredentialKind | None:
        """The kind of the session's live placeholder, or None when it has none."""
        for owner, kind in self._by_hash.values():
            if owner == session_id:
                return cast(CredentialKind, kind)
        return None

    def _drop(self, session_id: str) -> None:
        for hashed, (owner, _) in list(self._by_hash.items()):
            if owner == session_id:
                del self._by_hash[hashed]
