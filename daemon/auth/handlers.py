"""REST routes of sign-in: status, the passkey ceremonies, passkeys, logout and API tokens.

Status and the four ceremony calls are public (``public=True``: the auth middleware lets
them through) and rate limited (``daemon/auth/limits.py``); the rest need a signed-in
request like every other route.
"""

from __future__ import annotations

import functools

import structlog
from aiohttp import web

from daemon.auth.models import (
    AuthStatus,
    AuthUser,
    CeremonyOptions,
    LoginBeginRequest,
    LoginCompleteRequest,
    LoginResponse,
    PasskeyInfo,
    PasskeyList,
    PasskeyRenamed,
    PasskeyRenameRequest,
    RegisterBeginRequest,
    RegisterCompleteRequest,
    RegisterResponse,
    SignedOut,
    TokenCreated,
    TokenCreateRequest,
    TokenInfo,
    TokenList,
)
from daemon.auth.service import Auth, Principal, credential_id_text
from daemon.auth.store import ApiToken, Credential, User
from daemon.core.errors import Conflict, RateLimited, Unauthorized
from daemon.http.middlewares import json_error
from daemon.http.routes import ROUTES, Handler, dump, read_body
from daemon.keys import AUTH, PRINCIPAL

TAGS = ("auth",)
log = structlog.get_logger(__name__)


def _client(request: web.Request) -> str:
    """The rate limits' client: the peer address (a proxy in front sets its own limits)."""
    return request.remote or "unknown"


def rate_limited(handler: Handler) -> Handler:
    """Count the call against the sign-in limits; over them, 429 with ``Retry-After``."""

    @functools.wraps(handler)
    async def limited(request: web.Request) -> web.StreamResponse:
        try:
            auth = request.app[AUTH]
            principal = await _principal(request, auth)
            signed_in = principal is not None and principal.via == "cookie"
            user_id = principal.user.id if signed_in and principal is not None else None
            auth.limits.ceremony(_client(request), user_id)
            return await handler(request)
        except RateLimited as exc:
            # debug: a flood must not turn into a flood of log lines.
            log.debug("rate_limited", client=_client(request), path=request.path)
            response = json_error(exc)
            response.headers["Retry-After"] = str(exc.retry_after)
            return response

    return limited


def _passkey(credential: Credential) -> PasskeyInfo:
    return PasskeyInfo(
        id=credential_id_text(credential),
        name=credential.name,
        created_at=credential.created_at,
        last_used_at=credential.last_used_at,
    )


def _user(user: User) -> AuthUser:
    return AuthUser(id=user.id, name=user.name, display_name=user.display_name)


def _token(token: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=token.id,
        name=token.name,
        hint=token.hint,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
    )


async def _principal(request: web.Request, auth: Auth) -> Principal | None:
    """The middleware's verdict when it ran one, else ours (on the public routes)."""
    principal = request.get(PRINCIPAL)
    if principal is None and auth.enabled:
        principal = await auth.authenticate(request)
    return principal


def _signed_in(request: web.Request) -> Principal:
    if not request.app[AUTH].enabled:
        raise Conflict("authentication is off (auth.mode = none)")
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise Unauthorized("sign in first")
    return principal


@ROUTES.route(
    "GET",
    "/api/auth/status",
    "Whether auth is on, and who this request is",
    response=AuthStatus,
    public=True,
    tags=TAGS,
)
async def auth_status(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    principal = await _principal(request, auth)
    return dump(
        AuthStatus(
            mode=request.app[AUTH].settings.auth.mode,
            authenticated=principal is not None or not auth.enabled,
            via=principal.via if principal else None,
            user=_user(principal.user) if principal else None,
            setup_required=await auth.setup_required(),
            rp_id=auth.rp_id if auth.enabled else None,
        )
    )


@ROUTES.route(
    "POST",
    "/api/auth/register/begin",
    "Begin registering a passkey",
    body=RegisterBeginRequest,
    body_optional=True,
    response=CeremonyOptions,
    errors=(400, 401, 409, 429),
    public=True,
    tags=TAGS,
    description="The first passkey needs `setup_token` (printed by the daemon at start, "
    "single use) and creates the user; later ones need a signed-in browser session and are "
    "added to its user.",
)
@rate_limited
async def register_begin(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    body = await read_body(request, RegisterBeginRequest, optional=True)
    principal = await _principal(request, auth)
    if body.setup_token is not None and principal is None:
        auth.limits.setup_token(_client(request))  # before the token is even compared
    options = await auth.register_begin(
        principal, body.username, body.display_name, body.setup_token
    )
    return dump(CeremonyOptions(options=options))


@ROUTES.route(
    "POST",
    "/api/auth/register/complete",
    "Finish registering a passkey",
    body=RegisterCompleteRequest,
    response=RegisterResponse,
    status=201,
    errors=(400, 401, 409, 429),
    public=True,
    tags=TAGS,
    description="The first registration also signs the browser in (sets `corral_session`).",
)
@rate_limited
async def register_complete(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    body = await read_body(request, RegisterCompleteRequest)
    user, credential, first = await auth.register_complete(
        request, await _principal(request, auth), body.credential, body.name
    )
    answer = RegisterResponse(
        user=_user(user),
        passkey=_passkey(credential),
        signed_in=first,
    )
    response = dump(answer, status=201)
    if first:
        auth.set_cookie(request, response, await auth.new_session(user))
    return response


@ROUTES.route(
    "POST",
    "/api/auth/login/begin",
    "Begin signing in with a passkey",
    body=LoginBeginRequest,
    body_optional=True,
    response=CeremonyOptions,
    errors=(400, 409, 429),
    public=True,
    tags=TAGS,
)
@rate_limited
async def login_begin(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, LoginBeginRequest, optional=True)
    return dump(CeremonyOptions(options=await request.app[AUTH].login_begin(body.username)))


@ROUTES.route(
    "POST",
    "/api/auth/login/complete",
    "Finish signing in: sets the corral_session cookie",
    body=LoginCompleteRequest,
    response=LoginResponse,
    errors=(400, 401, 409, 429),
    public=True,
    tags=TAGS,
)
@rate_limited
async def login_complete(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    body = await read_body(request, LoginCompleteRequest)
    user, secret = await auth.login_complete(request, body.credential)
    response = dump(LoginResponse(user=_user(user)))
    auth.set_cookie(request, response, secret)
    return response


@ROUTES.route(
    "POST",
    "/api/auth/logout",
    "Sign this browser out: its session is deleted",
    status=204,
    errors=(401,),
    tags=TAGS,
)
async def logout(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    await auth.logout(request.get(PRINCIPAL))
    response = web.Response(status=204)
    auth.clear_cookie(request, response)
    return response


@ROUTES.route(
    "POST",
    "/api/auth/logout-all",
    "Sign every browser out: all of the user's browser sessions end, this one too",
    response=SignedOut,
    errors=(401, 403, 409),
    tags=TAGS,
    description="API tokens stay valid (revoke them one by one). Needs a browser session: "
    "a leaked token cannot sign the user out.",
)
async def logout_all(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    ended = await auth.logout_all(_signed_in(request))
    response = dump(SignedOut(signed_out=ended))
    auth.clear_cookie(request, response)
    return response


@ROUTES.route(
    "GET",
    "/api/auth/passkeys",
    "The signed-in user's passkeys (never their keys)",
    response=PasskeyList,
    errors=(401, 409),
    tags=TAGS,
)
async def list_passkeys(request: web.Request) -> web.Response:
    found = await request.app[AUTH].list_passkeys(_signed_in(request))
    return dump(PasskeyList(passkeys=[_passkey(c) for c in found]))


@ROUTES.route(
    "PATCH",
    "/api/auth/passkeys/{passkey_id}",
    "Rename a passkey",
    body=PasskeyRenameRequest,
    response=PasskeyRenamed,
    errors=(400, 401, 403, 404, 409),
    tags=TAGS,
    description="Needs a browser session.",
)
async def rename_passkey(request: web.Request) -> web.Response:
    body = await read_body(request, PasskeyRenameRequest)
    renamed = await request.app[AUTH].rename_passkey(
        _signed_in(request), request.match_info["passkey_id"], body.name
    )
    return dump(PasskeyRenamed(passkey=_passkey(renamed)))


@ROUTES.route(
    "DELETE",
    "/api/auth/passkeys/{passkey_id}",
    "Delete a passkey; every other browser is signed out",
    status=204,
    errors=(401, 403, 404, 409),
    tags=TAGS,
    description="Needs a browser session, which stays signed in; every other browser "
    "session of the user ends (the daemon does not keep which passkey signed each in). "
    "409 for the last passkey: without one nobody could sign in again.",
)
async def delete_passkey(request: web.Request) -> web.Response:
    await request.app[AUTH].delete_passkey(_signed_in(request), request.match_info["passkey_id"])
    return web.Response(status=204)


@ROUTES.route(
    "GET",
    "/api/auth/tokens",
    "The signed-in user's API tokens (never their secrets)",
    response=TokenList,
    errors=(401, 409),
    tags=TAGS,
)
async def list_tokens(request: web.Request) -> web.Response:
    found = await request.app[AUTH].list_tokens(_signed_in(request))
    return dump(TokenList(tokens=[_token(t) for t in found]))


@ROUTES.route(
    "POST",
    "/api/auth/tokens",
    "Create an API token; its secret is shown this once",
    body=TokenCreateRequest,
    response=TokenCreated,
    status=201,
    errors=(400, 401, 403, 409),
    tags=TAGS,
    description="Needs a browser session: a token cannot create further tokens.",
)
async def create_token(request: web.Request) -> web.Response:
    body = await read_body(request, TokenCreateRequest)
    token, secret = await request.app[AUTH].create_token(_signed_in(request), body.name)
    return dump(TokenCreated(token=_token(token), secret=secret), status=201)


@ROUTES.route(
    "DELETE",
    "/api/auth/tokens/{token_id}",
    "Revoke an API token",
    status=204,
    errors=(401, 404, 409),
    tags=TAGS,
)
async def revoke_token(request: web.Request) -> web.Response:
    await request.app[AUTH].revoke_token(_signed_in(request), request.match_info["token_id"])
    return web.Response(status=204)
