"""Usage per session and the budgets: the model gateway's :class:`UsageMeter`.

The gateway asks :meth:`Meter.refusal` before it forwards a model request (synchronous and
from memory: it sits on the path of every request) and calls :meth:`Meter.record` with what
the answer said it used. A refused request is told to the meter with :meth:`Meter.refused`
so that the session shows why its agent stopped.

What is counted goes to the ``usage`` table (``daemon/core/usage_store.py``), one row per
session, UTC day and model; memory holds each session's lifetime totals and today's total
of all sessions, which is all a refusal needs. A request that exhausts a budget (the
session's ``max_cost_usd``/``max_tokens`` over its life, or ``[usage] daily_max_*`` over all
sessions and the UTC day) puts the session's ``agent_state`` to ``error`` with the reason
``budget_exhausted`` (a ``session_status`` event); a budget raised so that it may spend
again clears it, and the agent goes on at its next request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import structlog

from daemon.core.access import Usage
from daemon.core.errors import SessionNotFound
from daemon.core.hub import EventHub
from daemon.core.models import AgentState, Session
from daemon.core.session import SessionRecord
from daemon.core.store import Store, StoreError
from daemon.core.usage_models import (
    AgentUsage,
    BudgetState,
    BudgetUpdate,
    DailyBudget,
    DayUsage,
    ModelUsage,
    SessionUsage,
    UsageReport,
    UsageTotals,
)
from daemon.core.usage_models import UsageRow as ApiUsageRow
from daemon.core.usage_store import COUNTS, Counts, UsageRow, UsageStore
from daemon.settings import ModelPrice, Settings

log = structlog.get_logger(__name__)

BUDGET_EXHAUSTED = "budget_exhausted"  # agent_state_reason, and how a refusal begins
PER_MILLION = 1_000_000
K = TypeVar("K", bound=Any)


class Sessions(Protocol):
    """What the meter needs of the SessionManager."""

    records: dict[str, SessionRecord]

    async def save(self, record: SessionRecord, *fields: str) -> None: ...

    async def publish_status(self, record: SessionRecord) -> None: ...

    def to_api(self, record: SessionRecord) -> Session: ...


def utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


def find_price(prices: dict[str, ModelPrice], model: str) -> ModelPrice | None:
    """The price of the longest prefix of ``model`` in the table (case ignored), or None."""
    name = model.lower()
    best: tuple[int, ModelPrice] | None = None
    for prefix, price in prices.items():
        if name.startswith(prefix.lower()) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), price)
    return best[1] if best else None


def cost_of(price: ModelPrice | None, usage: Usage) -> float:
    if price is None:
        return 0.0
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_tokens * price.cache_read
        + usage.cache_write_tokens * price.cache_write
    ) / PER_MILLION


@dataclass
class Tally(Counts):
    """Running sums of usage rows."""

    unpriced: bool = False  # some tokens went to a model the price table does not know

    def add_row(self, row: UsageRow, *, priced: bool) -> None:
        self.add(row)
        if not priced and row.total_tokens > 0:
            self.unpriced = True

    def api(self) -> UsageTotals:
        counts = {name: getattr(self, name) for name in COUNTS}
        return UsageTotals(
            **counts | {"cost_usd": round(self.cost_usd, 6)},
            total_tokens=self.total_tokens,
            priced=not self.unpriced,
        )


def _usd(amount: float) -> str:
    # Cents hide what a small budget is made of: below a dollar, show four decimals.
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}".rstrip("0").rstrip(".")


class Meter:
    """Counts usage per session and keeps the budgets (the gateway's ``UsageMeter``).

    Wiring (daemon/app.py): ``meter = Meter(store, hub, manager, settings)``, then
    ``await meter.load()`` after the manager's records are loaded, then ``manager.usage =
    meter`` (the list shows each session's spend and its cache follows ``meter.changes``).
    The gateway calls ``refusal``, then ``await refused(id)`` when it refuses, else
    ``await record(...)`` once the answer is through.
    """

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        sessions: Sessions,
        settings: Settings,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.rows = UsageStore(store)
        self.hub = hub
        self.sessions = sessions
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self._sessions: dict[str, Tally] = {}
        self._day = ""
        self._today = Tally()
        # Moves with every request counted: answers that show spend are cached under it.
        self.changes = 0

    def _price(self, model: str) -> ModelPrice | None:
        return find_price(self.settings.usage.prices, model)

    def _priced(self, model: str) -> bool:
        return self._price(model) is not None

    async def load(self) -> None:
        """Each session's lifetime totals and today's total of all, from the store."""
        self._sessions = {}
        for row in await self.rows.lifetime_rows():
            self._sessions.setdefault(row.session_id, Tally()).add_row(
                row, priced=self._priced(row.model)
            )
        self._day = utc_day(self.clock())
        self._today = Tally()
        for row in await self.rows.day_rows(self._day):
            self._today.add_row(row, priced=self._priced(row.model))
        self.changes += 1

    def _today_tally(self) -> Tally:
        day = utc_day(self.clock())
        if day != self._day:  # a new UTC day: the daily budget starts again
            self._day, self._today = day, Tally()
        return self._today

    # reading

    def totals(self, session_id: str) -> UsageTotals:
        return self._sessions.get(session_id, Tally()).api()

    def spent(self, session_id: str) -> tuple[float, int]:
        """(estimated USD, tokens) over the session's life, from memory."""
        tally = self._sessions.get(session_id)
        return (round(tally.cost_usd, 6), tally.total_tokens) if tally else (0.0, 0)

    def refusal(self, session_id: str) -> str | None:
        """None while the session may spend; else why not, for the agent's user to read."""
        record = self.sessions.records.get(session_id)
        if record is not None:
            tally = self._sessions.get(session_id, Tally())
            if record.max_cost_usd is not None and tally.cost_usd >= record.max_cost_usd:
                return (
                    f"{BUDGET_EXHAUSTED}: session budget of {_usd(record.max_cost_usd)} reached "
                    f"({_usd(tally.cost_usd)} spent); raise it in corral to go on"
                )
            if record.max_tokens is not None and tally.total_tokens >= record.max_tokens:
                return (
                    f"{BUDGET_EXHAUSTED}: session budget of {record.max_tokens:,} tokens "
                    f"reached ({tally.total_tokens:,} used); raise it in corral to go on"
                )
        return self._daily_refusal()

    def _daily_refusal(self) -> str | None:
        limits = self.settings.usage
        today = self._today_tally()
        if limits.daily_max_cost_usd > 0 and today.cost_usd >= limits.daily_max_cost_usd:
            return (
                f"{BUDGET_EXHAUSTED}: daily budget of {_usd(limits.daily_max_cost_usd)} for all "
                f"sessions reached ({_usd(today.cost_usd)} spent today, UTC); raise "
                "usage.daily_max_cost_usd in corral's config or wait for the next day"
            )
        if limits.daily_max_tokens > 0 and today.total_tokens >= limits.daily_max_tokens:
            return (
                f"{BUDGET_EXHAUSTED}: daily budget of {limits.daily_max_tokens:,} tokens for all "
                f"sessions reached ({today.total_tokens:,} used today, UTC); raise "
                "usage.daily_max_tokens in corral's config or wait for the next day"
            )
        return None

    # counting

    async def record(
        self, session_id: str, model: str, usage: Usage, *, error: bool = False
    ) -> None:
        """Add one request (an error counts as a request and an error)."""
        record = self.sessions.records.get(session_id)
        price = self._price(model)
        row = UsageRow(
            session_id=session_id,
            day=utc_day(self.clock()),
            agent=record.agent if record is not None else "unknown",
            model=model,
            requests=1,
            errors=int(error),
            cost_usd=cost_of(price, usage),
            **asdict(usage),
        )
        # Memory first, before any await: a request that starts meanwhile is judged with
        # this one counted.
        self._sessions.setdefault(session_id, Tally()).add_row(row, priced=price is not None)
        self._today_tally().add_row(row, priced=price is not None)
        self.changes += 1
        try:
            await self.rows.add(row)
        except StoreError:
            # The spend happened whether or not the disk took it: memory keeps counting it
            # (the budget holds) and the daemon goes on.
            log.warning("usage_not_stored", session_id=session_id, model=model)
        if record is None:  # deleted meanwhile: counted in /api/usage, nobody to tell
            return
        await self.hub.publish("usage", session_id, usage=self.totals(session_id).model_dump())
        refused = self.refusal(session_id)
        if refused is not None:
            await self._exhausted(record)
        elif _is_exhausted(record):  # allowed again (a new day): the error is over
            await self._clear(record)

    async def refused(self, session_id: str) -> None:
        """The gateway refused the session's request: show why its agent stopped."""
        record = self.sessions.records.get(session_id)
        if record is not None and self.refusal(session_id) is not None:
            await self._exhausted(record)

    async def _exhausted(self, record: SessionRecord) -> None:
        if record.agent_state is AgentState.ERROR:  # said already, or an error of another's
            return
        # Set before the first await: a request counted meanwhile sees it done.
        record.agent_state = AgentState.ERROR
        record.agent_state_reason = BUDGET_EXHAUSTED
        log.info("budget_exhausted", session_id=record.id)
        await self.sessions.save(record, "agent_state", "agent_state_reason")
        await self.sessions.publish_status(record)

    async def _clear(self, record: SessionRecord) -> None:
        record.agent_state = AgentState.UNKNOWN
        record.agent_state_reason = None
        await self.sessions.save(record, "agent_state", "agent_state_reason")
        await self.sessions.publish_status(record)

    # budgets

    async def set_budget(self, session_id: str, update: BudgetUpdate) -> SessionRecord:
        """Change the keys given (null removes a budget); clear the error once it may
        spend again, so the agent goes on at its next request."""
        record = self.sessions.records.get(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        fields = sorted(update.model_fields_set)
        for name in fields:
            setattr(record, name, getattr(update, name))
        cleared = _is_exhausted(record) and self.refusal(session_id) is None
        if cleared:
            record.agent_state = AgentState.UNKNOWN
            record.agent_state_reason = None
            fields += ["agent_state", "agent_state_reason"]
        if fields:
            await self.sessions.save(record, *fields)
            await self.hub.publish(
                "session_updated",
                record.id,
                session=self.sessions.to_api(record).model_dump(mode="json"),
            )
        if cleared:
            await self.sessions.publish_status(record)
        return record

    def budget(self, record: SessionRecord) -> BudgetState:
        cost, tokens = self.spent(record.id)
        return BudgetState(
            max_cost_usd=record.max_cost_usd,
            max_tokens=record.max_tokens,
            spent_cost_usd=cost,
            spent_tokens=tokens,
            exhausted=self.refusal(record.id),
        )

    def daily_budget(self) -> DailyBudget:
        limits = self.settings.usage
        today = self._today_tally()
        return DailyBudget(
            day=self._day,
            max_cost_usd=limits.daily_max_cost_usd or None,
            max_tokens=limits.daily_max_tokens or None,
            spent_cost_usd=round(today.cost_usd, 6),
            spent_tokens=today.total_tokens,
            exhausted=self._daily_refusal(),
        )

    # reports

    async def session_usage(self, session_id: str) -> SessionUsage:
        record = self.sessions.records.get(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        rows = await self.rows.session_rows(session_id)
        return SessionUsage(
            session_id=session_id,
            totals=self._sum(rows).api(),
            by_model=self._by_model(rows),
            by_day=[
                DayUsage(day=day, totals=tally.api())
                for day, tally in self._group(rows, lambda r: r.day).items()
            ],
            budget=self.budget(record),
        )

    async def report(self, days: int) -> UsageReport:
        """Every session's usage, deleted ones' too, over the last ``days`` UTC days."""
        first = utc_day(self.clock() - timedelta(days=days - 1))
        rows = await self.rows.rows_since(first)
        by_row = self._group(rows, lambda r: (r.day, r.agent, r.model))
        return UsageReport(
            days=[
                ApiUsageRow(day=day, agent=agent, model=model, totals=tally.api())
                for (day, agent, model), tally in by_row.items()
            ],
            by_agent=[
                AgentUsage(agent=agent, totals=tally.api())
                for agent, tally in self._group(rows, lambda r: r.agent).items()
            ],
            by_model=self._by_model(rows),
            totals=self._sum(rows).api(),
            daily_budget=self.daily_budget(),
        )

    def _sum(self, rows: Iterable[UsageRow]) -> Tally:
        tally = Tally()
        for row in rows:
            tally.add_row(row, priced=self._priced(row.model))
        return tally

    def _by_model(self, rows: Iterable[UsageRow]) -> list[ModelUsage]:
        return [
            ModelUsage(model=model, totals=tally.api())
            for model, tally in self._group(rows, lambda r: r.model).items()
        ]

    def _group(self, rows: Iterable[UsageRow], key: Callable[[UsageRow], K]) -> dict[K, Tally]:
        """Rows summed per key, keys sorted."""
        groups: dict[K, list[UsageRow]] = {}
        for row in rows:
            groups.setdefault(key(row), []).append(row)
        return {k: self._sum(groups[k]) for k in sorted(groups)}


def _is_exhausted(record: SessionRecord) -> bool:
    return record.agent_state is AgentState.ERROR and record.agent_state_reason == BUDGET_EXHAUSTED
