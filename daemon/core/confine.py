"""Path confinement: is a client's path, symlinks resolved, inside the folders allowed?

One helper for every path a client names (browse-directory, repositories, image paths),
so the rule is written once: resolve first (``..`` and symlinks gone), then compare whole
path components, never string prefixes (``/srv/repo-evil`` is not inside ``/srv/repo``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def resolved_roots(roots: Sequence[str]) -> list[Path]:
    return [Path(r).expanduser().resolve() for r in roots]


def within(path: str | Path, roots: Sequence[Path]) -> bool:
    """True when ``path`` resolved lies in one of ``roots`` (already resolved), or none given.

    Raises nothing: a path that cannot be resolved (a loop of links) is outside.
    """
    if not roots:
        return True
    try:
        real = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(real == root or real.is_relative_to(root) for root in roots)
