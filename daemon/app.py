"""The application factory: settings in, a ready aiohttp app out.

Everything with a lifetime is a ``cleanup_ctx`` generator, set up in the order written
here and torn down in reverse: the store, the backends, the task supervisor, the event hub
and the session manager, then the supervisors (the agent watcher, the reconciler). Every
background task is the task supervisor's, stopped in its written-down order
(``daemon/core/tasks.py``). Shutdown never stops a session's container; agents keep
running without us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import WSCloseCode, web

from backends.base import Backend
from backends.docker import DockerBackend
from backends.local import LocalBackend
from daemon.auth.setup import setup_auth
from daemon.core.access import Placeholders
from daemon.core.agent_access import AccessPlanner
from daemon.core.console import Consoles
from daemon.core.gatekeeper import Gatekeeper
from daemon.core.github import PullRequestStore
from daemon.core.hub import EventHub
from daemon.core.manager import SessionManager
from daemon.core.store import Store
from daemon.core.tasks import SUPERVISE, TaskSupervisor
from daemon.core.usage import Meter
from daemon.credentials.service import Credentials
from daemon.gateway.egress import EgressProxy
from daemon.gateway.server import ModelGateway
from daemon.http.handlers import (  # noqa: F401 - they register routes
    changes,
    credentials,
    files,
    landing,
    pull_requests,
    sessions,
    system,
    usage,
)
from daemon.http.middlewares import setup_middlewares
from daemon.http.routes import ROUTES
from daemon.keys import (
    BACKENDS,
    CONSOLES,
    CREDENTIALS,
    GATEWAY,
    HUB,
    LIST_CACHE,
    MANAGER,
    PULL_REQUESTS,
    RECONCILER,
    SETTINGS,
    SOCKETS,
    STORE,
    TASKS,
)
from daemon.resources import web_dist
from daemon.settings import Settings
from daemon.supervise.agent_watch import AgentWatcher
from daemon.supervise.changes_watch import ChangesWatcher
from daemon.supervise.image_build import ImageWatch
from daemon.supervise.pull_requests import PullRequestWatcher
from daemon.supervise.reconcile import Reconciler
from ws.connection import OpenSockets
from ws.console import console_socket
from ws.events import events_socket

log = structlog.get_logger(__name__)

# The built UI (scripts/build-web.sh): index.html plus content-hashed files under assets/,
# a checkout's web/dist or the installed package's copy (daemon/resources.py).
WEB_DIST = web_dist()
WEB_ASSETS = WEB_DIST / "assets"
IMMUTABLE = "public, max-age=31536000, immutable"
NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>corral</title>
</head><body><main><h1>corral</h1><p>The web UI has not been built.
Run <code>scripts/build-web.sh</code> (<code>scripts/serve.sh</code> does it for you), then reload.
The REST API works meanwhile; it is described at <a href="/api/openapi.json">/api/openapi.json</a>.
</p></main></body></html>
"""


def private_data_dir(path: Path) -> None:
    """Make the data dir the daemon user's alone (blocking: run it in a thread).

    It holds every session's chat, agent homes with their keys and the sign-in store;
    another local user must not read them. A data dir someone left open is closed, loudly.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    mode = info.st_mode & 0o777
    if not mode & 0o077:
        return
    if info.st_uid != os.getuid():
        log.warning("data_dir_not_private", data_dir=str(path), mode=oct(mode), owner=info.st_uid)
        return
    path.chmod(0o700)
    log.warning("data_dir_made_private", data_dir=str(path), was=oct(mode))


@contextlib.asynccontextmanager
async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    await asyncio.to_thread(private_data_dir, app[SETTINGS].data_dir)
    store = Store(app[SETTINGS].db_path)
    await store.open()
    app[STORE] = store
    yield
    await store.close()


@contextlib.asynccontextmanager
async def _backends_ctx(app: web.Application) -> AsyncIterator[None]:
    if BACKENDS not in app:
        docker = app[SETTINGS].docker
        backends: dict[str, Backend] = {
            "docker": DockerBackend(docker.url or None, api_timeout=docker.api_timeout),
            "local": LocalBackend(),
        }
        app[BACKENDS] = backends
    yield
    for backend in app[BACKENDS].values():
        await backend.close()


@contextlib.asynccontextmanager
async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    tasks = TaskSupervisor()
    app[TASKS] = tasks
    hub = EventHub(app[STORE], tasks)
    await hub.start()
    app[HUB] = hub
    consoles = Consoles(app[SETTINGS].console.buffer_bytes)
    app[CONSOLES] = consoles
    manager = SessionManager(app[SETTINGS], app[STORE], hub, app[BACKENDS], tasks, consoles)
    await manager.load()
    app[MANAGER] = manager
    log.info("sessions_loaded", count=len(manager.records))
    yield
    # Supervisors first, then the operations under way (given the grace period), then
    # the hub's last writes, so the store closes with every event stored.
    await tasks.shutdown(timeout=app[SETTINGS].server.shutdown_timeout)
    # Detaching never stops an agent: containers keep running without the daemon.
    await consoles.close()


class _Endpoints:
    """The gateway and the egress proxy as one ``GatewayEndpoints`` for the planner."""

    def __init__(self, gateway: ModelGateway, proxy: EgressProxy) -> None:
        self.gateway = gateway
        self.proxy = proxy

    async def gateway_url(self, address: str) -> str:
        return await self.gateway.gateway_url(address)

    async def proxy_url(self, address: str) -> str:
        return await self.proxy.proxy_url(address)


@contextlib.asynccontextmanager
async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    """Credentials, usage and the model gateway: how agents reach their model without a key.

    The meter counts what each session spends and keeps budgets; the placeholders (made per
    launch, kept hashed) and the gatekeeper say which session a request is from; the
    gateway and the egress proxy listen on 127.0.0.1 now and on each container network's
    host address when a session there first needs it (and, after a restart, as soon as the
    engine answers, for the containers still running)."""
    settings, manager, store = app[SETTINGS], app[MANAGER], app[STORE]
    backends: dict[str, Backend] = app[BACKENDS]
    if CREDENTIALS not in app:
        app[CREDENTIALS] = Credentials(settings)
    source = app[CREDENTIALS]
    meter = Meter(store, app[HUB], manager, settings)
    await meter.load()
    manager.usage = meter
    placeholders = Placeholders(store)
    await placeholders.load()
    guard = Gatekeeper(
        placeholders,
        manager.records,
        backends,
        host_network=settings.docker.network_mode == "host",
    )
    gateway = ModelGateway(settings, guard, source, meter)
    await gateway.start()
    proxy = EgressProxy(settings, guard)
    await proxy.start()
    planner = AccessPlanner(settings, placeholders, source, _Endpoints(gateway, proxy), backends)
    manager.spawner.access = planner
    app[GATEWAY] = gateway
    app[TASKS].spawn(planner.restore(manager.records.values()), "gateway-restore", group=SUPERVISE)
    try:
        yield
    finally:
        await proxy.close()
        await gateway.close()
        await source.close()


@contextlib.asynccontextmanager
async def _supervise_ctx(app: web.Application) -> AsyncIterator[None]:
    store, hub, tasks = app[STORE], app[HUB], app[TASKS]
    watcher = AgentWatcher(app[MANAGER], store=store, hub=hub, tasks=tasks)
    watcher.start()
    changes_watcher = ChangesWatcher(app[MANAGER], hub=hub, tasks=tasks)
    changes_watcher.start()
    reconciler = Reconciler(
        app[MANAGER], app[SETTINGS], store=store, hub=hub, consoles=app[CONSOLES], tasks=tasks
    )
    await reconciler.start()
    app[RECONCILER] = reconciler
    # The default agent image, built when it is missing (now, or once the engine answers).
    ImageWatch(app[MANAGER].images, tasks).start()
    # Open pull requests and their checks, refreshed and published as pull_request events.
    app[PULL_REQUESTS] = PullRequestStore(app[SETTINGS].data_dir)
    pull_watch = PullRequestWatcher(app[MANAGER], store=app[PULL_REQUESTS], hub=hub, tasks=tasks)
    pull_watch.start()
    yield
    await pull_watch.close()
    await reconciler.close()
    await watcher.close()
    await changes_watcher.close()


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    """Everything with a lifetime, set up in order and torn down in reverse.

    One cleanup_ctx entering the parts through an exit stack, because aiohttp does not
    tear down the contexts already entered when a later one fails at start-up: an open
    store would then keep the process from ever exiting.
    """
    async with contextlib.AsyncExitStack() as stack:
        for part in (_store_ctx, _backends_ctx, _sessions_ctx, _gateway_ctx, _supervise_ctx):
            await stack.enter_async_context(part(app))
        yield


async def _close_sockets(app: web.Application) -> None:
    """Tell every WebSocket client the daemon is going away, within a bounded time."""
    sockets = app[SOCKETS].all()
    if sockets:
        await asyncio.wait(
            [asyncio.create_task(ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutdown"))
             for ws in sockets],
            timeout=5,
        )  # fmt: skip


async def _index(request: web.Request) -> web.StreamResponse:
    """The UI's page: always revalidated, since it names the current hashed assets."""
    page = WEB_DIST / "index.html"
    if not page.is_file():
        return web.Response(text=NOT_BUILT, status=503, content_type="text/html")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def _asset(request: web.Request) -> web.StreamResponse:
    """A built asset: its name carries its content hash, so it may be cached for good."""
    name = request.match_info["name"]
    path = WEB_ASSETS / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": IMMUTABLE})


def create_app(settings: Settings, backends: dict[str, Backend] | None = None) -> web.Application:
    """Build the app; ``backends`` replaces the configured ones (tests pass their own)."""
    app = web.Application(client_max_size=settings.server.max_json_bytes)
    app[SETTINGS] = settings
    app[LIST_CACHE] = {}
    app[SOCKETS] = OpenSockets(
        settings.server.max_websockets_per_client, settings.server.max_websockets
    )
    if backends is not None:
        app[BACKENDS] = backends
    setup_middlewares(app)
    ROUTES.install(app)
    app.router.add_get("/", _index)
    app.router.add_get("/assets/{name}", _asset)
    app.router.add_get("/ws/console/{session_id}", console_socket)
    app.router.add_get("/ws/events", events_socket)
    app.cleanup_ctx.append(_lifetime)
    setup_auth(app)  # after the lifetime: sign-in needs the open store
    app.on_shutdown.append(_close_sockets)
    return app
