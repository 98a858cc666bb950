"""REST handlers for ``/api/credentials``: each agent's credential masked, added, checked.

Secrets come in (PUT) and never go out: every answer is a ``CredentialEntry`` (masked,
kind, source, the last check). ``credentials_ctx`` is the service's lifetime, for the app
factory's ``cleanup_ctx``.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator

from aiohttp import web

from daemon.credentials.models import CredentialEntry, CredentialList, CredentialPut
from daemon.credentials.service import Credentials
from daemon.http.routes import ROUTES, dump, read_body
from daemon.keys import CREDENTIALS, SETTINGS

TAGS = ("credentials",)
AGENT = "/api/credentials/{agent}"


async def credentials_ctx(app: web.Application) -> AsyncIterator[None]:
    """Make the credential service at start (unless one is set) and close it at the end."""
    if CREDENTIALS not in app:
        app[CREDENTIALS] = Credentials(app[SETTINGS])
    yield
    await app[CREDENTIALS].close()


# Until the app factory runs credentials_ctx, one service per app made on first use (an
# app's keys cannot be set once it runs; the service holds nothing that needs closing).
_UNWIRED: weakref.WeakKeyDictionary[web.Application, Credentials] = weakref.WeakKeyDictionary()


def credentials_of(app: web.Application) -> Credentials:
    if CREDENTIALS in app:
        return app[CREDENTIALS]
    if app not in _UNWIRED:
        _UNWIRED[app] = Credentials(app[SETTINGS])
    return _UNWIRED[app]


@ROUTES.route(
    "GET",
    "/api/credentials",
    "Each agent's credential: masked, its kind, where it came from, whether it works",
    response=CredentialList,
    tags=TAGS,
    description="One entry per agent. Sources, first found wins: stored (PUT here or "
    "corral login), config, a command, the environment, Codex's auth.json. ``status`` is "
    "the last check's (POST .../check), ``unchecked`` when the credential changed since. "
    "The secret itself is never returned.",
)
async def list_credentials(request: web.Request) -> web.Response:
    entries = await credentials_of(request.app).listing()
    return dump(CredentialList(credentials=entries))


@ROUTES.route(
    "PUT",
    AGENT,
    "Store an agent's credential (it then comes first) and check it",
    body=CredentialPut,
    response=CredentialEntry,
    errors=(400, 404),
    tags=TAGS,
    description="``secret``: an API key, or for claude the token ``claude setup-token`` "
    "prints; ``auth_json``: for codex, the object in ~/.codex/auth.json after codex login "
    "(its tokens are refreshed in corral's copy). Kept in <data_dir>/credentials.json, "
    "mode 0600.",
)
async def put_credential(request: web.Request) -> web.Response:
    body = await read_body(request, CredentialPut)
    service = credentials_of(request.app)
    entry = await service.put(
        request.match_info["agent"],
        secret=body.secret.get_secret_value() if body.secret is not None else None,
        auth_json=body.auth_json,
    )
    return dump(entry)


@ROUTES.route(
    "DELETE",
    AGENT,
    "Remove an agent's stored credential; the next source in order takes over",
    status=204,
    errors=(404,),
    tags=TAGS,
)
async def delete_credential(request: web.Request) -> web.Response:
    await credentials_of(request.app).remove(request.match_info["agent"])
    return web.Response(status=204)


@ROUTES.route(
    "POST",
    f"{AGENT}/check",
    "Check an agent's credential against its provider now",
    response=CredentialEntry,
    errors=(404,),
    tags=TAGS,
    description="One cheap request (Anthropic GET /v1/models, OpenAI GET /models, ChatGPT "
    "GET /wham/accounts/check): ok (2xx), invalid (401/403), unreachable (no answer, a "
    "timeout or another status, with the reason), missing.",
)
async def check_credential(request: web.Request) -> web.Response:
    entry = await credentials_of(request.app).check(request.match_info["agent"])
    return dump(entry)
