"""REST handlers for ``/api/credentials``: each agent's credential masked, added, checked.

Secrets come in (PUT) and never go out: every answer is a ``CredentialEntry`` (masked,
kind, source, the last check).
"""

from __future__ import annotations

from aiohttp import web

from daemon.credentials.models import CredentialEntry, CredentialList, CredentialPut
from daemon.credentials.service import Credentials
from daemon.http.routes import ROUTES, dump, read_body
from daemon.keys import CREDENTIALS

TAGS = ("credentials",)
AGENT = "/api/credentials/{agent}"


def credentials_of(app: web.Application) -> Credentials:
    """The app's credential service (made by the app factory's gateway context)."""
    return app[CREDENTIALS]


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
