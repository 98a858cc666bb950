"""Each launch's way to the model: a new placeholder, the network, the gateway's address.

Called every time a session's container (or local process) is made. What the session gets
depends on its egress (``docs/decisions.md``, "Credentials"):

* ``open``: the configured network (``docker.network_mode``, the default bridge), and the
  gateway on the host's address there;
* ``allowlist``: corral's internal network (no route off the machine), the gateway on the
  host's address there, and corral's egress proxy beside it for the allowed hosts;
* ``none``: the internal network and the gateway alone;
* a local session: the gateway on 127.0.0.1 (its agent is a host process).

The placeholder is made in the kind of the credential configured now, because the agent
runs in that mode (an OAuth token and an API key make Claude Code send different
headers); a credential of another kind later needs a recreate, which the gateway says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace

import structlog

from backends.base import Backend, BackendError, BackendUnavailable
from backends.docker import SEALED_NETWORK
from daemon.agents.codex import chatgpt_placeholder
from daemon.core.access import (
    AgentAccess,
    CredentialKind,
    CredentialSource,
    GatewayEndpoints,
    Placeholders,
)
from daemon.core.models import SessionStatus
from daemon.core.session import SessionRecord
from daemon.settings import Settings

LOOPBACK = "127.0.0.1"

log = structlog.get_logger(__name__)


class AccessPlanner:
    """Works out, and makes ready, what one launch of a session needs to reach its model."""

    def __init__(
        self,
        settings: Settings,
        placeholders: Placeholders,
        credentials: CredentialSource,
        endpoints: GatewayEndpoints,
        backends: dict[str, Backend],
    ) -> None:
        self.settings = settings
        self.placeholders = placeholders
        self.credentials = credentials
        self.endpoints = endpoints
        self.backends = backends

    async def plan(self, record: SessionRecord) -> AgentAccess:
        credential = await self.credentials.credential(record.agent)
        kind: CredentialKind = credential.kind if credential is not None else "api_key"
        network, address = await self._network(record)
        gateway = await self.endpoints.gateway_url(address)
        # Codex reads its ChatGPT access token as a JWT (plan, expiry): the placeholder is
        # shaped as one, expiring far ahead so that Codex never tries to refresh it.
        shape = chatgpt_placeholder(credential.claims) if credential and kind == "chatgpt" else None
        placeholder = await self.placeholders.issue(record.id, kind, shape, agent=record.agent)
        if record.agent == "claude":
            base_url = f"{gateway}/anthropic"
        elif kind == "chatgpt":
            base_url = f"{gateway}/chatgpt/codex"
        else:
            base_url = f"{gateway}/openai"
        access = AgentAccess(
            kind=kind,
            placeholder=placeholder,
            base_url=base_url,
            # "/backend-api" in it: Codex (0.169.0) then calls the ChatGPT backend's own
            # paths (wham/accounts/check); under any other URL it calls api/codex/...,
            # which chatgpt.com does not serve (measured). The gateway drops the segment.
            chatgpt_url=f"{gateway}/chatgpt/backend-api/" if kind == "chatgpt" else "",
            network=network,
            no_proxy=f"{address},localhost,127.0.0.1",
        )
        if credential is not None and kind == "chatgpt":
            access = replace(access, account_id=credential.account_id, claims=credential.claims)
        if record.egress == "allowlist" and record.backend == "docker":
            access = replace(access, proxy_url=await self.endpoints.proxy_url(address))
        return access

    async def restore(self, records: Iterable[SessionRecord]) -> None:
        """After a restart: listen again where the running containers were told the gateway
        (and the proxy) are. Their networks' addresses come from the engine, so this waits
        for it, trying again with back-off while it does not answer."""
        running = [
            r
            for r in records
            if r.backend == "docker" and r.container_id and not r.archived
            and r.status is SessionStatus.RUNNING
        ]  # fmt: skip
        delay = 1.0
        while running:
            try:
                for record in list(running):
                    _, address = await self._network(record)
                    await self.endpoints.gateway_url(address)
                    if record.egress == "allowlist":
                        await self.endpoints.proxy_url(address)
                    running.remove(record)
            except (BackendError, BackendUnavailable, OSError) as exc:
                log.info("gateway_restore_waiting", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def revoke(self, session_id: str) -> None:
        await self.placeholders.revoke(session_id)

    async def _network(self, record: SessionRecord) -> tuple[str, str]:
        """The container's network and the host's address on it."""
        if record.backend != "docker":
            return "", LOOPBACK
        backend = self.backends["docker"]
        if record.egress == "open":
            network = self.settings.docker.network_mode
            # The host's own network: its loopback is the gateway's. No network at all:
            # nothing to reach, the agent is told the loopback and fails to connect.
            if network in ("host", "none"):
                return network, LOOPBACK
            return network, await backend.ensure_network(network, internal=False)
        # corral's internal network: no route off the machine, no traffic between sessions.
        return SEALED_NETWORK, await backend.ensure_network(SEALED_NETWORK, internal=True)
