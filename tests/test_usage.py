"""Usage per session and the budgets: the Meter on a real store and hub, and its API on a
daemon with local sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import daemon.http.handlers.usage  # noqa: F401 - registers its routes before create_app
from daemon.agents.runner import HOOKS_FILE
from daemon.app import create_app
from daemon.core.access import Usage
from daemon.core.hub import Event, EventHub
from daemon.core.models import AgentState, Repository, Session, SessionStatus
from daemon.core.session import SessionRecord
from daemon.core.store import Store
from daemon.core.tasks import TaskSupervisor
from daemon.core.usage import BUDGET_EXHAUSTED, Meter, find_price
from daemon.core.usage_models import BudgetUpdate
from daemon.keys import HUB, MANAGER, STORE, TASKS
from daemon.settings import Settings
from daemon.supervise.agent_watch import AgentWatcher
from tests.conftest import create_running

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def make_record(session_id: str, agent: str = "claude", **budget: Any) -> SessionRecord:
    return SessionRecord(
        id=session_id,
        name=f"name-{session_id}",
        backend="local",
        agent=agent,
        status=SessionStatus.RUNNING,
        prompt="p",
        created_at=NOON,
        updated_at=NOON,
        repositories=[
            Repository(path="/r", mount_name="r", worktree_path="/w", branch_name="corral/x",
                       base_branch="main", is_primary=True)
        ],
        **budget,
    )  # fmt: skip


@dataclass
class FakeSessions:
    """The manager's part the meter uses, saving to the real store."""

    store: Store
    hub: EventHub
    records: dict[str, SessionRecord] = field(default_factory=dict)
    saved: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    async def save(self, record: SessionRecord, *fields: str) -> None:
        self.saved.append((record.id, fields))
        await self.store.update_session(record, fields)

    async def publish_status(self, record: SessionRecord) -> None:
        await self.hub.publish(
            "session_status",
            record.id,
            agent_state=record.agent_state.value,
            agent_state_reason=record.agent_state_reason,
        )

    def to_api(self, record: SessionRecord) -> Session:
        data = record.model_dump(exclude={"repositories", "image_paths"})
        return Session(**data, repositories=record.repositories, repo_path="/r",
                       worktree_path="/w", branch_name="corral/x", base_branch="main",
                       health="healthy")  # fmt: skip


@dataclass
class Rig:
    store: Store
    hub: EventHub
    sessions: FakeSessions
    meter: Meter
    settings: Settings
    events: list[Event]
    now: list[datetime]

    async def add(self, record: SessionRecord) -> SessionRecord:
        await self.store.insert_session(record)
        self.sessions.records[record.id] = record
        return record

    def new_meter(self) -> Meter:
        return Meter(self.store, self.hub, self.sessions, self.settings, clock=lambda: self.now[0])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings.model_validate({"data_dir": str(tmp_path / "data")})
    store = Store(tmp_path / "corral.db")
    await store.open()
    tasks = TaskSupervisor()
    hub = EventHub(store, tasks)
    await hub.start()
    events: list[Event] = []
    hub.listen(events.append)
    sessions = FakeSessions(store, hub)
    now = [NOON]
    meter = Meter(store, hub, sessions, settings, clock=lambda: now[0])
    await meter.load()
    try:
        yield Rig(store, hub, sessions, meter, settings, events, now)
    finally:
        await store.close()


def usage(i: int = 0, o: int = 0, cr: int = 0, cw: int = 0) -> Usage:
    return Usage(input_tokens=i, output_tokens=o, cache_read_tokens=cr, cache_write_tokens=cw)


# --- counting and prices -----------------------------------------------------------------


async def test_record_adds_up_per_session_model_and_day(rig: Rig) -> None:
    await rig.add(make_record("a"))
    await rig.meter.record("a", "claude-sonnet-4-5", usage(1000, 200, 3000, 400))
    await rig.meter.record("a", "claude-sonnet-4-5", usage(10, 20))
    await rig.meter.record("a", "claude-haiku-4-5", usage(5, 0), error=True)
    totals = rig.meter.totals("a")
    assert (totals.requests, totals.errors) == (3, 1)
    assert (totals.input_tokens, totals.output_tokens) == (1015, 220)
    assert (totals.cache_read_tokens, totals.cache_write_tokens) == (3000, 400)
    assert totals.total_tokens == 1015 + 220 + 3000 + 400
    report = await rig.meter.session_usage("a")
    assert report.totals == totals
    assert [(m.model, m.totals.requests) for m in report.by_model] == [
        ("claude-haiku-4-5", 1), ("claude-sonnet-4-5", 2)
    ]  # fmt: skip
    assert [(d.day, d.totals.requests) for d in report.by_day] == [("2026-03-02", 3)]
    async with rig.store.db.execute("SELECT COUNT(*) FROM usage") as cursor:
        assert (await cursor.fetchone())[0] == 2  # one row per session, day and model


async def test_cost_from_the_longest_matching_prefix(rig: Rig) -> None:
    rig.settings.usage.prices = {
        **rig.settings.usage.prices,
        "claude-sonnet-4-5": {"input": 100.0, "output": 0.0, "cache_read": 0.0, "cache_write": 0.0},
    }
    await rig.add(make_record("a"))
    await rig.add(make_record("b"))
    # Sonnet 4 list price: 3 in, 15 out, 0.3 cache read, 3.75 cache write per million.
    await rig.meter.record("a", "claude-sonnet-4-20250514", usage(1_000_000, 100_000, 2_000_000, 0))
    assert rig.meter.totals("a").cost_usd == pytest.approx(3 + 1.5 + 0.6)
    assert rig.meter.totals("a").priced
    await rig.meter.record("b", "claude-sonnet-4-5-20250929", usage(10_000))
    assert rig.meter.totals("b").cost_usd == pytest.approx(1.0)  # the longer prefix's 100/M
    assert find_price(rig.settings.usage.prices, "GPT-5-codex") is not None


async def test_an_unknown_model_costs_nothing_and_says_unpriced(rig: Rig) -> None:
    await rig.add(make_record("a", agent="codex"))
    await rig.meter.record("a", "gpt-5-codex", usage(1_000_000))
    assert rig.meter.totals("a").priced
    await rig.meter.record("a", "mystery-model-9", usage(0, 0), error=True)
    assert rig.meter.totals("a").priced  # a failed request that used no tokens
    await rig.meter.record("a", "mystery-model-9", usage(500, 500))
    totals = rig.meter.totals("a")
    assert totals.cost_usd == pytest.approx(1.25)
    assert not totals.priced
    by_model = {m.model: m.totals for m in (await rig.meter.session_usage("a")).by_model}
    assert by_model["gpt-5-codex"].priced
    assert not by_model["mystery-model-9"].priced
    assert by_model["mystery-model-9"].cost_usd == 0


async def test_a_restarted_meter_keeps_the_totals(rig: Rig) -> None:
    await rig.add(make_record("a"))
    await rig.add(make_record("b"))
    await rig.meter.record("a", "claude-opus-4-1", usage(100, 10))
    await rig.meter.record("b", "claude-opus-4-1", usage(7))
    rig.now[0] = NOON + timedelta(days=1)
    await rig.meter.record("a", "claude-opus-4-1", usage(1, 1))
    again = rig.new_meter()
    await again.load()
    assert again.totals("a") == rig.meter.totals("a")
    assert again.totals("a").requests == 2
    assert again.spent("b") == rig.meter.spent("b")
    assert again.daily_budget().spent_tokens == 2  # today is the second day: only its request


# --- budgets -------------------------------------------------------------------------------


async def test_session_cost_budget_refuses_and_marks_the_crossing_request(rig: Rig) -> None:
    record = await rig.add(make_record("a", max_cost_usd=1.0))
    assert rig.meter.refusal("a") is None
    await rig.meter.record("a", "claude-opus-4", usage(0, 10_000))  # $0.75
    assert rig.meter.refusal("a") is None
    assert record.agent_state is AgentState.UNKNOWN
    await rig.meter.record("a", "claude-opus-4", usage(0, 3_600))  # $0.27: $1.02 in all
    reason = rig.meter.refusal("a")
    assert reason == (
        "budget_exhausted: session budget of $1.00 reached ($1.02 spent); "
        "raise it in corral to go on"
    )
    assert record.agent_state is AgentState.ERROR
    assert record.agent_state_reason == BUDGET_EXHAUSTED
    assert ("a", ("agent_state", "agent_state_reason")) in rig.sessions.saved
    stored = await rig.store.stored_fields("a", ["agent_state", "agent_state_reason"])
    assert stored == {"agent_state": "error", "agent_state_reason": BUDGET_EXHAUSTED}
    kinds = [e["type"] for e in rig.events if e["session_id"] == "a"]
    assert kinds == ["usage", "usage", "session_status"]
    status = rig.events[-1]
    assert (status["agent_state"], status["agent_state_reason"]) == ("error", BUDGET_EXHAUSTED)
    assert rig.events[1]["usage"]["cost_usd"] == pytest.approx(1.02)
    # Once in error, later requests (in flight before) add no second status event.
    await rig.meter.record("a", "claude-opus-4", usage(0, 1))
    await rig.meter.refused("a")
    assert [e["type"] for e in rig.events].count("session_status") == 1


async def test_session_token_budget(rig: Rig) -> None:
    record = await rig.add(make_record("a", max_tokens=1000))
    await rig.meter.record("a", "whatever", usage(600, 399))
    assert rig.meter.refusal("a") is None
    await rig.meter.record("a", "whatever", usage(0, 1))
    assert rig.meter.refusal("a") == (
        "budget_exhausted: session budget of 1,000 tokens reached (1,000 used); "
        "raise it in corral to go on"
    )
    assert record.agent_state is AgentState.ERROR


async def test_daily_budgets_count_every_session_and_end_with_the_day(rig: Rig) -> None:
    rig.settings.usage.daily_max_tokens = 1000
    a = await rig.add(make_record("a"))
    b = await rig.add(make_record("b", agent="codex"))
    await rig.meter.record("a", "m", usage(600))
    assert rig.meter.refusal("b") is None
    await rig.meter.record("b", "m", usage(400))
    for sid in ("a", "b"):
        reason = rig.meter.refusal(sid)
        assert reason is not None
        assert reason.startswith("budget_exhausted: daily budget of 1,000 tokens")
    assert b.agent_state is AgentState.ERROR  # the crossing request's session
    assert a.agent_state is AgentState.UNKNOWN
    await rig.meter.refused("a")  # the gateway refused a's next request
    assert (a.agent_state, a.agent_state_reason) == (AgentState.ERROR, BUDGET_EXHAUSTED)
    assert rig.meter.daily_budget().exhausted is not None
    # The next UTC day: the daily budget starts again, and a counted request ends the error.
    rig.now[0] = NOON + timedelta(days=1)
    assert rig.meter.refusal("a") is None
    await rig.meter.record("a", "m", usage(1))
    assert (a.agent_state, a.agent_state_reason) == (AgentState.UNKNOWN, None)

    rig.settings.usage.daily_max_tokens = 0
    rig.settings.usage.daily_max_cost_usd = 0.5
    await rig.meter.record("b", "claude-haiku-4-5", usage(0, 100_000))  # $0.50
    assert "daily budget of $0.5 for all sessions" in (rig.meter.refusal("a") or "")


async def test_raising_the_budget_clears_the_error(rig: Rig) -> None:
    record = await rig.add(make_record("a", max_cost_usd=0.01, max_tokens=5000))
    await rig.meter.record("a", "claude-haiku-4", usage(0, 2000))  # $0.01
    assert record.agent_state is AgentState.ERROR
    rig.events.clear()
    # Raising the cost budget is not enough while the token budget still holds it.
    await rig.meter.set_budget("a", BudgetUpdate(max_cost_usd=0.02, max_tokens=1000))
    assert record.agent_state is AgentState.ERROR
    assert record.max_tokens == 1000
    await rig.meter.set_budget("a", BudgetUpdate.model_validate({"max_tokens": None}))
    assert record.max_cost_usd == 0.02  # not given: kept
    assert record.max_tokens is None
    assert (record.agent_state, record.agent_state_reason) == (AgentState.UNKNOWN, None)
    assert rig.meter.refusal("a") is None
    statuses = [e for e in rig.events if e["type"] == "session_status"]
    assert [s["agent_state"] for s in statuses] == ["unknown"]
    assert [e["type"] for e in rig.events].count("session_updated") == 2
    stored = await rig.store.stored_fields("a", ["max_cost_usd", "max_tokens", "agent_state"])
    assert stored["max_cost_usd"] == 0.02
    assert stored["max_tokens"] is None
    assert stored["agent_state"] == "unknown"


async def test_an_error_for_another_reason_is_not_the_meters(rig: Rig) -> None:
    record = await rig.add(make_record("a", max_tokens=10))
    record.agent_state, record.agent_state_reason = AgentState.ERROR, "something_else"
    await rig.meter.record("a", "m", usage(20))
    assert record.agent_state_reason == "something_else"
    await rig.meter.set_budget("a", BudgetUpdate(max_tokens=100))
    assert record.agent_state_reason == "something_else"


# --- the API -------------------------------------------------------------------------------


@pytest.fixture
async def api(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Any]:
    """A daemon whose manager counts usage (wired here if the app does not yet)."""
    app = create_app(settings)
    client = await aiohttp_client(app)
    manager = app[MANAGER]
    if manager.usage is None:
        meter = Meter(app[STORE], app[HUB], manager, settings)
        await meter.load()
        manager.usage = meter
    try:
        yield client
    finally:
        await app[TASKS].wait(timeout=30)


def meter_of(client: Any) -> Meter:
    meter = client.app[MANAGER].usage
    assert meter is not None
    return meter


async def test_session_usage_and_the_list_show_spend(api: Any, git_repo: Path) -> None:
    session = await create_running(api, git_repo, backend="local", max_cost_usd=2.5)
    sid = session["id"]
    assert session["max_cost_usd"] == 2.5
    listed = await (await api.get("/api/sessions")).json()
    assert listed["sessions"][0]["cost_usd"] == 0
    # The list is cached; a counted request moves it (here without any write of the session).
    await meter_of(api).record(sid, "claude-sonnet-4-5", usage(100_000))
    listed = await (await api.get("/api/sessions")).json()
    assert listed["sessions"][0]["cost_usd"] == pytest.approx(0.3)
    assert listed["sessions"][0]["agent_state"] == "unknown"
    await meter_of(api).record(sid, "claude-sonnet-4-5", usage(900_000, 0, 0, 0))
    body = await (await api.get(f"/api/sessions/{sid}/usage")).json()
    assert body["session_id"] == sid
    assert body["totals"]["input_tokens"] == 1_000_000
    assert body["totals"]["cost_usd"] == pytest.approx(3.0)
    assert body["totals"]["priced"] is True
    assert body["by_model"][0]["model"] == "claude-sonnet-4-5"
    assert len(body["by_day"]) == 1
    budget = body["budget"]
    assert (budget["max_cost_usd"], budget["spent_cost_usd"]) == (2.5, pytest.approx(3.0))
    assert budget["exhausted"].startswith("budget_exhausted: session budget of $2.50")
    listed = await (await api.get("/api/sessions")).json()
    assert listed["sessions"][0]["cost_usd"] == pytest.approx(3.0)
    assert listed["sessions"][0]["total_tokens"] == 1_000_000
    assert listed["sessions"][0]["agent_state"] == "error"
    assert listed["sessions"][0]["agent_state_reason"] == "budget_exhausted"
    missing = await api.get(f"/api/sessions/{UNKNOWN}/usage")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "SESSION_NOT_FOUND"


async def test_patch_budget_raises_and_clears(api: Any, git_repo: Path) -> None:
    session = await create_running(api, git_repo, backend="local", max_tokens=100)
    sid = session["id"]
    await meter_of(api).record(sid, "m", usage(100))
    detail = (await (await api.get(f"/api/sessions/{sid}")).json())["session"]
    assert detail["agent_state"] == "error"
    response = await api.patch(f"/api/sessions/{sid}/budget", json={"max_tokens": 1000})
    assert response.status == 200, await response.text()
    changed = (await response.json())["session"]
    assert changed["max_tokens"] == 1000
    assert changed["agent_state"] == "unknown"
    assert changed["agent_state_reason"] is None
    assert changed["total_tokens"] == 100
    response = await api.patch(
        f"/api/sessions/{sid}/budget", json={"max_cost_usd": 0.5, "max_tokens": None}
    )
    changed = (await response.json())["session"]
    assert (changed["max_cost_usd"], changed["max_tokens"]) == (0.5, None)


@pytest.mark.parametrize(
    "body",
    [{"max_cost_usd": -1}, {"max_tokens": 0}, {"max_cost_usd": "lots"}, {"max_dollars": 3},
     {"max_tokens": 1.5}],
)  # fmt: skip
async def test_patch_budget_validation(api: Any, git_repo: Path, body: dict[str, Any]) -> None:
    session = await create_running(api, git_repo, backend="local")
    response = await api.patch(f"/api/sessions/{session['id']}/budget", json=body)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "INVALID_REQUEST"
    missing = await api.patch(f"/api/sessions/{UNKNOWN}/budget", json={"max_tokens": 5})
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "SESSION_NOT_FOUND"


async def test_usage_report_by_day_agent_and_model(api: Any, git_repo: Path) -> None:
    meter = meter_of(api)
    today = datetime.now(UTC)
    first = await create_running(api, git_repo, backend="local", name="first")
    second = await create_running(api, git_repo, backend="local", name="second", agent="codex")
    meter.clock = lambda: today - timedelta(days=40)
    await meter.record(first["id"], "claude-opus-4-1", usage(1000))  # outside 30 days
    meter.clock = lambda: today - timedelta(days=1)
    await meter.record(first["id"], "claude-opus-4-1", usage(100, 10))
    meter.clock = lambda: today
    await meter.record(first["id"], "claude-opus-4-1", usage(1))
    await meter.record(second["id"], "gpt-5-codex", usage(50), error=True)
    await meter.record(second["id"], "gpt-5-codex", usage(50))
    # A deleted session's usage still counts.
    deleted = await api.delete(f"/api/sessions/{first['id']}?force=true")
    assert deleted.status == 202
    await api.app[TASKS].wait(timeout=30)
    assert (await api.get(f"/api/sessions/{first['id']}")).status == 404

    body = await (await api.get("/api/usage")).json()
    day = today.date().isoformat()
    yesterday = (today - timedelta(days=1)).date().isoformat()
    assert [(r["day"], r["agent"], r["model"], r["totals"]["requests"]) for r in body["days"]] == [
        (yesterday, "claude", "claude-opus-4-1", 1),
        (day, "claude", "claude-opus-4-1", 1),
        (day, "codex", "gpt-5-codex", 2),
    ]
    assert {a["agent"]: a["totals"]["total_tokens"] for a in body["by_agent"]} == {
        "claude": 111, "codex": 100
    }  # fmt: skip
    assert {m["model"]: m["totals"]["errors"] for m in body["by_model"]} == {
        "claude-opus-4-1": 0, "gpt-5-codex": 1
    }  # fmt: skip
    assert body["totals"]["requests"] == 4
    assert body["daily_budget"]["day"] == day
    assert body["daily_budget"]["spent_tokens"] == 101
    assert body["daily_budget"]["max_cost_usd"] is None
    wider = await (await api.get("/api/usage?days=41")).json()
    assert wider["totals"]["requests"] == 5
    for bad in ("days=0", "days=367", "days=many", "weeks=2"):
        response = await api.get(f"/api/usage?{bad}")
        assert response.status == 400, bad
        assert (await response.json())["error"]["code"] == "INVALID_REQUEST"


async def test_usage_routes_are_in_the_openapi_document(api: Any) -> None:
    document = await (await api.get("/api/openapi.json")).json()
    paths = document["paths"]
    assert "get" in paths["/api/sessions/{session_id}/usage"]
    assert "patch" in paths["/api/sessions/{session_id}/budget"]
    assert "get" in paths["/api/usage"]


async def test_hooks_do_not_overwrite_a_budget_error(api: Any, git_repo: Path) -> None:
    """The agent's hooks (it stopped, it waits for input) leave corral's error alone until
    the budget is raised; then they count again."""
    session = await create_running(api, git_repo, backend="local", max_tokens=10)
    sid = session["id"]
    manager = api.app[MANAGER]
    watcher = AgentWatcher(manager, store=api.app[STORE], hub=api.app[HUB], tasks=api.app[TASKS])
    record = manager.get(sid)
    await meter_of(api).record(sid, "m", usage(10))
    assert record.agent_state is AgentState.ERROR
    hooks = manager.agent_home(sid) / HOOKS_FILE
    hooks.parent.mkdir(parents=True, exist_ok=True)
    with hooks.open("a") as out:
        out.write('{"hook_event_name": "Stop"}\n')
    await watcher.poll(record)
    assert (record.agent_state, record.agent_state_reason) == (AgentState.ERROR, BUDGET_EXHAUSTED)
    response = await api.patch(f"/api/sessions/{sid}/budget", json={"max_tokens": 100})
    assert (await response.json())["session"]["agent_state"] == "unknown"
    with hooks.open("a") as out:
        out.write('{"hook_event_name": "Stop"}\n')
    await watcher.poll(record)
    assert record.agent_state is AgentState.WAITING_INPUT
