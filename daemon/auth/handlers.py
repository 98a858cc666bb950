"""REST routes of sign-in: status, the passkey ceremonies, logout and API tokens.

Status and the four ceremony calls are public (``public=True``: the auth middleware lets
them through); the rest need a signed-in request like every other route.
"""

from __future__ import annotations

from aiohttp import web

from daemon.auth.models import (
    AuthStatus,
    AuthUser,
    CeremonyOptions,
    LoginBeginRequest,
    LoginCompleteRequest,
    LoginResponse,
    PasskeyInfo,
    RegisterBeginRequest,
    RegisterCompleteRequest,
    RegisterResponse,
    TokenCreated,
    TokenCreateRequest,
    TokenInfo,
    TokenList,
)
from daemon.auth.service import Auth, Principal, credential_id_text
from daemon.auth.store import ApiToken, User
from daemon.errors import Conflict, Unauthorized
from daemon.keys import AUTH, PRINCIPAL
from daemon.routes import ROUTES, dump, read_body

TAGS = ("auth",)


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
    errors=(400, 401, 409),
    public=True,
    tags=TAGS,
    description="The first passkey needs `setup_token` (printed by the daemon at start, "
    "single use) and creates the user; later ones need a signed-in browser session and are "
    "added to its user.",
)
async def register_begin(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    body = await read_body(request, RegisterBeginRequest, optional=True)
    options = await auth.register_begin(
        await _principal(request, auth), body.username, body.display_name, body.setup_token
    )
    return dump(CeremonyOptions(options=options))


@ROUTES.route(
    "POST",
    "/api/auth/register/complete",
    "Finish registering a passkey",
    body=RegisterCompleteRequest,
    response=RegisterResponse,
    status=201,
    errors=(400, 401, 409),
    public=True,
    tags=TAGS,
    description="The first registration also signs the browser in (sets `corral_session`).",
)
async def register_complete(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    body = await read_body(request, RegisterCompleteRequest)
    user, credential, first = await auth.register_complete(
        request, await _principal(request, auth), body.credential, body.name
    )
    answer = RegisterResponse(
        user=_user(user),
        passkey=PasskeyInfo(
            id=credential_id_text(credential),
            name=credential.name,
            created_at=credential.created_at,
        ),
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
    errors=(400, 409),
    public=True,
    tags=TAGS,
)
async def login_begin(request: web.Request) -> web.Response:
    body = await read_body(request, LoginBeginRequest, optional=True)
    return dump(CeremonyOptions(options=await request.app[AUTH].login_begin(body.username)))


@ROUTES.route(
    "POST",
    "/api/auth/login/complete",
    "Finish signing in: sets the corral_session cookie",
    body=LoginCompleteRequest,
    response=LoginResponse,
    errors=(400, 401, 409),
    public=True,
    tags=TAGS,
)
async def login_complete(request: web.Request) -> web.Response:
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
