"""Generated session names: short, readable, safe in branch, path and container names."""

from __future__ import annotations

import secrets

_ADJECTIVES = (
    "amber", "brisk", "calm", "deft", "eager", "fair", "gentle", "hardy", "keen", "lively",
    "mellow", "nimble", "plucky", "quiet", "rapid", "steady", "tidy", "vivid", "witty", "zesty",
)  # fmt: skip
_NOUNS = (
    "badger", "colt", "dingo", "egret", "falcon", "gecko", "heron", "ibex", "jackal", "koala",
    "lynx", "marten", "newt", "otter", "puffin", "quail", "raven", "stoat", "tapir", "wren",
)  # fmt: skip


def generate_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
