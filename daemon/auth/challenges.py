"""Pending ceremony challenges: single use, short-lived, bounded in number.

Challenges live in memory, keyed by the challenge bytes themselves: the browser echoes the
challenge in ``clientDataJSON``, so the complete call needs no ceremony id, and a daemon
restart simply voids the ceremonies in flight (docs/decisions.md, "Security").
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from daemon.auth.store import User
from daemon.core.errors import Unauthorized

CHALLENGE_SECONDS = 300.0
MAX_PENDING = 1024  # sign-in challenges waiting, from anyone
MAX_REGISTRATIONS_PER_OWNER = 8  # registrations waiting, per signed-in user or setup token


@dataclass
class Pending:
    """One ceremony begun and not yet completed."""

    kind: Literal["register", "login"]
    expires: float
    user_id: str | None = None  # register: the signed-in user adding a passkey
    new_user: User | None = None  # register: the first user, created with the setup token
    setup_token: str | None = None  # register: the setup token it was begun with
    username: str | None = None  # login: the user named at begin, if any

    @property
    def owner(self) -> str:
        """Whose registration this is: only they can push it out of the pool."""
        return f"user:{self.user_id}" if self.user_id is not None else "setup"


class Challenges:
    """Pending ceremony challenges: single use, short-lived, bounded in number.

    Two pools, so a flood of one kind never evicts the other. Sign-in challenges are
    handed to anyone and bounded as a whole (the oldest goes first). A registration is
    begun only by a signed-in user or a holder of the setup token, and each of those owners
    has room for ``per_owner`` of them: their own newest push out their own oldest, and
    nobody else's calls touch them.
    """

    def __init__(
        self,
        ttl: float = CHALLENGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        limit: int = MAX_PENDING,
        per_owner: int = MAX_REGISTRATIONS_PER_OWNER,
    ) -> None:
        self.ttl = ttl
        self.clock = clock  # tests move it to expire a challenge
        self.limit = limit
        self.per_owner = per_owner
        self._login: dict[bytes, Pending] = {}
        self._register: dict[bytes, Pending] = {}

    def _pool(self, kind: str) -> dict[bytes, Pending]:
        return self._register if kind == "register" else self._login

    def issue(self, pending: Pending) -> bytes:
        now = self.clock()
        pool = self._pool(pending.kind)
        for key in [k for k, p in pool.items() if p.expires <= now]:
            del pool[key]
        if pending.kind == "register":
            mine = [k for k, p in pool.items() if p.owner == pending.owner]
            for key in mine[: max(0, len(mine) - self.per_owner + 1)]:
                del pool[key]  # the owner's oldest (dicts keep order)
        else:
            while len(pool) >= self.limit:
                del pool[next(iter(pool))]  # the oldest
        challenge = secrets.token_bytes(32)
        pending.expires = now + self.ttl
        pool[challenge] = pending
        return challenge

    def take(self, challenge: bytes, kind: str) -> Pending:
        pending = self._pool(kind).pop(challenge, None)
        if pending is None:
            raise Unauthorized("unknown or already used challenge: begin the ceremony again")
        if self.clock() >= pending.expires:
            raise Unauthorized("the challenge expired: begin the ceremony again")
        return pending

    def __len__(self) -> int:
        return len(self._login) + len(self._register)
