"""The ports corral's listeners for containers keep across restarts.

A running container was given ``http://<host address>:<port>`` of the model gateway (and of
the egress proxy) when it was made; if the daemon came back on another port, every running
session would lose its model until it is recreated. So a port the operator left at 0 is
chosen once and remembered in ``<data_dir>/ports.json`` under a key per listener.

Plain blocking functions: callers on the event loop run them in ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path

PORTS_FILE = "ports.json"

# The gateway and the egress proxy may remember theirs at the same time, from two threads:
# the read-modify-write of the one file must not lose either.
_lock = threading.Lock()


def _read(path: Path) -> dict[str, int]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: nothing remembered, a new port will be chosen
    if not isinstance(loaded, dict):
        return {}
    return {
        str(key): value
        for key, value in loaded.items()
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    }


def remembered_port(data_dir: Path, key: str, configured: int) -> int:
    """The port to listen on: ``configured`` when not 0, else the one remembered under
    ``key``, else 0 (pick one, then :func:`remember_port` it)."""
    if configured:
        return configured
    with _lock:
        return _read(data_dir / PORTS_FILE).get(key, 0)


def remember_port(data_dir: Path, key: str, port: int) -> None:
    """Keep ``port`` under ``key`` (atomically, mode 0600; other keys are kept)."""
    path = data_dir / PORTS_FILE
    with _lock:
        ports = _read(path)
        if ports.get(key) == port:
            return
        ports[key] = port
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ports-", dir=data_dir)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                json.dump(ports, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
