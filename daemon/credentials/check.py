"""Does a credential work? One cheap request per kind against the configured upstream.

* Anthropic: ``GET /v1/models``, the key as ``x-api-key`` or the OAuth token as a bearer
  with ``anthropic-beta: oauth-2025-04-20`` (as Claude Code sends it);
* OpenAI: ``GET <openai base>/models`` with the key as a bearer;
* ChatGPT: ``GET <chatgpt base>/wham/accounts/check`` with the access token and
  ``chatgpt-account-id``, a call Codex makes itself at start.

2xx is ok, 401/403 invalid, anything else unreachable with the reason. Messages name
the host and the status, never a header.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from daemon.core.access import Credential
from daemon.credentials.models import CheckStatus
from daemon.settings import Settings

ANTHROPIC_URL = "https://api.anthropic.com"
OPENAI_URL = "https://api.openai.com/v1"
CHATGPT_URL = "https://chatgpt.com/backend-api"
ANTHROPIC_VERSION = "2023-06-01"
OAUTH_BETA = "oauth-2025-04-20"


@dataclass(frozen=True)
class CheckResult:
    status: CheckStatus
    message: str


def anthropic_headers(credential: Credential) -> dict[str, str]:
    """The headers that carry a Claude credential upstream, as Claude Code sends them."""
    headers = {"anthropic-version": ANTHROPIC_VERSION}
    if credential.kind == "oauth_token":
        headers["authorization"] = f"Bearer {credential.secret}"
        headers["anthropic-beta"] = OAUTH_BETA
    else:
        headers["x-api-key"] = credential.secret
    return headers


def request_for(settings: Settings, credential: Credential) -> tuple[str, dict[str, str]]:
    """The check's URL and headers."""
    agents = settings.agents
    if credential.agent == "claude":
        base = agents.anthropic_base_url or ANTHROPIC_URL
        return f"{base.rstrip('/')}/v1/models", anthropic_headers(credential)
    if credential.kind == "chatgpt":
        base = getattr(agents, "chatgpt_base_url", "") or CHATGPT_URL
        headers = {"authorization": f"Bearer {credential.secret}"}
        if credential.account_id:
            headers["chatgpt-account-id"] = credential.account_id
        return f"{base.rstrip('/')}/wham/accounts/check", headers
    base = agents.openai_base_url or OPENAI_URL
    return f"{base.rstrip('/')}/models", {"authorization": f"Bearer {credential.secret}"}


async def check(
    http: aiohttp.ClientSession, settings: Settings, credential: Credential
) -> CheckResult:
    url, headers = request_for(settings, credential)
    host = url.split("/")[2] if "//" in url else url
    timeout = settings.credentials.check_timeout_seconds
    try:
        async with http.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            status = response.status
    except TimeoutError:
        return CheckResult("unreachable", f"{host} did not answer within {timeout:g} s")
    except aiohttp.ClientError as exc:
        return CheckResult("unreachable", f"{host} could not be reached ({type(exc).__name__})")
    if 200 <= status < 300:
        return CheckResult("ok", f"{host} accepted it")
    if status in (401, 403):
        return CheckResult("invalid", f"{host} refused it ({status}): replace it")
    return CheckResult("unreachable", f"{host} answered {status}")
