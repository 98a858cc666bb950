"""Is this machine ready for the daemon's main job? One look at each part, with its fix.

Used by ``GET /api/system`` (with the running daemon's image builder) and by
``corral doctor`` (no daemon: the image is only looked at). Every check runs off the loop
or as a subprocess: the engine through its backend, git through ``daemon/core/git.py``, the
data dir and the disk in a thread. Credentials are warnings, never part of ``ready``: an
agent may still be useful. Credentials come from ``daemon/credentials`` (the running
daemon's service, with its last checks; doctor makes one of its own): their kind, source and
last check's status, never the secret.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends.base import BackendError, BackendInfo, Engine
from daemon.core import git
from daemon.core.image_build import ImageBuilder, build_command
from daemon.core.system_models import (
    WARNING_CHECKS,
    Check,
    Credential,
    Credentials,
    DataDirStatus,
    EngineStatus,
    GitStatus,
    ImageStatus,
    SystemStatus,
)
from daemon.credentials.models import CredentialEntry
from daemon.credentials.service import Credentials as CredentialService
from daemon.resources import agent_recipe
from daemon.settings import Settings

GIB = 1024**3
MIN_FREE_BYTES = GIB  # below this on the data dir's disk, sessions soon fail to write
GIT_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Dir:
    writable: bool
    free_bytes: int | None
    probed: Path  # the data dir, or its nearest existing parent when it is not made yet
    error: str | None


def _probe_dir(path: Path) -> _Dir:
    """Create and remove a file in the data dir (blocking: run it in a thread)."""
    probed = path
    while not probed.exists() and probed != probed.parent:
        probed = probed.parent
    error = None
    try:
        with tempfile.NamedTemporaryFile(dir=probed, prefix=".corral-probe-"):
            pass
    except OSError as exc:
        error = exc.strerror or str(exc)
    try:
        free: int | None = shutil.disk_usage(probed).free
    except OSError:
        free = None
    return _Dir(writable=error is None, free_bytes=free, probed=probed, error=error)


def _credential(entry: CredentialEntry) -> Credential:
    return Credential(
        present=entry.kind is not None, source=entry.source, kind=entry.kind, status=entry.status
    )


def _engine_check(settings: Settings, info: BackendInfo) -> Check:
    if info.available:
        return Check(
            name="engine", ok=True, summary=f"Docker engine {info.version} answers", fix=None
        )
    url = settings.docker.url or os.environ.get("DOCKER_HOST") or "the local socket"
    if settings.docker.url:
        fix = f"start the Docker engine at {url}, or set docker.url to one that answers"
    else:
        fix = (
            "start Docker: sudo systemctl start docker (install it: sudo apt-get install docker.io)"
        )
    return Check(name="engine", ok=False, summary=f"no Docker engine answers at {url}", fix=fix)


def _image_check(image: ImageStatus, reachable: bool, fix: str) -> Check:
    name = image.name
    if image.present:
        return Check(name="image", ok=True, summary=f"agent image {name} is present", fix=None)
    if not reachable:
        return Check(
            name="image",
            ok=False,
            summary=f"cannot tell whether {name} is present: the engine does not answer",
            fix="start the engine first (see the engine check)",
        )
    if image.building:
        step = image.progress
        where = f": step {step.step}/{step.total}, {step.message}" if step else ""
        return Check(
            name="image",
            ok=False,
            summary=f"agent image {name} is being built{where}",
            fix="wait for the build to end (sessions created meanwhile wait for it)",
        )
    failed = f"; its last build failed: {image.error}" if image.error else ""
    return Check(name="image", ok=False, summary=f"agent image {name} is missing{failed}", fix=fix)


def _credential_check(entry: CredentialEntry) -> Check:
    name = f"credentials_{entry.agent}"
    if entry.kind is None:
        return Check(
            name=name, ok=False, summary=f"{entry.agent}: no credential", fix=entry.message
        )
    found = f"{entry.agent}: {entry.kind} from {entry.source} ({entry.masked})"
    if entry.status in ("ok", "unchecked"):
        checked = "works" if entry.status == "ok" else "not checked yet"
        return Check(name=name, ok=True, summary=f"{found}, {checked}", fix=None)
    fix = (
        f"replace it: corral login {entry.agent}, or the Credentials panel"
        if entry.status == "invalid"
        else "check the network and agents.*_base_url, then Check again"
    )
    return Check(name=name, ok=False, summary=f"{found}: {entry.message}", fix=fix)


async def system_status(
    settings: Settings,
    engine: Engine | None,
    builder: ImageBuilder | None = None,
    credentials: CredentialService | None = None,
) -> SystemStatus:
    """Every check, at once; ``builder`` and ``credentials`` are the running daemon's (None
    for doctor)."""
    data_dir = settings.data_dir
    probe = asyncio.create_task(asyncio.to_thread(_probe_dir, data_dir))
    git_version = asyncio.create_task(_git_version())
    info = await engine.info() if engine is not None else BackendInfo(False, None)

    image_name = settings.docker.default_image
    present = False
    if info.available and engine is not None:
        try:
            present = await engine.image_exists(image_name)
        except BackendError:
            present = False
    building = builder is not None and builder.building
    image = ImageStatus(
        name=image_name,
        present=present,
        building=building and not present,
        progress=builder.progress if builder is not None and building else None,
        error=builder.error if builder is not None and not present else None,
    )
    fix = builder.fix() if builder is not None else build_command(image_name, agent_recipe())

    service = credentials if credentials is not None else CredentialService(settings)
    try:
        entries = {entry.agent: entry for entry in await service.listing()}
    finally:
        if credentials is None:
            await service.close()
    found = {agent: _credential(entry) for agent, entry in entries.items()}

    dir_ = await probe
    version = await git_version
    free = dir_.free_bytes
    free_text = f"{free / GIB:.1f} GiB free" if free is not None else "free space unknown"
    checks = [
        _engine_check(settings, info),
        _image_check(image, info.available, fix),
        *(_credential_check(entries[a]) for a in ("claude", "codex")),
        Check(
            name="data_dir",
            ok=dir_.writable,
            summary=f"{data_dir} is writable"
            if dir_.writable
            else f"cannot write in {dir_.probed}: {dir_.error}",
            fix=None
            if dir_.writable
            else f"make {dir_.probed} writable by this user, or choose another with "
            "--data-dir (data_dir in config.toml)",
        ),
        Check(
            name="disk",
            ok=free is not None and free >= MIN_FREE_BYTES,
            summary=f"{free_text} on the disk of {dir_.probed}",
            fix=None
            if free is not None and free >= MIN_FREE_BYTES
            else f"free at least {MIN_FREE_BYTES // GIB} GiB on the disk of {dir_.probed}, "
            "or move data_dir (--data-dir) to a larger one",
        ),
        Check(
            name="git",
            ok=version is not None,
            summary=version or "git does not run",
            fix=None if version else "install git: sudo apt-get install git",
        ),
    ]
    return SystemStatus(
        ready=all(c.ok for c in checks if c.name not in WARNING_CHECKS),
        checks=checks,
        engine=EngineStatus(reachable=info.available, version=info.version),
        image=image,
        credentials=Credentials(claude=found["claude"], codex=found["codex"]),
        data_dir=DataDirStatus(
            path=str(data_dir), writable=dir_.writable, free_bytes=dir_.free_bytes
        ),
        git=GitStatus(version=version),
    )


async def _git_version() -> str | None:
    try:
        code, out, _ = await git.run(("--version",), cwd="/", timeout=GIT_TIMEOUT)
    except git.GitError:
        return None
    if code != 0:
        return None
    return out.strip() or None
