"""Which session a gateway request comes from: the placeholder, and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.core.access import AccessDenied, Placeholders, token_hash
from daemon.core.gatekeeper import Gatekeeper, peer_address
from daemon.core.session import SessionRecord
from daemon.core.store import Store


class Engine:
    """A backend that only says where containers are, and counts how often it is asked."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses
        self.asked = 0

    async def container_address(self, container_id: str) -> str | None:
        self.asked += 1
        return self.addresses.get(container_id)


def record(session_id: str, **fields: Any) -> SessionRecord:
    base: dict[str, Any] = {
        "id": session_id,
        "name": session_id,
        "backend": "docker",
        "agent": "claude",
        "status": "running",
        "prompt": "p",
        "container_id": f"c-{session_id}",
        "egress": "allowlist",
        "created_at": "2026-01-28T12:30:00Z",
        "updated_at": "2026-01-28T12:30:00Z",
        "repositories": [],
    }
    return SessionRecord.model_validate({**base, **fields})


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = Store(tmp_path / "corral.db")
    await opened.open()
    yield opened
    await opened.close()


async def _placeholders(store: Store, *records: SessionRecord) -> Placeholders:
    for one in records:
        await store.insert_session(one)
    made = Placeholders(store)
    await made.load()
    return made


async def test_a_placeholder_counts_only_from_its_own_container(store: Store) -> None:
    a, b = record("a"), record("b")
    placeholders = await _placeholders(store, a, b)
    token_a = await placeholders.issue("a", "api_key")
    engine = Engine({"c-a": "172.30.0.2", "c-b": "172.30.0.3"})
    guard = Gatekeeper(placeholders, {"a": a, "b": b}, {"docker": engine})  # type: ignore[dict-item]

    client = await guard.authorize(token_a, "172.30.0.2")
    assert (client.session_id, client.agent, client.kind, client.egress) == (
        "a",
        "claude",
        "api_key",
        "allowlist",
    )
    for elsewhere in ("172.30.0.3", "172.30.0.1", "127.0.0.1", ""):
        with pytest.raises(AccessDenied, match="another session's container"):
            await guard.authorize(token_a, elsewhere)
    with pytest.raises(AccessDenied, match="not a live session's"):
        await guard.authorize("sk-ant-api03-corral-guessed", "172.30.0.2")
    # A stream of bad requests asks the engine again at most once a second.
    assert engine.asked <= 2


async def test_revoked_archived_and_replaced_placeholders_stop_working(store: Store) -> None:
    a = record("a")
    placeholders = await _placeholders(store, a)
    records = {"a": a}
    guard = Gatekeeper(placeholders, records, {"docker": Engine({"c-a": "172.30.0.2"})})  # type: ignore[dict-item]
    first = await placeholders.issue("a", "api_key")
    second = await placeholders.issue("a", "oauth_token")  # a new container: a new one
    with pytest.raises(AccessDenied):
        await guard.authorize(first, "172.30.0.2")
    assert (await guard.authorize(second, "172.30.0.2")).kind == "oauth_token"

    a.archived = True
    with pytest.raises(AccessDenied, match="archived or deleted"):
        await guard.authorize(second, "172.30.0.2")
    a.archived = False
    await placeholders.revoke("a")
    with pytest.raises(AccessDenied, match="not a live session's"):
        await guard.authorize(second, "172.30.0.2")
    del records["a"]
    third = await placeholders.issue("a", "api_key")
    with pytest.raises(AccessDenied, match="archived or deleted"):
        await guard.authorize(third, "172.30.0.2")


async def test_placeholders_survive_a_restart_and_only_their_hash_is_kept(store: Store) -> None:
    a = record("a")
    placeholders = await _placeholders(store, a)
    token = await placeholders.issue("a", "chatgpt", shape=lambda random: f"x.y.{random}")
    assert token.startswith("x.y.corral-")
    async with store.db.execute("SELECT token_hash FROM gateway_tokens") as cursor:
        stored = [row[0] async for row in cursor]
    assert stored == [token_hash(token)]
    again = Placeholders(store)
    await again.load()
    assert again.session_for(token) == ("a", "chatgpt")
    assert again.kind_of("a") == "chatgpt"


async def test_a_local_session_is_served_on_the_loopback_only(store: Store) -> None:
    local = record("l", backend="local", container_id=None, egress="open")
    placeholders = await _placeholders(store, local)
    token = await placeholders.issue("l", "api_key")
    guard = Gatekeeper(placeholders, {"l": local}, {})
    assert (await guard.authorize(token, "127.0.0.1")).session_id == "l"
    assert (await guard.authorize(token, "::ffff:127.0.0.1")).session_id == "l"
    with pytest.raises(AccessDenied, match="used remotely"):
        await guard.authorize(token, "172.17.0.5")


async def test_the_proxy_finds_running_sessions_by_address(store: Store) -> None:
    a, stopped = record("a"), record("s", status="stopped")
    placeholders = await _placeholders(store, a, stopped)
    await placeholders.issue("a", "api_key")
    engine = Engine({"c-a": "172.30.0.2", "c-s": "172.30.0.9"})
    guard = Gatekeeper(placeholders, {"a": a, "s": stopped}, {"docker": engine})  # type: ignore[dict-item]
    found = await guard.session_at("172.30.0.2")
    assert found is not None
    assert found.session_id == "a"
    assert await guard.session_at("172.30.0.9") is None  # not running
    assert await guard.session_at("10.0.0.1") is None


def test_peer_addresses_are_written_as_the_engine_writes_them() -> None:
    assert peer_address("::ffff:172.17.0.2") == "172.17.0.2"
    assert peer_address("172.17.0.2") == "172.17.0.2"
    assert peer_address(None) == ""
