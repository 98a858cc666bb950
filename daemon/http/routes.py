"""The route table: each REST handler declares its method, path and pydantic shapes once.

The same declarations register the aiohttp routes and generate the OpenAPI document, so the
two cannot drift apart. Request helpers here turn bad input into PROTOCOL errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from daemon.core.errors import InvalidRequest, PayloadTooLarge
from daemon.core.jsonbound import JsonTooDeep, loads_bounded
from daemon.core.models import validation_details
from daemon.keys import SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

# No request shape nests deeper than a handful of levels; a bound keeps hostile depth out
# of the parser (whose recursion would otherwise be a 500) and of everything after it.
MAX_JSON_DEPTH = 32


def loads_json(raw: str | bytes) -> Any:
    """A request body or socket frame: JSON nested at most :data:`MAX_JSON_DEPTH` levels."""
    return loads_bounded(raw, MAX_JSON_DEPTH)


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    public: bool = False
    body_optional: bool = False
    multipart: bool = False
    tags: tuple[str, ...] = ()
    description: str = ""


@dataclass
class RouteTable:
    specs: list[RouteSpec] = field(default_factory=list)

    def route(
        self, method: str, path: str, summary: str, **options: Any
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.specs.append(RouteSpec(method, path, handler, summary, **options))
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for spec in self.specs:
            app.router.add_route(spec.method, spec.path, spec.handler)


def dump(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(),
        status=status,
        content_type="application/json",
    )


async def read_body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """Parse and validate a JSON object body; every failure is a PROTOCOL error."""
    server = request.app[SETTINGS].server
    max_bytes = server.max_json_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    try:
        # A client trickling its body would otherwise hold the request open for good.
        async with asyncio.timeout(server.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise InvalidRequest(f"request body not received within {server.body_timeout} s") from None
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    if not raw.strip():
        if optional:
            return model()
        raise InvalidRequest("a JSON object body is required")
    try:
        data = loads_json(raw)
    except JsonTooDeep as exc:
        raise InvalidRequest(str(exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = validation_details(exc)
        raise InvalidRequest(
            f"invalid request: {details[0]['field']}: {details[0]['message']}", details
        ) from exc


def read_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        details = validation_details(exc)
        raise InvalidRequest(
            f"invalid query: {details[0]['field']}: {details[0]['message']}", details
        ) from exc


ROUTES = RouteTable()
