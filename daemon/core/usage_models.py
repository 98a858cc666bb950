"""The API shapes of usage and budgets: what ``/api/sessions/{id}/usage``, ``/api/usage``
and ``PATCH /api/sessions/{id}/budget`` take and answer, and the ``usage`` event's payload.

Counts come from the answers passing the model gateway; costs are estimates from the price
table in ``[usage] prices`` at the time each request was counted.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from daemon.core.models import ApiModel


class UsageTotals(BaseModel):
    """Requests, tokens and estimated cost added up over some rows."""

    requests: int = Field(0, description="Model requests, failed ones included.")
    errors: int = Field(0, description="Requests the provider (or corral) answered with an error.")
    input_tokens: int = Field(0, description="Input tokens not read from the prompt cache.")
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    total_tokens: int = Field(0, description="In, out, cache read and cache write together.")
    cost_usd: float = Field(0.0, description="Estimated from [usage] prices, in US dollars.")
    priced: bool = Field(
        True, description="False when some tokens were used by a model the price table lacks."
    )


class ModelUsage(BaseModel):
    model: str
    totals: UsageTotals


class DayUsage(BaseModel):
    day: str = Field(description="The UTC day, YYYY-MM-DD.")
    totals: UsageTotals


class BudgetState(BaseModel):
    max_cost_usd: float | None = Field(None, description="The session's budget in USD; null: none.")
    max_tokens: int | None = Field(None, description="The session's budget in tokens; null: none.")
    spent_cost_usd: float = 0.0
    spent_tokens: int = 0
    exhausted: str | None = Field(
        None,
        description="Why the gateway refuses this session's requests now (a session or daily "
        "budget reached), starting with 'budget_exhausted:'; null while it may spend.",
    )


class SessionUsage(BaseModel):
    """One session's usage over its whole life."""

    session_id: str
    totals: UsageTotals
    by_model: list[ModelUsage]
    by_day: list[DayUsage] = Field(description="Oldest first.")
    budget: BudgetState


class UsageRow(BaseModel):
    day: str
    agent: str
    model: str
    totals: UsageTotals


class AgentUsage(BaseModel):
    agent: str
    totals: UsageTotals


class DailyBudget(BaseModel):
    """The budget all sessions share per UTC day (``[usage]`` in the config)."""

    day: str = Field(description="Today, UTC.")
    max_cost_usd: float | None = Field(None, description="null: no limit.")
    max_tokens: int | None = Field(None, description="null: no limit.")
    spent_cost_usd: float = 0.0
    spent_tokens: int = 0
    exhausted: str | None = Field(
        None, description="Why every session is refused now; null while they may spend."
    )


class UsageReport(BaseModel):
    """Every session's usage (deleted sessions' too) over the last ``days`` UTC days."""

    days: list[UsageRow] = Field(description="One row per day, agent and model; oldest first.")
    by_agent: list[AgentUsage]
    by_model: list[ModelUsage]
    totals: UsageTotals
    daily_budget: DailyBudget


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(30, ge=1, le=366, description="How many UTC days back, today included.")


class BudgetUpdate(ApiModel):
    """Only the keys given change; null removes that budget."""

    max_cost_usd: float | None = Field(None, gt=0, description="Budget in estimated USD.")
    max_tokens: int | None = Field(None, gt=0, description="Budget in tokens.")
