"""Credentials added from the UI or ``corral login``: ``<data_dir>/credentials.json``.

One JSON object, ``{"claude": {"secret": ...}, "codex": {"auth_json": {...}}}``, mode
0600, replaced atomically (a temp file beside it, then rename) so a crash leaves the old
file or the new one, never half of one. The same writer puts a refreshed ChatGPT sign-in
back into Codex's own ``auth.json``. All file work runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAX_FILE_BYTES = 1024 * 1024  # a credentials file is a few KiB; more is not one


def read_json(path: Path) -> Any:
    """The JSON in a regular file of at most :data:`MAX_FILE_BYTES` (blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"over {MAX_FILE_BYTES} bytes")
    return json.loads(raw)


def write_private_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, mode 0600, atomically (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


class StoredCredentials:
    """The stored credential of each agent, held in memory after the first read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def get(self, agent: str) -> dict[str, Any] | None:
        data = await self._loaded()
        entry = data.get(agent)
        return entry if isinstance(entry, dict) else None

    async def put(self, agent: str, entry: dict[str, Any]) -> None:
        async with self._lock:
            data = dict(await self._loaded())
            data[agent] = entry
            await asyncio.to_thread(write_private_json, self.path, data)
            self._data = data

    async def remove(self, agent: str) -> bool:
        async with self._lock:
            data = dict(await self._loaded())
            if data.pop(agent, None) is None:
                return False
            await asyncio.to_thread(write_private_json, self.path, data)
            self._data = data
            return True

    async def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            self._data = await asyncio.to_thread(self._read)
        return self._data

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = read_json(self.path)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Unreadable: treated as empty, and said once; the next put replaces it.
            log.warning(
                "stored_credentials_unreadable", path=str(self.path), error=type(exc).__name__
            )
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)}
