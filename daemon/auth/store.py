"""Queries for users, passkeys, browser sessions and API tokens on the daemon's store.

The tables come from migration 4 in ``daemon/core/store.py``; this module only reads and writes
them, on the Store's one aiosqlite connection (one writer for the whole daemon). Browser
sessions and API tokens are looked up by the SHA-256 of their secret, never kept in clear.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon.core.store import Store


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class User:
    id: str
    name: str
    display_name: str
    handle: bytes  # the WebAuthn user.id: random, never the name
    created_at: datetime


@dataclass(frozen=True)
class Credential:
    id: bytes
    user_id: str
    public_key: bytes
    sign_count: int
    transports: list[str]
    name: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class ApiToken:
    id: str
    user_id: str
    name: str
    hint: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class BrowserSession:
    user_id: str
    expires_at: datetime


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        handle=bytes(row["handle"]),
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _credential(row: sqlite3.Row) -> Credential:
    return Credential(
        id=bytes(row["id"]),
        user_id=row["user_id"],
        public_key=bytes(row["public_key"]),
        sign_count=int(row["sign_count"]),
        transports=list(json.loads(row["transports"])),
        name=row["name"],
        created_at=datetime.fromisoformat(row["created_at"]),
        last_used_at=_parse(row["last_used_at"]),
    )


def _token(row: sqlite3.Row) -> ApiToken:
    return ApiToken(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        hint=row["hint"],
        created_at=datetime.fromisoformat(row["created_at"]),
        last_used_at=_parse(row["last_used_at"]),
    )


class AuthStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _one(self, sql: str, params: Iterable[Any]) -> sqlite3.Row | None:
        async with self._store.db.execute(sql, tuple(params)) as cur:
            row: sqlite3.Row | None = await cur.fetchone()
        return row

    async def _all(self, sql: str, params: Iterable[Any]) -> list[sqlite3.Row]:
        async with self._store.db.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    # users and passkeys

    async def user_count(self) -> int:
        row = await self._one("SELECT COUNT(*) FROM users", ())
        return int(row[0]) if row else 0

    async def user(self, user_id: str) -> User | None:
        row = await self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        return _user(row) if row else None

    async def user_by_name(self, name: str) -> User | None:
        row = await self._one("SELECT * FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    async def credential(self, credential_id: bytes) -> Credential | None:
        row = await self._one("SELECT * FROM credentials WHERE id = ?", (credential_id,))
        return _credential(row) if row else None

    async def credentials_of(self, user_id: str) -> list[Credential]:
        rows = await self._all(
            "SELECT * FROM credentials WHERE user_id = ? ORDER BY created_at", (user_id,)
        )
        return [_credential(r) for r in rows]

    async def add_credential(self, credential: Credential, new_user: User | None) -> None:
        """Store a passkey, with its user when the registration creates one (one transaction)."""
        statements: list[tuple[str, Iterable[Any]]] = []
        if new_user is not None:
            statements.append(
                (
                    "INSERT INTO users (id, name, display_name, handle, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (new_user.id, new_user.name, new_user.display_name, new_user.handle,
                     _ts(new_user.created_at)),
                )
            )  # fmt: skip
        statements.append(
            (
                "INSERT INTO credentials (id, user_id, public_key, sign_count, transports, name, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (credential.id, credential.user_id, credential.public_key, credential.sign_count,
                 json.dumps(credential.transports), credential.name, _ts(credential.created_at)),
            )
        )  # fmt: skip
        await self._store.write(statements)

    async def advance_sign_count(self, credential_id: bytes, seen: int, new: int) -> bool:
        """Record a use; False when another sign-in moved the count first (a replay race).

        The count only moves from the value this sign-in was verified against, so two
        concurrent assertions checked against the same old count cannot both pass.
        """
        changed = await self._store.write(
            [
                (
                    "UPDATE credentials SET sign_count = ?, last_used_at = ? "
                    "WHERE id = ? AND sign_count = ?",
                    (new, _ts(utcnow()), credential_id, seen),
                )
            ]
        )
        return changed == 1

    async def rename_credential(self, credential_id: bytes, user_id: str, name: str) -> bool:
        changed = await self._store.write(
            [
                (
                    "UPDATE credentials SET name = ? WHERE id = ? AND user_id = ?",
                    (name, credential_id, user_id),
                )
            ]
        )
        return changed == 1

    async def delete_credential(
        self, credential_id: bytes, user_id: str, keep_session: str
    ) -> bool:
        """Delete a passkey unless it is the user's last, with every other browser session.

        False when nothing was deleted. One transaction, with the
        "not the last" condition inside each statement: two concurrent deletes of the last
        two passkeys cannot both pass. Which passkey signed each session in is not kept, so
        all of the user's sessions but the caller's end (a superset of that passkey's).
        """
        guard = (
            "EXISTS (SELECT 1 FROM credentials WHERE id = ? AND user_id = ?) "
            "AND (SELECT COUNT(*) FROM credentials WHERE user_id = ?) > 1"
        )
        guard_params = (credential_id, user_id, user_id)
        sessions = (
            f"DELETE FROM auth_sessions WHERE user_id = ? AND token_hash != ? AND {guard}",  # noqa: S608 - fixed text
            (user_id, keep_session, *guard_params),
        )
        credential = (
            f"DELETE FROM credentials WHERE id = ? AND user_id = ? AND {guard}",  # noqa: S608 - fixed text
            (credential_id, user_id, *guard_params),
        )
        # Sessions first, while the guard still sees the passkey.
        return await self._store.write([sessions, credential]) == 1

    # browser sessions

    async def add_session(self, token_hash: str, user_id: str, now: datetime,
                          expires_at: datetime) -> None:  # fmt: skip
        await self._store.write(
            [
                ("DELETE FROM auth_sessions WHERE expires_at <= ?", (_ts(now),)),
                (
                    "INSERT INTO auth_sessions (token_hash, user_id, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (token_hash, user_id, _ts(now), _ts(expires_at)),
                ),
            ]
        )

    async def session(self, token_hash: str) -> BrowserSession | None:
        row = await self._one(
            "SELECT user_id, expires_at FROM auth_sessions WHERE token_hash = ?", (token_hash,)
        )
        if row is None:
            return None
        return BrowserSession(row["user_id"], datetime.fromisoformat(row["expires_at"]))

    async def delete_session(self, token_hash: str) -> None:
        await self._store.write([("DELETE FROM auth_sessions WHERE token_hash = ?", (token_hash,))])

    async def delete_sessions_of(self, user_id: str) -> int:
        return await self._store.write(
            [("DELETE FROM auth_sessions WHERE user_id = ?", (user_id,))]
        )

    async def purge_sessions(self, now: datetime) -> None:
        await self._store.write([("DELETE FROM auth_sessions WHERE expires_at <= ?", (_ts(now),))])

    # API tokens

    async def add_token(self, token: ApiToken, token_hash: str) -> None:
        await self._store.write(
            [
                (
                    "INSERT INTO api_tokens (id, user_id, name, token_hash, hint, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (token.id, token.user_id, token.name, token_hash, token.hint,
                     _ts(token.created_at)),
                )
            ]
        )  # fmt: skip

    async def token_by_hash(self, token_hash: str) -> ApiToken | None:
        row = await self._one("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return _token(row) if row else None

    async def tokens_of(self, user_id: str) -> list[ApiToken]:
        rows = await self._all(
            "SELECT * FROM api_tokens WHERE user_id = ? ORDER BY created_at, id", (user_id,)
        )
        return [_token(r) for r in rows]

    async def delete_token(self, user_id: str, token_id: str) -> bool:
        deleted = await self._store.write(
            [("DELETE FROM api_tokens WHERE id = ? AND user_id = ?", (token_id, user_id))]
        )
        return deleted == 1

    async def touch_token(self, token_id: str, now: datetime) -> None:
        await self._store.write(
            [("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (_ts(now), token_id))]
        )
