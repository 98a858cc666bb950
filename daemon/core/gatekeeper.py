"""Which session a gateway or proxy request comes from: the placeholder and the peer address.

A placeholder alone is not enough: it lives in a container, and an agent there may send it
anywhere (to another session's container, to a page it serves). So a request counts only
when it also comes from the address of that session's own container, or from the loopback
for a local session (whose agent is a host process, as trusted as any other). Containers
run with no capabilities (``CapDrop: ALL``, so no ``NET_RAW``): one cannot forge another's
source address on the bridge. The host itself reaches the gateway from the network's
gateway address, which is no container's.

Container addresses are asked of the engine once and kept; a mismatch asks again (a
recreated container has a new address), at most once a second per session, so a stream of
bad requests cannot become a stream of engine calls.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping

import structlog

from backends.base import Backend
from daemon.core.access import AccessDenied, GatewayClient, Placeholders
from daemon.core.models import SessionStatus
from daemon.core.session import SessionRecord

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 1.0


def peer_address(remote: str | None) -> str:
    """The peer's address as the engine writes it (IPv4-mapped IPv6 unwrapped)."""
    if not remote:
        return ""
    try:
        parsed = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Gatekeeper:
    """The :class:`~daemon.core.access.SessionGuard` of the gateway and the egress proxy."""

    def __init__(
        self,
        placeholders: Placeholders,
        records: Mapping[str, SessionRecord],
        backends: Mapping[str, Backend],
        *,
        host_network: bool = False,
    ) -> None:
        # With docker.network_mode = "host" a container's requests come from the loopback
        # like any host process's (allowed only by docker.allow_host_network, announced).
        self.host_network = host_network
        self.placeholders = placeholders
        self.records = records
        self.backends = backends
        # session id -> (container id, its address, when asked)
        self._addresses: dict[str, tuple[str, str | None, float]] = {}

    async def authorize(self, token: str, remote: str) -> GatewayClient:
        found = self.placeholders.session_for(token)
        if found is None:
            raise AccessDenied("corral gateway: this credential is not a live session's")
        session_id, kind = found
        record = self.records.get(session_id)
        if record is None or record.archived:
            raise AccessDenied("corral gateway: the session is archived or deleted")
        peer = peer_address(remote)
        if record.backend == "local" or (self.host_network and record.egress == "open"):
            if not is_loopback(peer):
                raise AccessDenied("corral gateway: a local session's credential, used remotely")
        elif peer != await self._address(record, peer):
            log.warning("gateway_wrong_peer", session_id=session_id, peer=peer)
            raise AccessDenied(
                "corral gateway: this credential belongs to another session's container"
            )
        return GatewayClient(session_id, record.agent, kind, record.egress)

    async def session_at(self, remote: str) -> GatewayClient | None:
        peer = peer_address(remote)
        candidates = [
            r
            for r in self.records.values()
            if r.backend == "docker"
            and r.container_id
            and not r.archived
            and r.status is SessionStatus.RUNNING
        ]
        for fresh in (False, True):
            for record in candidates:
                if await self._address(record, peer if fresh else None) == peer:
                    found = self.placeholders.kind_of(record.id)
                    return GatewayClient(record.id, record.agent, found or "api_key", record.egress)
        return None

    async def _address(self, record: SessionRecord, mismatch: str | None) -> str | None:
        """The session's container's address; asked again when it does not match
        ``mismatch`` (the peer seen), unless asked within the last second."""
        container_id = record.container_id
        if not container_id:
            return None
        known = self._addresses.get(record.id)
        now = time.monotonic()
        fresh_enough = known is not None and (
            mismatch is None or known[1] == mismatch or now - known[2] < RECHECK_SECONDS
        )
        if known is not None and known[0] == container_id and fresh_enough:
            return known[1]
        backend = self.backends.get(record.backend)
        address = await backend.container_address(container_id) if backend else None
        self._addresses[record.id] = (container_id, address, now)
        return address
