"""Domain errors and their PROTOCOL codes; the error middleware turns them into bodies."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error a client sees as ``{"error": {"code", "message", "details"}}``."""

    code = "INTERNAL_ERROR"
    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class InvalidRequest(ApiError):
    code, status = "INVALID_REQUEST", 400


class Unauthorized(ApiError):
    code, status = "UNAUTHORIZED", 401


class Forbidden(ApiError):
    code, status = "FORBIDDEN", 403


class SessionNotFound(ApiError):
    code, status = "SESSION_NOT_FOUND", 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Session with ID '{session_id}' not found")


class NotFound(ApiError):
    code, status = "NOT_FOUND", 404


class MethodNotAllowed(ApiError):
    code, status = "METHOD_NOT_ALLOWED", 405


class Conflict(ApiError):
    code, status = "CONFLICT", 409


class PayloadTooLarge(ApiError):
    code, status = "PAYLOAD_TOO_LARGE", 413


class RateLimited(ApiError):
    """Too many calls: the answer carries ``Retry-After`` (whole seconds)."""

    code, status = "RATE_LIMITED", 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class BackendFailed(ApiError):
    code, status = "BACKEND_ERROR", 500


class BackendUnavailableError(ApiError):
    code, status = "BACKEND_UNAVAILABLE", 503


class InternalError(ApiError):
    code, status = "INTERNAL_ERROR", 500
