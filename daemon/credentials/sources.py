"""The sources a credential comes from, besides the stored one: kinds, command, file.

Precedence (stored, config, command, environment, file) is applied in ``service.py``;
this module reads one source each, cheaply enough for every gateway request: a command
runs at most once per ``command_cache_seconds``, a file is re-read only when its mtime
changes (looked at no more than once a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon.core.access import Credential, CredentialKind
from daemon.core.models import AgentName
from daemon.credentials import chatgpt
from daemon.credentials.stored import read_json

log = structlog.get_logger(__name__)

COMMAND_TIMEOUT = 10.0
COMMAND_RETRY_SECONDS = 30.0  # a failed command is not run again on every request
MAX_COMMAND_OUTPUT = 64 * 1024
STAT_INTERVAL = 1.0

# The environment variables read, in order, per agent.
ENV_VARIABLES: dict[str, tuple[str, ...]] = {
    "claude": ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"),
    "codex": ("OPENAI_API_KEY",),
}


def from_secret(agent: AgentName, secret: str, source: str) -> Credential:
    """A key or token as given: Claude's ``sk-ant-oat...`` is a subscription's OAuth token,
    anything else an API key."""
    kind: CredentialKind = (
        "oauth_token" if agent == "claude" and secret.startswith("sk-ant-oat") else "api_key"
    )
    return Credential(agent=agent, kind=kind, secret=secret, source=source)


def from_auth(agent: AgentName, data: object, source: str) -> Credential | None:
    """A Codex ``auth.json`` object: its ChatGPT sign-in, else its ``OPENAI_API_KEY``."""
    signin = chatgpt.parse_auth(data)
    if signin is not None:
        return Credential(
            agent=agent,
            kind="chatgpt",
            secret=signin.access_token,
            source=source,
            account_id=signin.account_id,
            claims=dict(signin.claims),
        )
    key = chatgpt.api_key_of(data)
    return Credential(agent=agent, kind="api_key", secret=key, source=source) if key else None


@dataclass
class Answer:
    """What a source gave: the text (a key) or an ``auth.json`` object."""

    secret: str = ""
    auth: dict[str, Any] | None = None


def parse_answer(text: str) -> Answer:
    """A command's output: an ``auth.json`` when it is a JSON object, else a key."""
    text = text.strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict):
                return Answer(auth=data)
    # The first line only: password managers print notes after the secret.
    return Answer(secret=text.splitlines()[0].strip() if text else "")


class CommandSource:
    """A command that prints a credential, run without a shell, answer kept for a while."""

    def __init__(self, command: str, cache_seconds: float) -> None:
        self.command = command
        self.cache_seconds = cache_seconds
        self._answer: Answer | None = None
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    def replace(self, answer: Answer) -> None:
        """Keep a refreshed sign-in until the command runs again."""
        self._answer = answer

    def forget(self) -> None:
        self._at = float("-inf")

    async def answer(self) -> Answer | None:
        if not self.command.strip():
            return None
        async with self._lock:
            age = time.monotonic() - self._at
            wait = self.cache_seconds if self._answer is not None else COMMAND_RETRY_SECONDS
            if age >= wait:
                self._answer = await self._run()
                self._at = time.monotonic()
            return self._answer

    async def _run(self) -> Answer | None:
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            log.warning("credential_command_unparsable", error=str(exc))
            return None
        if not argv:
            return None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            log.warning("credential_command_failed", program=argv[0], error=exc.strerror)
            return None
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                out, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            log.warning("credential_command_timeout", program=argv[0], seconds=COMMAND_TIMEOUT)
            return None
        if process.returncode != 0:
            # Its output is not logged: it may hold part of a secret.
            log.warning("credential_command_failed", program=argv[0], exit_code=process.returncode)
            return None
        answer = parse_answer(out[:MAX_COMMAND_OUTPUT].decode("utf-8", "replace"))
        return answer if answer.secret or answer.auth else None


class AuthFile:
    """Codex's ``auth.json``, re-read when its mtime changes."""

    def __init__(self, configured: str) -> None:
        self.configured = configured  # as the user wrote it, for the source's name
        self.path = Path(configured).expanduser() if configured else None
        self._stamp: tuple[int, int] | None = None
        self._data: dict[str, Any] | None = None
        self._looked = float("-inf")

    @property
    def source(self) -> str:
        return f"file:{self.configured}"

    def forget(self) -> None:
        self._looked = float("-inf")
        self._stamp = None

    async def data(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        if time.monotonic() - self._looked >= STAT_INTERVAL:
            self._looked = time.monotonic()
            self._stamp, self._data = await asyncio.to_thread(self._reread, self._stamp, self._data)
        return self._data

    def _reread(
        self, stamp: tuple[int, int] | None, data: dict[str, Any] | None
    ) -> tuple[tuple[int, int] | None, dict[str, Any] | None]:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None, None
        now = (st.st_mtime_ns, st.st_size)
        if now == stamp:
            return stamp, data
        try:
            loaded = read_json(self.path)
        except (OSError, ValueError) as exc:
            log.warning("codex_auth_file_unreadable", path=str(self.path), error=type(exc).__name__)
            return now, None
        return now, loaded if isinstance(loaded, dict) else None
