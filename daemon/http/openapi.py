"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from daemon import __version__
from daemon.core.models import ErrorBody
from daemon.http.routes import RouteSpec

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Invalid request",
    401: "Authentication required",
    403: "Refused Host or Origin, or not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Body too large",
    429: "RATE_LIMITED: too many calls from this client or in all; wait Retry-After seconds",
    500: "Backend or internal error",
    503: "The container engine does not answer",
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _parameters(spec: RouteSpec) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", spec.path)
    ]
    if spec.query is not None:
        schema = spec.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    return params


def _operation(spec: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{spec.handler.__name__}_{spec.method.lower()}",
        "summary": spec.summary,
        "tags": list(spec.tags),
        "parameters": _parameters(spec),
        "responses": {},
    }
    if spec.description:
        operation["description"] = spec.description
    if spec.body is not None:
        operation["requestBody"] = {
            "required": not spec.body_optional,
            "content": {"application/json": {"schema": _schema(spec.body, components)}},
        }
    if spec.multipart:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                    }
                }
            },
        }
    success: dict[str, Any] = {"description": "Success"}
    if spec.response is not None:
        success["content"] = {"application/json": {"schema": _schema(spec.response, components)}}
    elif spec.status != 204:
        success["content"] = {"application/json": {"schema": {"type": "object"}}}
    operation["responses"][str(spec.status)] = success
    error_ref = _schema(ErrorBody, components)
    statuses = {*spec.errors, 500}
    if spec.body is not None or spec.multipart:
        statuses.add(413)  # any body over its limit (server.max_json_bytes, uploads.max_bytes)
    if not spec.public:
        # With auth on, every route but the public ones needs a cookie or a bearer token.
        operation["security"] = [{"session_cookie": []}, {"api_token": []}]
        statuses.add(401)
    for status in sorted(statuses):
        operation["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    if 429 in statuses:
        operation["responses"]["429"]["headers"] = {
            "Retry-After": {
                "description": "Whole seconds until this client may call again.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return operation


@functools.cache
def _document(specs: tuple[RouteSpec, ...]) -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "corral",
            "version": __version__,
            "description": "Run AI coding agents in isolated containers on git worktrees. "
            'Errors are always {"error": {"code", "message", "details"}}. Security applies '
            'only when the daemon runs with auth.mode = "webauthn".',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "session_cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "corral_session",
                    "description": "Set by /api/auth/login/complete (passkey sign-in).",
                },
                "api_token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token from POST /api/auth/tokens.",
                },
            },
        },
    }


def openapi_document(specs: Sequence[RouteSpec]) -> dict[str, Any]:
    return _document(tuple(specs))
