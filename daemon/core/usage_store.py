"""The ``usage`` table (migration 5): one row per session, UTC day and model, added to.

The SQL of usage lives here rather than in ``store.py``; it goes through the store's one
connection (``store.db`` to read, ``store.write`` to write, so a write shares the store's
single writer thread and its error handling). Rows of deleted sessions are kept: the table
has no foreign key on purpose, so ``/api/usage`` still counts what they spent.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from daemon.core.access import Usage
from daemon.core.store import Store


@dataclass
class Counts(Usage):
    """What is counted and added up: the tokens of each kind (``Usage``'s), requests, errors
    and the estimated cost. The table's columns bear the same names."""

    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0

    def add(self, other: Counts) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# Every counted column; the one list the SQL below and the sums are written from.
COUNTS = tuple(f.name for f in fields(Counts))
_KEYS = ("session_id", "day", "agent", "model")

_ADD = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTS)
_UPSERT = (
    f"INSERT INTO usage ({', '.join((*_KEYS, *COUNTS))}) "  # noqa: S608 - fixed names
    f"VALUES ({', '.join('?' for _ in (*_KEYS, *COUNTS))}) "
    f"ON CONFLICT(session_id, day, model) DO UPDATE SET {_ADD}"
)
_SELECT = f"SELECT {', '.join((*_KEYS, *COUNTS))} FROM usage"  # noqa: S608 - fixed names


@dataclass(kw_only=True)
class UsageRow(Counts):
    """One row of the table: what one session spent on one model on one UTC day."""

    session_id: str
    day: str
    agent: str
    model: str


def _row(raw: Any) -> UsageRow:
    """A row read as ``_KEYS`` then ``COUNTS``."""
    values = tuple(raw)
    keys = dict(zip(_KEYS, values[: len(_KEYS)], strict=True))
    return UsageRow(**keys, **dict(zip(COUNTS, values[len(_KEYS) :], strict=True)))


class UsageStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, row: UsageRow) -> None:
        """Add the row's counts to the stored row of its session, day and model."""
        await self.store.write(
            [
                (
                    _UPSERT,
                    [getattr(row, c) for c in (*_KEYS, *COUNTS)],
                )
            ]
        )  # fmt: skip

    async def lifetime_rows(self) -> list[UsageRow]:
        """Each session's lifetime sum per model (``day`` empty): read once at start to put
        the totals in memory."""
        sums = ", ".join(f"SUM({c})" for c in COUNTS)
        return await self._rows(
            f"SELECT session_id, '', MIN(agent), model, {sums} FROM usage "  # noqa: S608 - fixed names
            "GROUP BY session_id, model"
        )

    async def day_rows(self, day: str) -> list[UsageRow]:
        return await self._rows(f"{_SELECT} WHERE day = ?", day)

    async def session_rows(self, session_id: str) -> list[UsageRow]:
        return await self._rows(f"{_SELECT} WHERE session_id = ? ORDER BY day, model", session_id)

    async def rows_since(self, first_day: str) -> list[UsageRow]:
        """Every session's rows from ``first_day`` (YYYY-MM-DD, UTC) on, oldest first."""
        return await self._rows(f"{_SELECT} WHERE day >= ? ORDER BY day, agent, model", first_day)

    async def _rows(self, sql: str, *params: str) -> list[UsageRow]:
        async with self.store.db.execute(sql, params) as cursor:
            return [_row(raw) async for raw in cursor]
