"""The setup token: what registers the first passkey while no user exists.

It lives in memory and in a 0600 file in the data dir; the log line says where the file
is, the clear token goes to stderr only, and the scrubber hides it from every log line.
The first registration spends it.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import sys
from pathlib import Path

import structlog

from daemon.auth import tokens
from daemon.log import register_secret

log = structlog.get_logger(__name__)


class SetupToken:
    """The current setup token (``value``, None when there is none) and its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value: str | None = None

    def create(self, rp_id: str) -> None:
        """A new token, written to the file and shown to the operator."""
        token = tokens.new_secret(tokens.SETUP)
        register_secret(token)
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # O_EXCL after the unlink: never write through a file or symlink someone put there.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        self.value = token
        log.warning("auth_setup_required", setup_token_file=str(path), rp_id=rp_id)
        # The clear token goes to the operator's terminal only, never into a log line.
        print(
            f"\ncorral: no user yet. Register the first passkey with this setup token:\n"
            f"    {token}\n(also in {path}, mode 0600; it works once)\n",
            file=sys.stderr,
            flush=True,
        )

    def drop(self) -> None:
        """No token any more, and no file."""
        self.value = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def valid(self, given: str | None) -> bool:
        current = self.value
        if current is None or not given:
            return False
        return hmac.compare_digest(given.encode(), current.encode())
