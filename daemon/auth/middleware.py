"""The auth middleware: with auth on, nothing but the public routes answers a stranger.

It runs after the Host and Origin checks (``daemon/http/middlewares.py`` fixes the order), so a
hostile page is refused before its cookie is even looked at, and before any WebSocket
upgrade: both sockets are ordinary GET routes here and get the same 401 JSON body.

Public means declared ``public=True`` in the route table (``/health``, the auth status and
the ceremonies) or one of the login page's own files. Everything else, including routes
added later and paths no route matches, needs a valid cookie or bearer token; a test
walks the router to keep it so.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from aiohttp import web

from daemon.core.errors import Unauthorized
from daemon.http.routes import Handler, RouteSpec, RouteTable
from daemon.keys import AUTH, PRINCIPAL

# The login page and its files (served by daemon/auth/setup.py) are what a signed-out
# browser needs; they hold no data.
LOGIN_PAGE = "/login"
LOGIN_FILES = {LOGIN_PAGE: "login.html", "/login.js": "login.js", "/login.css": "login.css"}


def public_routes(specs: Iterable[RouteSpec]) -> frozenset[tuple[str, str]]:
    public = {(spec.method, spec.path) for spec in specs if spec.public}
    public |= {("GET", path) for path in LOGIN_FILES}
    return frozenset(public)


def _is_public(request: web.Request, public: frozenset[tuple[str, str]]) -> bool:
    resource = request.match_info.route.resource
    if resource is None:
        # A public path asked with another method gets its 405 (it exists for anyone);
        # no route matched at all: a stranger learns nothing about what exists.
        return isinstance(request.match_info.http_exception, web.HTTPMethodNotAllowed) and any(
            path == request.path for _, path in public
        )
    method = "GET" if request.method == "HEAD" else request.method
    return (method, resource.canonical) in public


def _wants_page(request: web.Request) -> bool:
    """A browser navigating to a page (not the API, not a socket): send it to sign in."""
    return (
        request.method == "GET"
        and not request.path.startswith(("/api/", "/ws/"))
        and "text/html" in request.headers.get("Accept", "")
    )


def auth_middleware(table: RouteTable) -> web.middleware:  # type: ignore[valid-type]
    public: frozenset[tuple[str, str]] = frozenset()

    @web.middleware
    async def require_credentials(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal public
        auth = request.app[AUTH]
        if not auth.enabled:
            return await handler(request)
        if not public:
            # Read at the first request: every route module has registered by then.
            public = public_routes(table.specs)
        principal = await auth.authenticate(request)
        if principal is not None:
            request[PRINCIPAL] = principal
            return await handler(request)
        if _is_public(request, public):
            return await handler(request)
        if _wants_page(request):
            raise web.HTTPSeeOther(f"{LOGIN_PAGE}?next={quote(request.path, safe='/')}")
        raise Unauthorized(
            "sign in: the corral_session cookie or 'Authorization: Bearer <API token>' is required"
        )

    return require_credentials
