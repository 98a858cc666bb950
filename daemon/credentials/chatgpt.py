"""A Codex ChatGPT sign-in: its tokens read from an ``auth.json`` and refreshed when due.

The access token is a JWT; it is refreshed when it expires within
:data:`REFRESH_MARGIN`, or when the sign-in was last refreshed over
:data:`REFRESH_INTERVAL` ago (Codex's own rule). The request is the one Codex 0.169.0 sends
(``codex-rs`` login crate; the client id measured in its binary): a JSON POST of
``client_id``, ``grant_type=refresh_token``, ``refresh_token`` and ``scope`` to the token
URL. OpenAI's refresh tokens rotate, so the new tokens go back into the file they came from
(the user's own Codex shares it): see ``service.py``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from daemon.core.session import rfc3339, utcnow

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REFRESH_SCOPE = "openid profile email"
REFRESH_MARGIN = timedelta(minutes=5)
REFRESH_INTERVAL = timedelta(days=8)
AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"


class RefreshFailed(Exception):
    """The token URL did not give new tokens; the message names no token."""


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the token is the provider's to check); {} if it is
    not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class SignIn:
    access_token: str
    refresh_token: str
    account_id: str
    last_refresh: datetime | None
    claims: dict[str, Any] = field(default_factory=dict)  # plan and email, for the agent

    def expires_at(self) -> datetime | None:
        exp = jwt_claims(self.access_token).get("exp")
        if isinstance(exp, int | float):
            return datetime.fromtimestamp(exp, UTC)
        return None

    def due(self, now: datetime | None = None) -> bool:
        """Whether to refresh before use."""
        now = now or utcnow()
        expires = self.expires_at()
        if expires is not None and expires - now < REFRESH_MARGIN:
            return True
        return self.last_refresh is not None and now - self.last_refresh > REFRESH_INTERVAL


def parse_auth(data: object) -> SignIn | None:
    """The sign-in in an ``auth.json`` object, or None when it holds no ChatGPT tokens."""
    if not isinstance(data, dict):
        return None
    tokens = data.get("tokens")
    if not isinstance(tokens, dict):
        return None
    access, refresh = tokens.get("access_token"), tokens.get("refresh_token")
    if not isinstance(access, str) or not access:
        return None
    id_claims = jwt_claims(str(tokens.get("id_token") or ""))
    auth = id_claims.get(AUTH_CLAIM)
    auth = auth if isinstance(auth, dict) else {}
    account = tokens.get("account_id") or auth.get("chatgpt_account_id") or ""
    email = id_claims.get("email")
    if not isinstance(email, str):
        profile = jwt_claims(access).get(PROFILE_CLAIM)
        email = profile.get("email") if isinstance(profile, dict) else None
    claims = {
        key: value
        for key, value in (("plan", auth.get("chatgpt_plan_type")), ("email", email))
        if isinstance(value, str)
    }
    return SignIn(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) else "",
        account_id=str(account),
        last_refresh=_parse_time(data.get("last_refresh")),
        claims=claims,
    )


def api_key_of(data: object) -> str:
    """An ``auth.json``'s ``OPENAI_API_KEY``, or ""."""
    if isinstance(data, dict):
        key = data.get("OPENAI_API_KEY")
        if isinstance(key, str):
            return key.strip()
    return ""


async def refresh(
    http: aiohttp.ClientSession, url: str, signin: SignIn, seconds: float
) -> dict[str, str]:
    """New tokens for the sign-in: ``access_token``, and ``id_token`` and ``refresh_token``
    when the server sent them."""
    if not signin.refresh_token:
        raise RefreshFailed("the sign-in has no refresh token; run codex login again")
    body = {
        "client_id": CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": signin.refresh_token,
        "scope": REFRESH_SCOPE,
    }
    try:
        async with http.post(
            url, json=body, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as response:
            status = response.status
            raw = await response.content.read(1024 * 1024)
    except TimeoutError:
        raise RefreshFailed(f"the token URL did not answer within {seconds:g} s") from None
    except aiohttp.ClientError as exc:
        raise RefreshFailed(f"the token URL could not be reached: {type(exc).__name__}") from None
    if status in (400, 401):
        # Refresh tokens are single-use: another program (the user's codex) may have used it.
        raise RefreshFailed(
            f"the token URL refused the refresh token ({status}); run codex login again"
        )
    if not 200 <= status < 300:
        raise RefreshFailed(f"the token URL answered {status}")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise RefreshFailed("the token URL's answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise RefreshFailed("the token URL's answer has no access_token")
    return {
        key: answer[key]
        for key in ("access_token", "id_token", "refresh_token")
        if isinstance(answer.get(key), str) and answer[key]
    }


def merged(data: dict[str, Any], tokens: dict[str, str]) -> dict[str, Any]:
    """``data`` with the new tokens and ``last_refresh`` now; every other key kept."""
    out = copy.deepcopy(data)
    old = out.get("tokens")
    out["tokens"] = {**(old if isinstance(old, dict) else {}), **tokens}
    out["last_refresh"] = rfc3339(utcnow())
    return out
