"""Which sign-in calls count against which rate limit (``[auth]`` settings).

- The four ceremony calls of someone not signed in count per client address and against
  one cap for all addresses (the daemon is single-user: a flood from many addresses is
  still a flood).
- A signed-in browser adding a passkey counts against its user instead, so a stranger
  flooding the sign-in calls from the same address (everything is 127.0.0.1 on loopback)
  cannot stop the owner from adding one.
- Registrations begun with the setup token have a tighter limit of their own, per address
  and in all. It is checked before the token is compared: a guesser over the limit learns
  nothing, whether the guess was right or not.
"""

from __future__ import annotations

from collections.abc import Callable

from daemon.core.errors import RateLimited
from daemon.http.ratelimit import ClientLimit, RateLimiter, retry_after
from daemon.settings import AuthSettings


class SignInLimits:
    def __init__(self, settings: AuthSettings, clock: Callable[[], float]) -> None:
        def bucket(rate: int) -> RateLimiter:
            return RateLimiter(rate, 60.0, clock=clock)

        self.ceremonies = ClientLimit(
            bucket(settings.ceremony_rate_per_minute),
            bucket(settings.ceremony_global_rate_per_minute),
        )
        self.users = bucket(settings.ceremony_rate_per_minute)
        self.setup = ClientLimit(
            bucket(settings.setup_token_rate_per_minute),
            bucket(settings.setup_token_rate_per_minute),
        )

    def ceremony(self, client: str, user_id: str | None) -> None:
        """Count one ceremony call; RateLimited when over the limit."""
        if user_id is not None:
            key = f"user:{user_id}"
            wait = self.users.wait(key)
            if wait <= 0:
                self.users.spend(key)
        else:
            wait = self.ceremonies.attempt(client)
        if wait > 0:
            raise RateLimited(
                f"too many sign-in attempts: try again in {retry_after(wait)} s",
                retry_after(wait),
            )

    def setup_token(self, client: str) -> None:
        """Count one attempt with a setup token; RateLimited when over the limit."""
        wait = self.setup.attempt(client)
        if wait > 0:
            raise RateLimited(
                f"too many setup-token attempts: try again in {retry_after(wait)} s",
                retry_after(wait),
            )
