"""One mapping from a failure below the session core (engine, git, anything else) to the
PROTOCOL error a client sees, shared by create-time validation and every action."""

from __future__ import annotations

from backends.base import BackendError, BackendUnavailable, ImageNotFound
from daemon.core import worktrees
from daemon.core.errors import ApiError, BackendFailed, BackendUnavailableError


def api_error(exc: BaseException) -> ApiError:
    """The PROTOCOL error for a failure below the manager (engine, git, anything else)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BackendUnavailable):
        return BackendUnavailableError(f"The container engine does not answer: {exc.message}")
    if isinstance(exc, ImageNotFound):
        return BackendFailed(exc.message, exc.details)
    if isinstance(exc, BackendError):
        return BackendFailed(exc.message, exc.details)
    if isinstance(exc, worktrees.GitError):
        return BackendFailed(f"git failed: {exc.message}", exc.details)
    return BackendFailed(f"{type(exc).__name__}: {exc}")
