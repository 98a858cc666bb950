"""``corral login claude|codex``: give the daemon an agent's credential from the terminal.

Claude: a subscription's token (``claude setup-token`` prints it) or an API key, read
without echo (or from stdin when it is not a terminal). Codex: a ChatGPT sign-in imported
from ``~/.codex/auth.json`` (after ``codex login``), or an API key. Either is sent to the
daemon (``PUT /api/credentials/{agent}``, with ``CORRAL_TOKEN`` when auth is on), which
stores it, checks it with the provider and answers with the masked entry printed here.
The secret is never printed, and never given as a flag (``ps`` shows flags).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from daemon.credentials.chatgpt import api_key_of, parse_auth

DEFAULT_URL = "http://127.0.0.1:3030"
DEFAULT_AUTH_FILE = "~/.codex/auth.json"
TIMEOUT = 60.0  # the daemon checks the credential with the provider before it answers

CLAUDE_HELP = """\
Claude Code signs in with one of:
  - a Claude subscription (Pro or Max): run `claude setup-token` on any machine where you
    can sign in, and paste the token it prints (sk-ant-oat01-...);
  - an API key from https://console.anthropic.com (sk-ant-api03-...).
corral keeps it in its data dir and gives sessions only a stand-in; agents reach Claude
through corral's gateway."""

CODEX_HELP = """\
Codex signs in with one of:
  - a ChatGPT sign-in: run `codex login`, then `corral login codex` again to import
    ~/.codex/auth.json (or pass --file);
  - an OpenAI API key (sk-...), pasted here."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", choices=("claude", "codex"), help="the agent to sign in")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"daemon URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--file",
        default=DEFAULT_AUTH_FILE,
        help=f"codex: the auth.json to import (default {DEFAULT_AUTH_FILE})",
    )


def _read_line(prompt: str, *, secret: bool) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt) if secret else input(prompt)
    print(prompt, end="", flush=True)
    line = sys.stdin.readline().strip()
    print()
    return line


def _codex_body(path: Path) -> dict[str, Any] | None:
    """The body that imports ``path``, if the user says so; None to ask for a key."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    signin = parse_auth(data)
    if signin is None and not api_key_of(data):
        return None
    if signin is not None:
        who = ", ".join(
            str(v) for v in (signin.claims.get("email"), signin.claims.get("plan")) if v
        )
        print(f"Found a ChatGPT sign-in in {path}" + (f" ({who})." if who else "."))
        print(
            "corral refreshes its copy and keeps the new tokens. When the daemon runs on this "
            "machine, it already reads this file (credentials.codex_auth_file) and writes "
            "refreshed tokens back, so importing is needed only for a daemon elsewhere."
        )
    else:
        print(f"Found an OPENAI_API_KEY in {path}.")
    answer = _read_line("Import it? [Y/n] ", secret=False).lower()
    return {"auth_json": data} if answer in ("", "y", "yes") else None


async def _put(url: str, agent: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    token = os.environ.get("CORRAL_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.put(f"{url.rstrip('/')}/api/credentials/{agent}", json=body, headers=headers) as r,
    ):
        try:
            answer = await r.json(content_type=None)
        except ValueError:
            answer = {}
        return r.status, answer if isinstance(answer, dict) else {}


def _explain_refusal(status: int, answer: dict[str, Any]) -> str:
    if status == 401:
        if os.environ.get("CORRAL_TOKEN", "").strip():
            return "the daemon refused the API token in CORRAL_TOKEN (401): revoked or mistyped?"
        return "the daemon requires authentication (401): set CORRAL_TOKEN to an API token"
    error = answer.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return f"the daemon refused it ({status}): {message or 'no reason given'}"


def login(agent: str, url: str, auth_file: str) -> int:
    body: dict[str, Any] | None = None
    if agent == "codex":
        body = _codex_body(Path(auth_file).expanduser())
    if body is None:
        print(CLAUDE_HELP if agent == "claude" else CODEX_HELP)
        prompt = "Token or API key: " if agent == "claude" else "API key: "
        secret = _read_line(prompt, secret=True)
        if not secret:
            print("nothing entered; nothing changed")
            return 1
        body = {"secret": secret}
    try:
        status, answer = asyncio.run(_put(url, agent, body))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"cannot reach the daemon at {url} ({type(exc).__name__}): is corral serve running?")
        return 2
    if status != 200:
        print(_explain_refusal(status, answer))
        return 2
    account = answer.get("account") or {}
    who = ", ".join(str(v) for v in (account.get("email"), account.get("plan")) if v)
    print(
        f"{agent}: stored {answer.get('kind')} {answer.get('masked')}"
        + (f" ({who})" if who else "")
    )
    print(f"check: {answer.get('status')}: {answer.get('message')}")
    if answer.get("status") == "invalid":
        again = "claude setup-token" if agent == "claude" else "codex login"
        print(f"the provider refused it: get a new one ({again}, or a new API key) and run "
              f"corral login {agent} again")  # fmt: skip
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    return login(args.agent, args.url, args.file)
