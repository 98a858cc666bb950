"""The data dir holds chats, agent homes and the sign-in store: only the daemon's user reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from daemon.app import create_app
from daemon.settings import Settings


async def test_a_new_data_dir_is_private(aiohttp_client: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "corral"
    await aiohttp_client(create_app(Settings(data_dir=data_dir)))
    assert data_dir.stat().st_mode & 0o777 == 0o700


async def test_an_open_data_dir_is_closed_loudly(aiohttp_client: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "corral"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    with capture_logs() as logs:
        client = await aiohttp_client(create_app(Settings(data_dir=data_dir)))
        assert (await client.get("/health")).status == 200
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert any(e["event"] == "data_dir_made_private" and e["was"] == "0o755" for e in logs)
