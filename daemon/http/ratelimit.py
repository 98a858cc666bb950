"""Token-bucket rate limits: how many calls each client, and all of them together, may make.

A bucket holds up to ``rate`` calls and refills at ``rate`` per ``period`` seconds, so a
client may spend its whole minute at once and then gets one call back every
``period / rate`` seconds. ``wait`` says how long until the next call would be allowed
(0 when now), which is what a 429's ``Retry-After`` carries. The clock is injected, so
tests move time instead of sleeping.

Buckets are kept per key in a bounded map: a key whose bucket has refilled holds no state
worth keeping and is dropped first; past ``max_keys`` the least recently used goes too
(which only forgives that client: the global bucket still holds everyone to its cap).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

GLOBAL = "*"  # the key of the one bucket every client shares


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Buckets of ``rate`` calls per ``period`` seconds, one per key."""

    def __init__(
        self,
        rate: int,
        period: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        if rate < 1 or period <= 0:
            raise ValueError("a rate limit needs rate >= 1 and period > 0")
        self.rate = rate
        self.period = period
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.pop(key, None)  # re-inserted below: the dict keeps LRU order
        if bucket is None:
            bucket = _Bucket(float(self.rate), now)
        else:
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(self.rate), bucket.tokens + elapsed * self.rate / self.period)
            bucket.stamp = now
        self._buckets[key] = bucket
        return bucket

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may call again; 0.0 when it may now. Spends nothing.

        Keeps no state for a key it has not seen: a refused caller's first call must not
        grow the map past ``max_keys`` (only ``spend`` adds keys, and trims).
        """
        if key not in self._buckets:
            return 0.0
        bucket = self._refilled(key, self.clock())
        if bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) * self.period / self.rate

    def spend(self, key: str) -> None:
        """Count one call by ``key`` (after ``wait`` said it may)."""
        bucket = self._refilled(key, self.clock())
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._trim()

    def _trim(self) -> None:
        if len(self._buckets) <= self.max_keys:
            return
        for key in [k for k, b in self._buckets.items() if b.tokens >= self.rate]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


class ClientLimit:
    """A per-client limit under a cap for all clients together.

    A call is counted only when both allow it: a client already refused by its own limit
    does not use up the shared cap that the other clients need.
    """

    def __init__(self, per_client: RateLimiter, overall: RateLimiter) -> None:
        self.per_client = per_client
        self.overall = overall

    def attempt(self, client: str) -> float:
        """0.0 and the call counted, or the seconds to wait (nothing counted)."""
        wait = max(self.per_client.wait(client), self.overall.wait(GLOBAL))
        if wait > 0:
            return wait
        self.per_client.spend(client)
        self.overall.spend(GLOBAL)
        return 0.0


def retry_after(wait: float) -> int:
    """The whole seconds to put in a ``Retry-After`` header (never 0 for a refusal)."""
    return max(1, math.ceil(wait))
