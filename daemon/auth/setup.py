"""Wiring sign-in into the app: its state as a cleanup context, and the login page's files.

The middleware itself is installed by ``daemon.http.middlewares.setup_middlewares`` (its place
in the order matters); the routes register themselves in the route table on import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from daemon.auth import handlers  # noqa: F401 - registers the auth routes
from daemon.auth.middleware import LOGIN_FILES
from daemon.auth.service import Auth
from daemon.http.routes import Handler
from daemon.keys import AUTH, SETTINGS, STORE
from daemon.resources import web_dir

# The passkey page's files: a checkout's web/ or the installed package's copy.
WEB_DIR = web_dir()


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the store is open (this context is appended after the app's lifetime)."""
    auth = Auth(app[SETTINGS], app[STORE])
    await auth.start()
    app[AUTH] = auth
    yield


def _file_handler(path: Path) -> Handler:
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    return serve


def setup_auth(app: web.Application) -> None:
    """Call after the app's main cleanup context is appended: sign-in needs the store."""
    app.cleanup_ctx.append(_auth_ctx)
    for url, name in LOGIN_FILES.items():
        app.router.add_get(url, _file_handler(WEB_DIR / name))
