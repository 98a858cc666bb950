"""The model gateway: the only way an agent in a container reaches its model.

An aiohttp server of its own (apart from the API server, which containers must not reach),
listening on 127.0.0.1 for local sessions and on the host's address of each container
network that asks for it (:meth:`ModelGateway.gateway_url`), on one port remembered across
restarts. Its URL layout (one port, a prefix per provider)::

    /anthropic/...  -> agents.anthropic_base_url or https://api.anthropic.com
    /openai/...     -> agents.openai_base_url or https://api.openai.com/v1
    /chatgpt/...    -> agents.chatgpt_base_url or https://chatgpt.com/backend-api

Each request: the placeholder (``x-api-key`` or ``Authorization: Bearer``) and the peer's
address are checked by the :class:`SessionGuard`; the prefix must fit the session's agent
and sign-in; a spent budget refuses model calls; the real credential replaces the
placeholder; the request and the answer stream through (``forward.py``) while the usage tap
counts the answer (``usage_tap.py``) for the :class:`UsageMeter`.

The statuses of the gateway's own refusals were chosen with the real CLIs (Claude Code
2.1.197, Codex 0.169.0; docs/decisions.md, "Credentials: Gateway"): both show a 400's
message to the user at once, while they retry 409, 429 and 5xx for seconds (Codex) to
minutes (Claude Code) before saying anything.

Over 400 lines for the endpoint table and the workspace answer, which belong with the
handler that applies them.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from daemon.agents.codex import PLACEHOLDER_ACCOUNT
from daemon.core.access import (
    AccessDenied,
    Credential,
    CredentialSource,
    GatewayClient,
    SessionGuard,
    UsageMeter,
)
from daemon.gateway.forward import (
    Family,
    Forwarder,
    Outcome,
    elapsed_ms,
    error_response,
    request_headers,
)
from daemon.gateway.ports import remember_port, remembered_port
from daemon.gateway.usage_tap import UsageTap
from daemon.settings import Settings

log = structlog.get_logger(__name__)

PORT_KEY = "gateway"
OAUTH_BETA = "oauth-2025-04-20"
# Refusals the agent's user must act on (a budget, a missing or changed credential): 400,
# the one status both CLIs show at once without retrying (measured, see the docstring).
USER_MUST_ACT = 400


@dataclass(frozen=True)
class Route:
    prefix: str
    family: Family
    provider: str  # for messages: "Anthropic", "OpenAI", "ChatGPT"
    default_upstream: str


ROUTES = {
    "anthropic": Route("anthropic", "anthropic", "Anthropic", "https://api.anthropic.com"),
    "openai": Route("openai", "openai", "OpenAI", "https://api.openai.com/v1"),
    "chatgpt": Route("chatgpt", "openai", "ChatGPT", "https://chatgpt.com/backend-api"),
}


class ModelGateway:
    """The gateway's listeners and its one handler. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        guard: SessionGuard,
        credentials: CredentialSource,
        meter: UsageMeter,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.credentials = credentials
        self.meter = meter
        self._forwarder = Forwarder()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._urls: dict[str, str] = {}  # address -> URL it is reached at
        self._lock = asyncio.Lock()

    # -- listening

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        """Listen on 127.0.0.1 on the configured, else remembered, else a new port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: an agent that goes away while its model is still silent
        # cancels the handler, which closes the upstream request at once.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        data_dir = self.settings.data_dir
        configured = self.settings.gateway.port
        wanted = await asyncio.to_thread(remembered_port, data_dir, PORT_KEY, configured)
        try:
            port = await self._listen("127.0.0.1", wanted)
        except OSError as exc:
            if configured or not wanted:
                await self._runner.cleanup()
                raise
            log.warning(
                "gateway_port_taken",
                port=wanted,
                error=str(exc),
                hint="running containers were given the old port: recreate them",
            )
            port = await self._listen("127.0.0.1", 0)
        self._port = port
        self._urls["127.0.0.1"] = f"http://127.0.0.1:{port}"
        if not configured and port != wanted:
            await asyncio.to_thread(remember_port, data_dir, PORT_KEY, port)
        log.info("gateway_listening", address="127.0.0.1", port=port)

    async def gateway_url(self, address: str) -> str:
        """``http://address:port``, listening on ``address`` from now on (idempotent)."""
        async with self._lock:
            known = self._urls.get(address)
            if known is not None:
                return known
            if self._runner is None:
                raise RuntimeError("the model gateway is not started")
            try:
                port = await self._listen(address, self._port)
            except OSError as exc:
                # Taken on this address only (another program bound it there): this network
                # gets a port of its own; its containers are told it, nothing else changes.
                log.warning("gateway_port_taken", address=address, port=self._port, error=str(exc))
                port = await self._listen(address, 0)
            host = f"[{address}]" if ":" in address else address
            self._urls[address] = url = f"http://{host}:{port}"
            log.info("gateway_listening", address=address, port=port)
            return url

    async def _listen(self, address: str, port: int) -> int:
        assert self._runner is not None
        before = {tuple(a) for a in self._runner.addresses}
        await web.TCPSite(self._runner, address, port).start()
        added = [a for a in self._runner.addresses if tuple(a) not in before]
        return int(added[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._forwarder.close()
        self._urls.clear()

    # -- requests

    def _upstream(self, route: Route) -> str:
        agents = self.settings.agents
        configured = {
            "anthropic": agents.anthropic_base_url,
            "openai": agents.openai_base_url,
            "chatgpt": agents.chatgpt_base_url,
        }[route.prefix]
        return (configured or route.default_upstream).rstrip("/")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        prefix, rest = _split(raw)
        if prefix == "chatgpt" and rest.startswith(BACKEND_SEGMENT + "/"):
            rest = rest[len(BACKEND_SEGMENT) :]  # Codex's chatgpt_base_url (agent_access.py)
        route = ROUTES.get(prefix)
        if route is None:
            return web.json_response(
                {
                    "error": {
                        "code": "NOT_FOUND",
                        "type": "not_found_error",
                        "message": "corral gateway: no such route; use /anthropic, /openai "
                        "or /chatgpt",
                    }
                },
                status=404,
            )
        if request.method == "HEAD":
            # Claude Code's start-up check carries no credential: answered here, never sent on.
            return web.Response(status=200)
        token = _placeholder(request)
        if not token and route.prefix == "chatgpt":
            # Codex signed in with ChatGPT posts to ps/mcp with no credential at all; it
            # takes a 404 there in its stride (measured by the lead), and nothing there can be
            # forwarded without knowing the session.
            return error_response(
                route.family, 404, "not_found_error", "corral gateway: not forwarded", "not_found"
            )
        if not token:
            return error_response(
                route.family,
                401,
                "authentication_error" if route.family == "anthropic" else "invalid_request_error",
                "corral gateway: no credential in the request",
                "invalid_api_key",
            )
        try:
            client = await self.guard.authorize(token, request.remote or "")
        except AccessDenied as exc:
            return _forbidden(route, str(exc))
        if not _fits(route, client):
            return _forbidden(
                route,
                f"corral gateway: /{route.prefix} is not for this session's agent "
                f"({client.agent}, {client.kind})",
            )
        if not endpoint_allowed(route, request.method, rest):
            log.warning(
                "gateway_endpoint_refused",
                session_id=client.session_id,
                route=route.prefix,
                method=request.method,
            )
            return _forbidden(
                route,
                f"corral gateway: {request.method} /{route.prefix}"
                f"{rest.partition('?')[0][:200]} is not an endpoint an agent needs",
            )
        if route.prefix == "chatgpt" and rest.partition("?")[0] == ACCOUNTS_CHECK:
            return web.json_response(placeholder_workspace())
        model_call = request.method == "POST" and _is_model_call(route, rest)
        if model_call:
            refusal = self.meter.refusal(client.session_id)
            if refusal is not None:
                log.info("gateway_refused", session_id=client.session_id, route=route.prefix)
                try:
                    # The session shows why its agent stopped, even when no request of its
                    # own crossed the budget (a budget lowered, the daily one).
                    await self.meter.refused(client.session_id)
                except Exception:
                    log.exception("gateway_refusal_not_recorded", session_id=client.session_id)
                return error_response(
                    route.family,
                    USER_MUST_ACT,
                    "invalid_request_error",
                    refusal,
                    "budget_exhausted",
                )
        credential = await self.credentials.credential(client.agent)
        if credential is None:
            return error_response(
                route.family,
                USER_MUST_ACT,
                "invalid_request_error",
                f"corral: no credential for {client.agent}: run `corral login {client.agent}` "
                "or set it in the UI",
                "no_credential",
            )
        headers = request_headers(request.headers.items())
        if not _set_credential(route, headers, credential):
            return error_response(
                route.family,
                USER_MUST_ACT,
                "invalid_request_error",
                f"corral: the {client.agent} credential changed kind since this session's "
                "container was made: recreate the session",
                "credential_changed",
            )
        started = time.perf_counter()
        outcome = Outcome()
        tap = UsageTap(route.family, streamed=True) if model_call else None
        try:
            return await self._forwarder.forward(
                request,
                URL(self._upstream(route) + rest, encoded=True),
                headers,
                route.family,
                route.provider,
                tap,
                outcome,
            )
        except (ConnectionResetError, asyncio.CancelledError):
            outcome.error = True
            raise
        finally:
            log.info(
                "gateway_request",
                session_id=client.session_id,
                route=route.prefix,
                method=request.method,
                status=outcome.status,
                bytes=outcome.sent,
                ms=elapsed_ms(started),
            )
            if tap is not None:
                await self._record(client, tap, outcome)

    async def _record(self, client: GatewayClient, tap: UsageTap, outcome: Outcome) -> None:
        model, usage = tap.result()
        try:
            await self.meter.record(
                client.session_id,
                model or outcome.model,
                usage,
                error=outcome.error or outcome.status >= 400,
            )
        except Exception:  # the answer is already delivered; only the count is lost
            log.exception("gateway_usage_not_recorded", session_id=client.session_id)


def _split(raw_path: str) -> tuple[str, str]:
    """``/anthropic/v1/messages?beta=true`` -> (``anthropic``, ``/v1/messages?beta=true``)."""
    path = raw_path[1:] if raw_path.startswith("/") else raw_path
    cut = len(path)
    for sep in ("/", "?"):
        at = path.find(sep)
        if 0 <= at < cut:
            cut = at
    return path[:cut], path[cut:]


def _placeholder(request: web.Request) -> str:
    token = request.headers.get("x-api-key", "").strip()
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _fits(route: Route, client: GatewayClient) -> bool:
    if route.prefix == "anthropic":
        return client.agent == "claude"
    if client.agent != "codex":
        return False
    return client.kind == ("chatgpt" if route.prefix == "chatgpt" else "api_key")


# What each route forwards: the endpoints the CLIs call (measured with Claude Code 2.1.197
# and Codex 0.169.0), nothing else. The real credential can do much more than an agent
# needs (batches the meter would not see, a ChatGPT account's conversations), and the
# container is not trusted with any of it. Paths are matched as sent: no percent escapes,
# no dot segments, so the upstream cannot read them as another path.
_ID = r"[A-Za-z0-9._:-]{1,200}"
ENDPOINTS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    "anthropic": [
        ("POST", re.compile(r"/v1/messages(/count_tokens)?")),
        ("GET", re.compile(rf"/v1/models(/{_ID})?")),
    ],
    "openai": [
        ("POST", re.compile(r"/responses(/compact)?")),
        ("GET", re.compile(rf"/models(/{_ID})?")),
    ],
    "chatgpt": [
        ("POST", re.compile(r"/codex/responses(/compact)?")),
        ("GET", re.compile(rf"/codex/models(/{_ID})?")),
        ("GET", re.compile(r"/wham/(usage|accounts/check|settings/user)")),
    ],
}


# Codex's TUI (0.169.0) reads the signed-in account's workspace here at start (its
# "workspace routing discovery") and exits unless the answer lists the account of its
# auth.json (the placeholder's) with an https backend origin; "NO_CONSTRAINT" makes it check
# chatgpt_base_url instead, which is the gateway's http URL (measured: "workspace backend
# must use an HTTPS origin"). The origin only steers requests to chatgpt.com itself, which
# the container never makes (its provider is the gateway). So the gateway answers for the
# placeholder's account and the real answer (the user's other workspaces, the real account
# id) never reaches the container. A ChatGPT workspace on another origin (a government
# one) is not routed there: its requests still go to agents.chatgpt_base_url.
ACCOUNTS_CHECK = "/wham/accounts/check"
BACKEND_SEGMENT = "/backend-api"
WORKSPACE_ORIGIN = "https://chatgpt.com"


def placeholder_workspace() -> dict[str, object]:
    entry = {
        "id": PLACEHOLDER_ACCOUNT,
        "workspace_backend_origin": WORKSPACE_ORIGIN,
        "account_routing_override": "NO_CONSTRAINT",
    }
    return {"accounts": [entry], "account_ordering": [PLACEHOLDER_ACCOUNT]}


def endpoint_allowed(route: Route, method: str, rest: str) -> bool:
    """Whether ``method`` on the path part of ``rest`` is one an agent needs."""
    path = rest.partition("?")[0]
    return any(
        method == allowed and pattern.fullmatch(path)
        for allowed, pattern in ENDPOINTS[route.prefix]
    )


def _is_model_call(route: Route, rest: str) -> bool:
    path = rest.partition("?")[0].rstrip("/")
    if route.family == "anthropic":
        return path.endswith("/messages")  # not /messages/count_tokens, /models, ...
    return path.endswith("/responses")


def _forbidden(route: Route, message: str) -> web.Response:
    return error_response(route.family, 403, "permission_error", message, "forbidden")


def _set_credential(route: Route, headers: CIMultiDict[str], credential: Credential) -> bool:
    """Put the real credential into ``headers``; False when its kind does not fit."""
    if route.prefix == "anthropic":
        betas = [
            b.strip()
            for b in ",".join(headers.getall("anthropic-beta", [])).split(",")
            if b.strip()
        ]
        if credential.kind == "api_key":
            headers["x-api-key"] = credential.secret
            # The OAuth beta says "bearer token": wrong beside a key.
            betas = [b for b in betas if b != OAUTH_BETA]
        elif credential.kind == "oauth_token":
            headers["Authorization"] = f"Bearer {credential.secret}"
            if OAUTH_BETA not in betas:
                betas.append(OAUTH_BETA)
        else:
            return False
        headers.popall("anthropic-beta", None)
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        return True
    wanted = "chatgpt" if route.prefix == "chatgpt" else "api_key"
    if credential.kind != wanted:
        return False
    headers["Authorization"] = f"Bearer {credential.secret}"
    if credential.kind == "chatgpt" and credential.account_id:
        headers["chatgpt-account-id"] = credential.account_id
    return True
