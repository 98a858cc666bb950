"""HTTP middlewares, outermost first: errors to PROTOCOL bodies, Host and Origin, then auth.

Order matters and is fixed in :func:`setup_middlewares`: the error middleware wraps
everything so even a refused Host gets a JSON body; the Host and Origin checks run before
any handler and before any WebSocket upgrade (PROTOCOL.md, "Security"); the auth check
comes last, so a hostile page is refused whatever cookie its request carries. Every
response also gets the security headers (a CSP that runs only the daemon's own scripts).

One trusted origin: the daemon's own (its loopback names, the bound name and the allowed
Host names, on the port the connection reached), plus the configured ones. Every other
Origin, another port on this machine included, is refused whatever the method; no CORS
header is ever sent, since the UI is served from the daemon itself (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from daemon.auth.middleware import auth_middleware
from daemon.auth.service import derive_rp_id
from daemon.core.errors import (
    ApiError,
    Forbidden,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from daemon.http.routes import ROUTES, Handler
from daemon.keys import SETTINGS
from daemon.settings import Settings

log = structlog.get_logger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names compared, not bound
# Fetch metadata of a request a page on another site (or another port: same-site) made.
FOREIGN_SITES = frozenset({"cross-site", "same-site"})
# Only the daemon's own files run: no inline or remote script, no framing, no plugins.
# Inline styles stay allowed: terminal renderers set them, and they cannot run code.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def json_error(error: ApiError) -> web.Response:
    response = web.json_response(error.body(), status=error.status)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int) and error.status in (429, 503):
        response.headers["Retry-After"] = str(retry_after)  # RFC 9110, whole seconds
    return response


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return NotFound(f"No route for {request.method} {request.path}")
    if exc.status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if exc.status == 413:
        return PayloadTooLarge("request body too large")
    if exc.status == 403:
        return Forbidden(exc.reason)
    if 400 <= exc.status < 500:
        return InvalidRequest(exc.reason)
    return InternalError("internal error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(_from_http_exception(request, exc))
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))  # RFC 9110
        return response
    except HttpProcessingError as exc:
        # A body aiohttp could not parse (a multipart part with a NUL in a header, say).
        return json_error(InvalidRequest(f"malformed request body: {exc.message}"))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        if _is_upgrade(request):
            # The socket may be prepared already; an HTTP body now would corrupt it.
            raise
        return json_error(InternalError("internal error"))


def _host_name(host: str) -> str:
    """The name part of a Host header or netloc: no port, no IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host


def is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def connection_port(request: web.Request, default: int) -> int:
    """The port this connection reached: the one actually bound, also with ``port = 0``."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return int(sockname[1])
    return default


class OriginPolicy:
    """Which Host headers and Origins the daemon answers; built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        server = settings.server
        self.port = server.port
        self.hosts = set(LOOPBACK_NAMES) | {h.lower() for h in server.allowed_hosts}
        bound = _host_name(server.host)
        if bound not in WILDCARDS:
            self.hosts.add(bound)
        self.trusted = {_normal_origin(o) for o in server.allowed_origins}
        if settings.auth.mode == "webauthn":
            # The name browsers reach the daemon by, and the origins its passkeys are for.
            self.hosts.add(derive_rp_id(settings))
            self.trusted |= {_normal_origin(o) for o in settings.auth.origins}
        # Every name the daemon answers to is its own origin on its own port; the port
        # keeps out pages served by anything else on this machine (a dev server on :5173).
        self.own_names = frozenset(self.hosts)

    def host_allowed(self, host: str | None) -> bool:
        if host is None:
            return True  # HTTP/1.0 clients; a browser always sends Host
        return _host_name(host) in self.hosts

    def is_trusted(self, origin: str) -> bool:
        """Configured explicitly (``server.allowed_origins``, ``auth.origins``)."""
        return _normal_origin(origin) in self.trusted

    def origin_allowed(self, origin: str, scheme: str, port: int) -> bool:
        """The daemon's own origin on the port it is reached on, or a configured one."""
        if self.is_trusted(origin):
            return True
        parts = urlsplit(_normal_origin(origin))
        try:
            origin_port = parts.port
        except ValueError:
            return False
        if parts.scheme != scheme or not parts.hostname or parts.username is not None:
            return False
        if parts.path or parts.query or parts.fragment:
            return False
        if origin_port is None:
            origin_port = 443 if scheme == "https" else 80
        return parts.hostname in self.own_names and origin_port == port


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def origin_middleware(policy: OriginPolicy) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def check_host_and_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.host_allowed(request.headers.get("Host")):
            log.warning("host_refused", host=request.headers.get("Host"), path=request.path)
            raise Forbidden("Host not allowed")
        origin = request.headers.get("Origin")
        unsafe = request.method not in SAFE_METHODS or _is_upgrade(request)
        site = request.headers.get("Sec-Fetch-Site", "").lower()
        navigation = request.headers.get("Sec-Fetch-Mode", "").lower() == "navigate"
        trusted = origin is not None and policy.is_trusted(origin)
        if site in FOREIGN_SITES and not trusted and (unsafe or not navigation):
            # A browser says a page elsewhere made this request, Origin or not. Another
            # port on localhost is "same-site", so that is refused too; a link to the UI
            # (a navigation that changes nothing) still opens it.
            log.warning("foreign_site_refused", site=site, origin=origin, path=request.path,
                        method=request.method)  # fmt: skip
            raise Forbidden(f"{site} request refused")
        if origin is not None:
            port = connection_port(request, policy.port)
            if not policy.origin_allowed(origin, request.scheme, port):
                # Reads too: a foreign page gets no answer, not even one it cannot see.
                log.warning("origin_refused", origin=origin, path=request.path,
                            method=request.method)  # fmt: skip
                raise Forbidden("Origin not allowed")
        return await handler(request)

    return check_host_and_origin


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        # Answers may hold a token shown once or private data: no cache keeps them.
        response.headers.setdefault("Cache-Control", "no-store")


def setup_middlewares(app: web.Application) -> None:
    """Install the middlewares in their order: errors outermost, Host and Origin, then auth."""
    app.middlewares.append(error_middleware)
    app.middlewares.append(origin_middleware(OriginPolicy(app[SETTINGS])))
    app.middlewares.append(auth_middleware(ROUTES))
    app.on_response_prepare.append(_security_headers)
