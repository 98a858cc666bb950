"""The daemon's secrets: how they are made, and the only form in which they are stored.

Every secret carries a ``corral_<kind>_`` prefix so the log scrubber (daemon/log.py) finds
it even when this process never saw it in clear, and so a leaked one is recognisable in a
secret scanner. Each has 256 bits of randomness: a plain SHA-256 is enough to store it (no
slow hash is needed against guessing), and lookups by hash leak nothing useful.
"""

from __future__ import annotations

import hashlib
import secrets

API_TOKEN = "corral_tok_"  # noqa: S105 - a prefix, not a secret
SESSION = "corral_ses_"
SETUP = "corral_setup_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def hint(secret: str) -> str:
    """Enough of a token to tell it apart in a list, far too little to guess it."""
    return secret[: len(API_TOKEN) + 4] + "…"
