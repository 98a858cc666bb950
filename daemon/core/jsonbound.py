"""JSON from outside the daemon (request bodies, socket frames, what containers write),
parsed with its nesting bounded.

Python's decoder recurses per level and raises ``RecursionError`` (which no caller treats
as bad input: a 500, a dropped socket, a dead tailer) long before its own limit; a value
just under that limit still breaks the recursive code that handles it later (validation,
``json.dumps``). So every such text goes through :func:`loads_bounded`, and every failure
is a ``ValueError``.
"""

from __future__ import annotations

import json
from typing import Any


class JsonTooDeep(ValueError):
    """A JSON document nested deeper than the caller allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def loads_bounded(data: str | bytes, max_depth: int) -> Any:
    """``json.loads``, refusing nesting deeper than ``max_depth`` with :class:`JsonTooDeep`.

    Bad JSON and bad UTF-8 raise their own ``ValueError`` subclasses, as ``json.loads`` does.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooDeep(max_depth) from None
    if _deeper_than(value, max_depth):
        raise JsonTooDeep(max_depth)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    # An explicit stack: the point is not to recurse on hostile depth.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
