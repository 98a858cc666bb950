"""Shared fixtures: the test images, label sweeps of real containers, real git repositories.

Only tests marked ``docker`` see a Docker engine. Every other test runs with
``DOCKER_HOST`` pointing at a socket that does not exist, as on a machine without an
engine, so ``pytest -m "not docker"`` passes there too; a test that needs the engine
fails here until it is marked. A test not marked ``docker`` that asks for a test image
fails before the image is built.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.app import create_app
from daemon.keys import TASKS
from daemon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_LABEL = "corral.test"
# Where tests not marked ``docker`` find "the engine": nothing answers there.
NO_ENGINE = "unix:///nonexistent/corral-test-not-marked-docker.sock"
# The image of those tests' sessions: never built, so a container started with it fails.
UNBUILT_IMAGE = "corral-test-unbuilt:mark-the-test-docker"
IMAGE_FIXTURES = frozenset({"busybox_image", "agent_image"})


def needs_engine(item: pytest.Item) -> bool:
    return item.get_closest_marker("docker") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    # Set around the whole protocol, not in a fixture, so module-scoped fixtures that an
    # unmarked test sets up (a daemon serving a module's tests) see no engine either.
    if needs_engine(item):
        return (yield)
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = NO_ENGINE
    try:
        return (yield)
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture: an image would otherwise be built (or fail to build) first.
    wanted = IMAGE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if wanted and not needs_engine(item):
        pytest.fail(
            f"{item.nodeid} uses {', '.join(sorted(wanted))} but is not marked docker: "
            "add @pytest.mark.docker",
            pytrace=False,
        )


def _image_from_env_or_build(var: str, script: str) -> str:
    tag = os.environ.get(var)
    if tag:
        return tag
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / script)], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def _cached_image(var: str) -> str | None:
    env_file = ROOT / ".cache" / "test-images.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            if name == var and value:
                return value
    return None


@pytest.fixture(scope="session")
def agent_image() -> str:
    """Tag of the Debian agent image with git and the agent CLIs (built by the set-up)."""
    tag = os.environ.get("CORRALTEST_AGENT_IMAGE") or _cached_image("CORRALTEST_AGENT_IMAGE")
    if tag is None:
        subprocess.run(["bash", str(ROOT / "scripts" / "build-test-images.sh")], check=True)
        tag = _cached_image("CORRALTEST_AGENT_IMAGE")
    assert tag, "scripts/build-test-images.sh did not record the agent image"
    return tag


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """Tag of the FROM-scratch busybox image (built once per machine, reused by hash tag)."""
    return _image_from_env_or_build("CORRALTEST_BUSYBOX_IMAGE", "build-busybox-image.sh")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path, branch: str = "main") -> Path:
    """A real git repository with one commit on ``branch``."""
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", branch)
    _git(path, "config", "user.email", "test@example.invalid")
    _git(path, "config", "user.name", "corral test")
    (path / "README.md").write_text("hello\n")
    _git(path, "add", "README.md")
    _git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def git() -> object:
    return _git


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Commits made by the daemon or tests must not depend on the machine's git config.
    monkeypatch.setenv("GIT_AUTHOR_NAME", "corral test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "corral test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")


# --- the daemon under test -------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for one test's daemon: its own data dir, the busybox image, no network.

    The image is built only for tests marked ``docker``: the others never start a
    container, and must run where no engine can build one.
    """
    if needs_engine(request.node):
        image = str(request.getfixturevalue("busybox_image"))
    else:
        image = UNBUILT_IMAGE
    return Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "docker": {"default_image": image, "network_mode": "none"},
            # The busybox image has no agent CLI: its own command (a shell) runs instead.
            "sessions": {"git_timeout": 30, "start_agent": False},
        }
    )


def sweep_containers(data_dir: Path) -> None:
    """Remove every container the test's daemon made, found by its instance label."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=corral.daemon_instance={data_dir}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Any]:
    app = create_app(settings)
    test_client = await aiohttp_client(app)
    try:
        yield test_client
    finally:
        await app[TASKS].wait(timeout=30)
        sweep_containers(settings.data_dir)


# Starts a daemon with the settings a test has changed; answers its test client.
Daemon = Callable[[Settings], Awaitable[Any]]


@pytest.fixture
async def daemon(aiohttp_client: Any) -> AsyncIterator[Daemon]:
    """Start a daemon with the test's own settings (changed after the ``settings`` fixture),
    as often as the test asks; each one's tasks are awaited and its containers swept after."""
    started: list[tuple[Any, Settings]] = []

    async def start(settings: Settings) -> Any:
        app = create_app(settings)
        started.append((app, settings))
        return await aiohttp_client(app)

    yield start
    for app, settings in started:
        await app[TASKS].wait(timeout=30)
        sweep_containers(settings.data_dir)


async def wait_for(
    client: Any, session_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """Poll the session until ``predicate`` holds; fail with the last state otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    session: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        response = await client.get(f"/api/sessions/{session_id}")
        if response.status == 404:
            session = {"status": "gone"}
        else:
            session = (await response.json())["session"]
        if predicate(session):
            return session
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} did not reach the state; last: {session}")


async def create_running(client: Any, repo: Path, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/sessions", json={"repo_path": str(repo), "prompt": "do it", **body}
    )
    assert response.status == 201, await response.text()
    created = (await response.json())["session"]
    return await wait_for(client, created["id"], lambda s: s["status"] != "creating")


def docker_exec(
    container_id: str, script: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in the container; the caller checks the result."""
    return subprocess.run(
        ["docker", "exec", container_id, "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def container_state(container_id: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", container_id], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return {}
    return dict(json.loads(out.stdout)[0])


def container_environment(container_id: str) -> dict[str, str]:
    """The container's environment as the engine gave it (``docker inspect``)."""
    entries = container_state(container_id)["Config"]["Env"]
    return dict(entry.split("=", 1) for entry in entries)
