"""The daemon tells the truth about its readiness: ``GET /api/system``, the default image
built on first use (sessions wait for it in ``creating``), and ``corral doctor``.

A tiny recipe stands in for ``images/agent/build-default.sh`` (``CORRAL_AGENT_RECIPE``): it
prints ``corral-progress`` lines, waits for a gate file the test opens (so the building
state is seen, never raced), and builds FROM the busybox test image with the legacy builder.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import Settings
from tests.conftest import ROOT, sweep_containers, wait_for

CHECKS = ["engine", "image", "credentials_claude", "credentials_codex", "data_dir", "disk", "git"]
NO_ENGINE_SOCKET = "unix:///nonexistent/corral-test-doctor.sock"


async def until(client: Any, predicate: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll /api/system until ``predicate`` holds on its answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    status: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        response = await client.get("/api/system")
        assert response.status == 200, await response.text()
        status = await response.json()
        if predicate(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"/api/system did not reach the state; last: {status}")


def recipe(folder: Path, base: str, *, gate: Path | None = None, fail: bool = False) -> Path:
    """A build-default.sh in ``folder``; every run appends a line to ``folder/runs``."""
    folder.mkdir(parents=True, exist_ok=True)
    wait = f'while [ ! -e "{gate}" ]; do sleep 0.05; done' if gate else ""
    build = (
        'echo "the engine refused: no space left for the image" >&2; exit 3'
        if fail
        else f"""printf 'FROM {base}\\nLABEL corral.test=1\\n' > "$here/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$1" "$here" >&2"""
    )
    script = f"""#!/usr/bin/env bash
set -euo pipefail
here=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
echo run >> "$here/runs"
echo "corral-progress 1 2 Preparing the base"
echo "some build chatter on stderr" >&2
{wait}
echo "corral-progress 2 2 Building the image"
{build}
"""
    (folder / "build-default.sh").write_text(script)
    return folder


@pytest.fixture
def first_run_image() -> Iterator[str]:
    """A default image tag that does not exist yet; removed afterwards."""
    tag = f"corral-test-first-run:{uuid.uuid4().hex[:12]}"
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


async def start(aiohttp_client: Any, settings: Settings) -> Any:
    return await aiohttp_client(create_app(settings))


async def stop(client: Any, settings: Settings) -> None:
    await client.app[TASKS].wait(timeout=30)
    sweep_containers(settings.data_dir)


@pytest.mark.docker
async def test_system_with_everything_present_is_ready(client: Any, settings: Settings) -> None:
    response = await client.get("/api/system")
    assert response.status == 200
    status = await response.json()
    assert [c["name"] for c in status["checks"]] == CHECKS
    by_name = {c["name"]: c for c in status["checks"]}
    assert status["ready"] is True
    for name in ("engine", "image", "data_dir", "disk", "git"):
        assert by_name[name]["ok"] is True, by_name[name]
        assert by_name[name]["fix"] is None
    assert status["engine"]["reachable"] is True
    assert status["engine"]["version"]
    assert status["image"] == {
        "name": settings.docker.default_image,
        "present": True,
        "building": False,
        "progress": None,
        "error": None,
    }
    assert status["data_dir"]["path"] == str(settings.data_dir)
    assert status["data_dir"]["writable"] is True
    assert status["data_dir"]["free_bytes"] > 0
    assert status["git"]["version"].startswith("git version")


async def test_credentials_say_where_a_key_is_never_what(
    aiohttp_client: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-ant-test-" + uuid.uuid4().hex
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = await start(aiohttp_client, settings)
    text = await (await client.get("/api/system")).text()
    assert secret not in text
    status = await (await client.get("/api/system")).json()
    assert status["credentials"]["claude"] == {
        "present": True, "source": "env:ANTHROPIC_API_KEY", "kind": "api_key",
        "status": "unchecked",
    }  # fmt: skip
    assert status["credentials"]["codex"]["present"] is False
    by_name = {c["name"]: c for c in status["checks"]}
    assert "OPENAI_API_KEY" in by_name["credentials_codex"]["fix"]
    # No engine answers here: not ready, each failing check with its fix.
    assert status["ready"] is False
    assert by_name["engine"]["ok"] is False
    assert by_name["engine"]["fix"]
    assert by_name["image"]["ok"] is False
    assert by_name["image"]["fix"]


async def test_openapi_lists_the_system_route(client: Any) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    operation = document["paths"]["/api/system"]["get"]
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {
        "ready", "checks", "engine", "image", "credentials", "data_dir", "git",
    }  # fmt: skip


@pytest.mark.docker
async def test_default_image_is_built_on_first_use_while_a_session_waits(
    aiohttp_client: Any,
    settings: Settings,
    busybox_image: str,
    first_run_image: str,
    git_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = tmp_path / "gate"
    folder = recipe(tmp_path / "recipe", busybox_image, gate=gate)
    monkeypatch.setenv("CORRAL_AGENT_RECIPE", str(folder))
    settings.docker.default_image = first_run_image
    client = await start(aiohttp_client, settings)
    try:
        # The daemon started the build by itself: the status shows it with its progress.
        status = await until(client, lambda s: (s["image"]["progress"] or {}).get("step") == 1)
        assert status["image"]["building"] is True
        assert status["image"]["present"] is False
        assert status["image"]["progress"] == {
            "step": 1, "total": 2, "message": "Preparing the base",
        }  # fmt: skip
        assert status["ready"] is False
        image_check = next(c for c in status["checks"] if c["name"] == "image")
        assert "being built" in image_check["summary"]

        response = await client.post(
            "/api/sessions", json={"repo_path": str(git_repo), "prompt": "do it"}
        )
        assert response.status == 201
        sid = (await response.json())["session"]["id"]
        waiting = await wait_for(
            client,
            sid,
            lambda s: (s["progress"] or {}).get("message", "").startswith("Waiting for the agent"),
        )
        assert waiting["status"] == "creating"
        assert waiting["progress"]["message"] == (
            "Waiting for the agent image to be built: Preparing the base"
        )
        gate.touch()
        session = await wait_for(client, sid, lambda s: s["status"] != "creating", timeout=120)
        assert session["status"] == "running", session
        status = await until(client, lambda s: not s["image"]["building"])
        assert status["image"]["present"] is True
        assert status["image"]["error"] is None
        assert status["ready"] is True
        assert (folder / "runs").read_text().count("run") == 1
    finally:
        await stop(client, settings)


@pytest.mark.docker
async def test_a_failed_build_fails_the_waiting_session_with_its_fix(
    aiohttp_client: Any,
    settings: Settings,
    busybox_image: str,
    first_run_image: str,
    git_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = recipe(tmp_path / "recipe", busybox_image, fail=True)
    monkeypatch.setenv("CORRAL_AGENT_RECIPE", str(folder))
    settings.docker.default_image = first_run_image
    client = await start(aiohttp_client, settings)
    try:
        status = await until(client, lambda s: s["image"]["error"] is not None)
        assert "no space left for the image" in status["image"]["error"]
        assert status["image"]["building"] is False
        image_check = next(c for c in status["checks"] if c["name"] == "image")
        command = f"bash {folder / 'build-default.sh'} {first_run_image}"
        assert image_check["fix"] == command

        # A create retries the build; when it fails again the session fails with the fix.
        response = await client.post(
            "/api/sessions", json={"repo_path": str(git_repo), "prompt": "do it"}
        )
        sid = (await response.json())["session"]["id"]
        session = await wait_for(client, sid, lambda s: s["status"] != "creating")
        assert session["status"] == "failed"
        assert command in session["error_message"]
        assert "no space left for the image" in session["error_message"]
        assert (folder / "runs").read_text().count("run") == 2
        assert not Path(session["worktree_path"]).exists()
    finally:
        await stop(client, settings)


@pytest.mark.docker
@pytest.mark.parametrize("which", ["other", "default_without_recipe"])
async def test_a_missing_image_names_the_command_that_makes_it(
    aiohttp_client: Any,
    settings: Settings,
    first_run_image: str,
    git_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
) -> None:
    folder = tmp_path / "no-recipe"
    folder.mkdir()
    body: dict[str, Any] = {"repo_path": str(git_repo), "prompt": "do it"}
    if which == "other":
        # A recipe is there, but an image a request names is never built.
        folder = recipe(tmp_path / "recipe", settings.docker.default_image)
        body["image"] = first_run_image
        command = f"docker pull {first_run_image}"
    else:
        settings.docker.default_image = first_run_image
        command = f"images/agent/build-default.sh {first_run_image}"
    monkeypatch.setenv("CORRAL_AGENT_RECIPE", str(folder))
    client = await start(aiohttp_client, settings)
    try:
        sid = (await (await client.post("/api/sessions", json=body)).json())["session"]["id"]
        session = await wait_for(client, sid, lambda s: s["status"] != "creating")
        assert session["status"] == "failed"
        assert command in session["error_message"], session["error_message"]
        assert not (folder / "runs").exists()
    finally:
        await stop(client, settings)


# --- corral doctor -----------------------------------------------------------------------


def doctor(data_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "doctor", "--data-dir", str(data_dir)],
        env={**os.environ, "CORRAL_CONFIG": str(tmp_path / "absent.toml"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def lines_of(out: str, name: str) -> tuple[str, str]:
    """The check's line and the fix line under it ("" when none)."""
    lines = out.splitlines()
    for index, line in enumerate(lines):
        if line[2:].split(" ", 1)[0] == name:
            after = lines[index + 1] if index + 1 < len(lines) else ""
            return line, after.strip() if after.strip().startswith("fix:") else ""
    raise AssertionError(f"no {name} line in:\n{out}")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_doctor_names_a_stopped_engine_and_a_read_only_data_dir(
    tmp_path: Path, read_only_dir: Path
) -> None:
    done = doctor(read_only_dir, tmp_path, CORRAL_DOCKER__URL=NO_ENGINE_SOCKET)
    assert done.returncode == 1, done.stdout + done.stderr
    line, fix = lines_of(done.stdout, "engine")
    assert line.startswith("✗")
    assert NO_ENGINE_SOCKET in line
    assert "docker.url" in fix
    line, fix = lines_of(done.stdout, "data_dir")
    assert line.startswith("✗")
    assert str(read_only_dir) in line
    assert "--data-dir" in fix
    line, fix = lines_of(done.stdout, "disk")  # a 1 MiB tmpfs is far too small
    assert line.startswith("✗")
    assert "1 GiB" in fix
    line, _ = lines_of(done.stdout, "git")
    assert line.startswith("✓")
    assert "not ready: engine, image, data_dir, disk" in done.stdout


@pytest.mark.docker
def test_doctor_names_a_missing_image_and_passes_when_all_is_there(
    tmp_path: Path, first_run_image: str, busybox_image: str
) -> None:
    recipe_dir = recipe(tmp_path / "recipe", busybox_image)
    env = {"CORRAL_AGENT_RECIPE": str(recipe_dir)}
    missing = doctor(
        tmp_path / "data", tmp_path, CORRAL_DOCKER__DEFAULT_IMAGE=first_run_image, **env
    )
    assert missing.returncode == 1, missing.stdout + missing.stderr
    line, fix = lines_of(missing.stdout, "image")
    assert line.startswith("✗")
    assert first_run_image in line
    assert "missing" in line
    assert fix == f"fix: bash {recipe_dir / 'build-default.sh'} {first_run_image}"
    assert "not ready: image" in missing.stdout
    assert not (recipe_dir / "runs").exists()  # doctor only looks; it never builds

    ready = doctor(tmp_path / "data", tmp_path, CORRAL_DOCKER__DEFAULT_IMAGE=busybox_image, **env)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    for name in ("engine", "image", "data_dir", "disk", "git"):
        assert lines_of(ready.stdout, name)[0].startswith("✓")
