"""``Credentials``: every agent's credential from its sources, masked, checked, refreshed.

The gateway calls :meth:`Credentials.credential` on every request, so it answers from
memory: the stored file is read once, a command's answer is kept for a while, Codex's
``auth.json`` is re-read only when its mtime changes (see ``sources.py``). The order of
the sources is in the package's docstring (``daemon/credentials/__init__.py``).

A ChatGPT sign-in is refreshed here when due, one refresh at a time, and written back
where it came from (the stored file, or Codex's own ``auth.json``, which the user's codex
shares: its refresh tokens rotate, so a copy kept only in corral's memory would sign the
user's codex out). A check's result is kept per agent together with a fingerprint of the
secret it checked, so a replaced or refreshed credential shows as unchecked, not as the
old one's verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from daemon.core.access import Credential
from daemon.core.errors import InvalidRequest, NotFound
from daemon.core.models import AgentName
from daemon.core.session import rfc3339, utcnow
from daemon.credentials import chatgpt
from daemon.credentials.check import CheckResult, check
from daemon.credentials.models import CredentialAccount, CredentialEntry, mask
from daemon.credentials.sources import (
    ENV_VARIABLES,
    Answer,
    AuthFile,
    CommandSource,
    from_auth,
    from_secret,
)
from daemon.credentials.stored import StoredCredentials, write_private_json
from daemon.log import register_secret
from daemon.settings import Settings

log = structlog.get_logger(__name__)

AGENTS: tuple[AgentName, ...] = ("claude", "codex")
REFRESH_RETRY_SECONDS = 60.0  # after a failed refresh, requests go on with the old token
MAX_SECRET_CHARS = 8192

HOW_TO_ADD = {
    "claude": "no credential: run corral login claude (a subscription's token from claude "
    "setup-token, or an API key), or set agents.anthropic_api_key or ANTHROPIC_API_KEY",
    "codex": "no credential: run corral login codex (imports ~/.codex/auth.json after codex "
    "login, or takes an API key), or set agents.openai_api_key or OPENAI_API_KEY",
}


def fingerprint(credential: Credential) -> str:
    return hashlib.sha256(f"{credential.kind}:{credential.secret}".encode()).hexdigest()


@dataclass(frozen=True)
class _Found:
    credential: Credential
    auth: dict[str, Any] | None = None  # the auth.json object a sign-in came from
    origin: str = ""  # where a refreshed sign-in goes back: stored, file or command


@dataclass(frozen=True)
class _Checked:
    fingerprint: str
    result: CheckResult
    at: str


class Credentials:
    """Where the gateway, the readiness checks and the API get each agent's credential."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        own = settings.credentials
        self.stored = StoredCredentials(settings.data_dir / "credentials.json")
        self.commands = {
            "claude": CommandSource(own.claude_command, own.command_cache_seconds),
            "codex": CommandSource(own.codex_command, own.command_cache_seconds),
        }
        self.auth_file = AuthFile(own.codex_auth_file)
        self._checks: dict[str, _Checked] = {}
        self._refresh_lock = asyncio.Lock()
        self._refresh_failed: dict[str, float] = {}

    # -- the gateway's one call

    async def credential(self, agent: AgentName) -> Credential | None:
        """The credential to use now (a due ChatGPT sign-in refreshed first), or None."""
        found = await self._find(agent)
        if found is not None and found.credential.kind == "chatgpt":
            found = await self._fresh(agent, found)
        if found is None:
            return None
        _scrub(found)
        return found.credential

    # -- the API's calls

    async def listing(self) -> list[CredentialEntry]:
        return [await self.entry(agent) for agent in AGENTS]

    async def entry(self, agent: str) -> CredentialEntry:
        name = self._agent(agent)
        credential = await self.credential(name)
        stored = await self.stored.get(name) is not None
        if credential is None:
            return CredentialEntry(
                agent=name,
                kind=None,
                source=None,
                masked=None,
                status="missing",
                checked_at=None,
                message=HOW_TO_ADD[name],
                stored=stored,
            )
        checked = self._checks.get(name)
        if checked is not None and checked.fingerprint != fingerprint(credential):
            checked = None
        account = None
        if credential.kind == "chatgpt":
            account = CredentialAccount(
                plan=credential.claims.get("plan"), email=credential.claims.get("email")
            )
        return CredentialEntry(
            agent=name,
            kind=credential.kind,
            source=credential.source,
            masked=mask(credential.secret),
            status=checked.result.status if checked else "unchecked",
            checked_at=checked.at if checked else None,
            message=checked.result.message if checked else "not checked yet",
            stored=stored,
            account=account,
        )

    async def check(self, agent: str) -> CredentialEntry:
        """Ask the provider whether the credential works; the result is kept."""
        name = self._agent(agent)
        self.commands[name].forget()  # a check asks the command again
        credential = await self.credential(name)
        if credential is not None:
            # A session per call: checks and refreshes are rare, and nothing is left open.
            async with aiohttp.ClientSession() as http:
                result = await check(http, self.settings, credential)
            self._checks[name] = _Checked(fingerprint(credential), result, _now())
            log.info(
                "credential_checked",
                agent=name,
                kind=credential.kind,
                source=credential.source,
                status=result.status,
            )
        return await self.entry(name)

    async def put(
        self, agent: str, *, secret: str | None = None, auth_json: dict[str, Any] | None = None
    ) -> CredentialEntry:
        """Store a credential (it then comes first), check it and return its entry."""
        name = self._agent(agent)
        if (secret is None) == (auth_json is None):
            raise InvalidRequest("give exactly one of secret or auth_json")
        if auth_json is not None:
            if name != "codex":
                raise InvalidRequest(
                    "auth_json is a Codex sign-in; claude takes a secret (an API key, or the "
                    "token claude setup-token prints)"
                )
            if from_auth(name, auth_json, "stored") is None:
                raise InvalidRequest(
                    "auth_json holds neither a ChatGPT sign-in (tokens.access_token) nor an "
                    "OPENAI_API_KEY; run codex login and give ~/.codex/auth.json"
                )
            entry: dict[str, Any] = {"auth_json": auth_json}
        else:
            entry = {"secret": _clean(secret or "")}
        await self.stored.put(name, entry)
        self._checks.pop(name, None)
        self._refresh_failed.pop(name, None)
        log.info("credential_stored", agent=name)
        return await self.check(name)

    async def remove(self, agent: str) -> None:
        """Remove the stored credential; the next source in order takes over."""
        name = self._agent(agent)
        if not await self.stored.remove(name):
            raise NotFound(f"no stored credential for {name}")
        self._checks.pop(name, None)
        log.info("credential_removed", agent=name)

    async def close(self) -> None:
        """Nothing stays open between calls today; the app's lifetime still calls it."""

    # -- inside

    @staticmethod
    def _agent(agent: str) -> AgentName:
        for name in AGENTS:
            if name == agent:
                return name
        raise NotFound(f"unknown agent {agent!r}; one of {', '.join(AGENTS)}")

    def _config(self, agent: AgentName) -> list[tuple[str, str]]:
        agents, own = self.settings.agents, self.settings.credentials
        if agent == "claude":
            return [
                ("agents.anthropic_api_key", agents.anthropic_api_key.get_secret_value()),
                ("credentials.claude_oauth_token", own.claude_oauth_token.get_secret_value()),
            ]
        return [("agents.openai_api_key", agents.openai_api_key.get_secret_value())]

    async def _find(self, agent: AgentName) -> _Found | None:
        """The first source in order that holds a credential."""
        stored = await self.stored.get(agent)
        if stored is not None:
            if isinstance(stored.get("auth_json"), dict):
                credential = from_auth(agent, stored["auth_json"], "stored")
                if credential is not None:
                    return _Found(credential, stored["auth_json"], "stored")
            elif isinstance(stored.get("secret"), str) and stored["secret"]:
                return _Found(from_secret(agent, stored["secret"], "stored"))
        for setting, value in self._config(agent):
            if value.strip():
                return _Found(from_secret(agent, value.strip(), f"config:{setting}"))
        answer = await self.commands[agent].answer()
        if answer is not None:
            if answer.auth is not None:
                credential = from_auth(agent, answer.auth, "command")
                if credential is not None:
                    return _Found(credential, answer.auth, "command")
            elif answer.secret:
                return _Found(from_secret(agent, answer.secret, "command"))
        for variable in ENV_VARIABLES[agent]:
            value = self.environ.get(variable, "").strip()
            if value:
                return _Found(from_secret(agent, value, f"env:{variable}"))
        if agent == "codex":
            data = await self.auth_file.data()
            credential = from_auth(agent, data, self.auth_file.source) if data else None
            if credential is not None:
                return _Found(credential, data, "file")
        return None

    async def _fresh(self, agent: AgentName, found: _Found) -> _Found:
        """The sign-in, refreshed first when due; the old one when the refresh fails."""
        signin = chatgpt.parse_auth(found.auth)
        if signin is None or not signin.due():
            return found
        if time.monotonic() - self._refresh_failed.get(agent, float("-inf")) < (
            REFRESH_RETRY_SECONDS
        ):
            return found
        async with self._refresh_lock:
            # A request that waited here may find it done, by us or by the user's codex.
            self.auth_file.forget()
            again = await self._find(agent)
            if again is None or again.auth is None:
                return found
            signin = chatgpt.parse_auth(again.auth)
            if signin is None or not signin.due():
                return again
            own = self.settings.credentials
            try:
                async with aiohttp.ClientSession() as http:
                    tokens = await chatgpt.refresh(
                        http, own.openai_token_url, signin, own.check_timeout_seconds
                    )
            except chatgpt.RefreshFailed as exc:
                self._refresh_failed[agent] = time.monotonic()
                log.warning(
                    "chatgpt_refresh_failed", source=again.credential.source, reason=str(exc)
                )
                return again
            data = chatgpt.merged(again.auth, tokens)
            await self._write_back(agent, again.origin, data)
            log.info("chatgpt_refreshed", source=again.credential.source)
            credential = from_auth(agent, data, again.credential.source)
            assert credential is not None  # merged() kept the sign-in's tokens
            return _Found(credential, data, again.origin)

    async def _write_back(self, agent: AgentName, origin: str, data: dict[str, Any]) -> None:
        if origin == "stored":
            await self.stored.put(agent, {"auth_json": data})
        elif origin == "file" and self.auth_file.path is not None:
            await asyncio.to_thread(write_private_json, self.auth_file.path, data)
            self.auth_file.forget()
        else:  # a command's answer cannot be written to: kept until it runs again
            self.commands[agent].replace(Answer(auth=data))


def _scrub(found: _Found) -> None:
    """Every secret of a credential in use is scrubbed from the logs, should one slip in."""
    register_secret(found.credential.secret)
    tokens = found.auth.get("tokens") if found.auth else None
    if isinstance(tokens, dict):
        for key in ("refresh_token", "id_token"):
            if isinstance(tokens.get(key), str):
                register_secret(tokens[key])


def _clean(secret: str) -> str:
    secret = secret.strip()
    if not secret:
        raise InvalidRequest("the secret is empty")
    if len(secret) > MAX_SECRET_CHARS:
        raise InvalidRequest(f"the secret is over {MAX_SECRET_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in secret):
        raise InvalidRequest("the secret has spaces or control characters; paste it alone")
    return secret


def _now() -> str:
    return rfc3339(utcnow()) or ""
