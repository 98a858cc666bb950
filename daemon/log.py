"""structlog set-up: one event a line, as readable text or JSON, secrets scrubbed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

_REDACTED = "**********"
# The daemon's own secrets (API tokens, browser sessions, the setup token) all carry this
# prefix (daemon/auth/tokens.py), so they are scrubbed even when this process never saw
# them in clear: a token created before a restart, pasted into a URL or a header.
_TOKEN_PATTERN = re.compile(r"corral_(?:tok|ses|setup)_[A-Za-z0-9_-]+")


class SecretScrubber:
    """A processor that replaces known secret values and corral's tokens in every event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = {s for s in secrets if len(s) >= 4}

    def add(self, secret: str) -> None:
        if len(secret) >= 4:
            self.secrets.add(secret)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, _REDACTED)
            if "corral_" in value:
                value = _TOKEN_PATTERN.sub(_REDACTED, value)
        return value

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self._scrub(value)
        return event


# The one scrubber in the processor chain, so secrets learnt at run time can join it.
SCRUBBER = SecretScrubber()


def register_secret(secret: str) -> None:
    """Scrub ``secret`` from every later log event (a configured key, a new token)."""
    SCRUBBER.add(secret)


def configure_logging(
    level: str = "info", fmt: str = "console", secrets: Iterable[str] = ()
) -> None:
    """Configure structlog (and stdlib logging, for aiohttp's own records) once at start."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    for secret in secrets:
        SCRUBBER.add(secret)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # After the traceback is rendered, so a secret inside an exception is scrubbed too.
            structlog.processors.format_exc_info,
            SCRUBBER,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.INFO), stream=sys.stderr, format="%(message)s")
    # aiohttp's access log is noisy and would print query strings verbatim; ours is structured.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
