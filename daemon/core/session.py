"""The session as the daemon knows it: the one domain model, and the clock it is stamped by.

:class:`SessionRecord` is what the core works with and the store maps rows to; the API's
``Session`` (``daemon/core/models.py``) derives from the same fields and adds what is
computed (health, the primary repository's paths).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from pydantic import Field

from daemon.core.errors import InvalidRequest
from daemon.core.models import Repository, SessionFields

__all__ = ["SessionRecord", "creation_time", "rfc3339", "utcnow"]


class SessionRecord(SessionFields):
    """A session as the daemon keeps it: the API's fields but the computed ones, and the
    attached files' paths (never shown: they name the user's disk)."""

    image_paths: list[str] = Field(default_factory=list)

    @property
    def primary(self) -> Repository:
        return next(r for r in self.repositories if r.is_primary)

    def repository(self, mount_name: str | None) -> Repository:
        """The repository mounted as ``mount_name``, the primary when None; a 400 naming
        the session's mount names otherwise (the ``repository`` field of a request)."""
        if mount_name is None:
            return self.primary
        for repo in self.repositories:
            if repo.mount_name == mount_name:
                return repo
        raise InvalidRequest(
            f"the session has no repository mounted as '{mount_name}'",
            [
                {
                    "field": "repository",
                    "message": f"one of {[r.mount_name for r in self.repositories]}",
                }
            ],
        )


def rfc3339(value: datetime | None) -> str | None:
    """A UTC time as PROTOCOL writes it (``2026-01-28T12:30:00Z``); None stays None."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


_last_created = datetime.min.replace(tzinfo=UTC)
_created_lock = threading.Lock()


def creation_time() -> datetime:
    """A session's creation time: to the microsecond, and later than every one before it
    in this process, so sessions made in the same second list newest first (the list is
    ordered by it) even when the clock is coarse or steps back.

    Never on a whole second: that prints without a fraction ("...:05Z") and as text would
    sort after its own second's fractions ("...:05.2Z"), and clients compare the text.
    """
    global _last_created
    with _created_lock:
        now = max(datetime.now(UTC), _last_created + timedelta(microseconds=1))
        if now.microsecond == 0:
            now += timedelta(microseconds=1)
        _last_created = now
        return now
