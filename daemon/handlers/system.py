"""REST handlers for the daemon itself: liveness, configuration and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from daemon import __version__
from daemon.keys import BACKENDS, SETTINGS
from daemon.models import DaemonHealth, DockerStatus
from daemon.openapi import openapi_document
from daemon.routes import ROUTES, dump


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
    "GET", "/api/config", "The effective configuration, secrets redacted", tags=("system",)
)
async def config(request: web.Request) -> web.Response:
    return web.json_response(request.app[SETTINGS].redacted())


@ROUTES.route("GET", "/api/openapi.json", "This document", tags=("system",))
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(ROUTES.specs))
