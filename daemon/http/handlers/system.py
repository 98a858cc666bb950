"""REST handlers for the daemon itself: liveness, health, configuration and the OpenAPI."""

from __future__ import annotations

from aiohttp import web

from daemon import __version__
from daemon.core.models import DaemonHealth, DockerStatus, HealthSummary
from daemon.core.readiness import system_status
from daemon.core.system_models import SystemStatus
from daemon.http.handlers.credentials import credentials_of
from daemon.http.openapi import openapi_document
from daemon.http.routes import ROUTES, dump
from daemon.keys import BACKENDS, MANAGER, RECONCILER, SETTINGS


@ROUTES.route(
    "GET",
    "/health",
    "Liveness and the container engine's state",
    response=DaemonHealth,
    public=True,
    tags=("system",),
)
async def health(request: web.Request) -> web.Response:
    backend = request.app[BACKENDS].get("docker")
    info = await backend.info() if backend is not None else None
    docker = DockerStatus(
        available=bool(info and info.available), version=info.version if info else None
    )
    return dump(
        DaemonHealth(
            status="healthy" if docker.available else "degraded",
            version=__version__,
            docker=docker,
        )
    )


@ROUTES.route(
    "GET",
    "/api/health",
    "Every session's health counted, the engines, and the orphans found",
    response=HealthSummary,
    tags=("system",),
    description="Answered from what the reconciler last saw (events and passes), without "
    "asking the engine: healthy (healthy, starting), idle (stopped, archived), "
    "needs_attention (stalled, or down with an automatic recovery planned) and blocked "
    "(down with nothing planned). Orphans are containers labelled as this daemon's and "
    "worktrees under its data dir that no session owns and that were kept because they "
    "hold work or could not be removed.",
)
async def health_summary(request: web.Request) -> web.Response:
    return dump(request.app[RECONCILER].summary())


@ROUTES.route(
    "GET",
    "/api/system",
    "Whether this machine is ready for sessions: each part checked, with its fix",
    response=SystemStatus,
    tags=("system",),
    description="The Docker engine and its version, the default agent image (present, or "
    "being built with its progress, or why its last build failed), an API key per agent "
    "(its kind, source and last check, as in GET /api/credentials; never the secret), the data dir "
    "(writable, free disk) and git. Each check that is not ok carries a one-line fix. "
    "``ready`` needs every check but the credentials, which are warnings. "
    "``corral doctor`` prints the same checks without a daemon.",
)
async def system(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    return dump(
        await system_status(
            request.app[SETTINGS],
            request.app[BACKENDS].get("docker"),
            manager.images,
            credentials_of(request.app),
        )
    )


@ROUTES.route(
    "GET", "/api/config", "The effective configuration, secrets redacted", tags=("system",)
)
async def config(request: web.Request) -> web.Response:
    return web.json_response(request.app[SETTINGS].redacted())


@ROUTES.route("GET", "/api/openapi.json", "This document", tags=("system",))
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(ROUTES.specs))
