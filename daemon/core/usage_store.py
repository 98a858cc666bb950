"""The ``usage`` table (migration 5): one row per session, UTC day and model, added to.

The SQL of usage lives here rather than in ``store.py``; it goes through the store's one
connection (``store.db`` to read, ``store.write`` to write, so a write shares the store's
single writer thread and its error handling). Rows of deleted sessions are kept: the table
has no foreign key on purpose, so ``/api/usage`` still counts what they spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.core.store import Store

COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)

_ADD = ", ".join(f"{c} = {c} + excluded.{c}" for c in (*COUNTS, "cost_usd"))
_UPSERT = (
    f"INSERT INTO usage (session_id, day, agent, model, {', '.join(COUNTS)}, cost_usd) "  # noqa: S608 - fixed names
    f"VALUES (?, ?, ?, ?, {', '.join('?' for _ in COUNTS)}, ?) "
    f"ON CONFLICT(session_id, day, model) DO UPDATE SET {_ADD}"
)
_SELECT = f"SELECT session_id, day, agent, model, {', '.join(COUNTS)}, cost_usd FROM usage"  # noqa: S608


@dataclass
class UsageRow:
    """One row of the table: what one session spent on one model on one UTC day."""

    session_id: str
    day: str
    agent: str
    model: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0


def _row(raw: Any) -> UsageRow:
    return UsageRow(*tuple(raw))


class UsageStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, row: UsageRow) -> None:
        """Add the row's counts to the stored row of its session, day and model."""
        await self.store.write(
            [
                (
                    _UPSERT,
                    [row.session_id, row.day, row.agent, row.model,
                     *(getattr(row, c) for c in COUNTS), row.cost_usd],
                )
            ]
        )  # fmt: skip

    async def lifetime_rows(self) -> list[UsageRow]:
        """Each session's lifetime sum per model (``day`` empty): read once at start to put
        the totals in memory."""
        sums = ", ".join(f"SUM({c})" for c in (*COUNTS, "cost_usd"))
        async with self.store.db.execute(
            f"SELECT session_id, '', MIN(agent), model, {sums} FROM usage "  # noqa: S608 - fixed names
            "GROUP BY session_id, model"
        ) as cursor:
            return [_row(raw) async for raw in cursor]

    async def day_rows(self, day: str) -> list[UsageRow]:
        async with self.store.db.execute(f"{_SELECT} WHERE day = ?", [day]) as cursor:
            return [_row(raw) async for raw in cursor]

    async def session_rows(self, session_id: str) -> list[UsageRow]:
        async with self.store.db.execute(
            f"{_SELECT} WHERE session_id = ? ORDER BY day, model",
            [session_id],
        ) as cursor:
            return [_row(raw) async for raw in cursor]

    async def rows_since(self, first_day: str) -> list[UsageRow]:
        """Every session's rows from ``first_day`` (YYYY-MM-DD, UTC) on, oldest first."""
        async with self.store.db.execute(
            f"{_SELECT} WHERE day >= ? ORDER BY day, agent, model",
            [first_day],
        ) as cursor:
            return [_row(raw) async for raw in cursor]
