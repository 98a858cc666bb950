"""REST handlers for usage and budgets: a session's usage, everyone's by day, agent and
model, and a session's budget changed (daemon/core/usage.py keeps them)."""

from __future__ import annotations

from aiohttp import web

from daemon.core.errors import InternalError
from daemon.core.models import SessionEnvelope
from daemon.core.usage import Meter
from daemon.core.usage_models import BudgetUpdate, SessionUsage, UsageQuery, UsageReport
from daemon.http.routes import ROUTES, dump, read_body, read_query
from daemon.keys import MANAGER

TAGS = ("usage",)


def _meter(request: web.Request) -> Meter:
    meter = request.app[MANAGER].usage
    if meter is None:  # the app wires it at start; never seen by a client of a served app
        raise InternalError("usage is not counted in this daemon")
    return meter


@ROUTES.route(
    "GET",
    "/api/sessions/{session_id}/usage",
    "A session's usage: totals, by model and by day, and its budget",
    response=SessionUsage,
    errors=(404,),
    tags=TAGS,
    description="Counted from the answers passing corral's model gateway; costs are "
    "estimates from [usage] prices at the time of each request.",
)
async def session_usage(request: web.Request) -> web.Response:
    return dump(await _meter(request).session_usage(request.match_info["session_id"]))


@ROUTES.route(
    "GET",
    "/api/usage",
    "Every session's usage by day, agent and model, and the daily budget",
    query=UsageQuery,
    response=UsageReport,
    errors=(400,),
    tags=TAGS,
    description="Over the last `days` UTC days, today included; deleted sessions' usage "
    "still counts.",
)
async def usage_report(request: web.Request) -> web.Response:
    query = read_query(request, UsageQuery)
    return dump(await _meter(request).report(query.days))


@ROUTES.route(
    "PATCH",
    "/api/sessions/{session_id}/budget",
    "Set, raise or remove a session's budget",
    body=BudgetUpdate,
    response=SessionEnvelope,
    errors=(400, 404),
    tags=TAGS,
    description="Only the keys given change; null removes that budget. When the session "
    "may spend again, its agent_state error (budget_exhausted) is cleared and its agent "
    "goes on at its next request.",
)
async def set_budget(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    manager = request.app[MANAGER]
    manager.get(session_id)  # 404 before the body is read
    update = await read_body(request, BudgetUpdate)
    record = await _meter(request).set_budget(session_id, update)
    return dump(SessionEnvelope(session=manager.to_api(record)))
