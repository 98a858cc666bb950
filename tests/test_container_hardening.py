"""Hardened session containers, checked in real ones: what a prompt-injected agent can't do.

The attacker is the agent inside a session's container. These tests look at that
container from inside (``/proc/self/status``, a fork bomb, a ``chown`` as root) and from the
engine's side (``docker inspect``): no capabilities, no way to gain privileges, processes,
memory and CPUs within limits, never the host's network without the operator's say-so, and
no secret in its environment: its agent's key variable holds a placeholder that only corral's
model gateway honours (tests/test_credentials_e2e.py runs the real CLIs through it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from backends.base import ContainerSpec, NetworkRefused
from backends.docker import DockerBackend
from daemon.cli import warn_host_network
from daemon.settings import Settings, SettingsError, load_settings
from tests.conftest import (
    Daemon,
    container_environment,
    container_state,
    create_running,
    docker_exec,
)
from tests.model_server import ModelServer, bridge_gateway

pytestmark = [pytest.mark.docker, pytest.mark.timeout(90)]

# No bit set: not one capability, effective or in the bounding set.
NO_CAPS = "0000000000000000"


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


async def test_a_session_container_has_no_capabilities_and_cannot_gain_privileges(
    daemon: Daemon, settings: Settings, git_repo: Path
) -> None:
    client = await daemon(settings)
    session = await create_running(client, git_repo)
    assert session["status"] == "running", session
    cid = session["container_id"]

    # The session's own process tree (PID 1 is the init, its child the session's command)
    # and anything it starts later.
    for proc in ("1", "self"):
        found = docker_exec(cid, f"cat /proc/{proc}/status")
        assert found.returncode == 0, found.stderr
        status = status_fields(found.stdout)
        assert status["CapEff"] == NO_CAPS, (proc, status["CapEff"])
        assert status["CapPrm"] == NO_CAPS, (proc, status["CapPrm"])
        assert status["CapBnd"] == NO_CAPS, (proc, status["CapBnd"])
        assert status["NoNewPrivs"] == "1", proc

    # As the host's uid (root here), root in the container is a uid without powers: it
    # cannot give a file away, make a device node, or read a file that is not its own.
    probe = docker_exec(
        cid,
        "id -u; touch /tmp/mine; "
        "chown 4242 /tmp/mine && echo chown-worked; "
        "mknod /tmp/dev c 1 3 && echo mknod-worked; "
        "echo secret > /tmp/theirs && chown 0 /tmp/theirs; "
        "chmod 000 /tmp/theirs; cat /tmp/theirs 2>/dev/null && echo read-worked; true",
    )
    assert "worked" not in probe.stdout, probe.stdout
    inspected = container_state(cid)["HostConfig"]
    assert inspected["CapDrop"] == ["ALL"]
    assert not inspected["CapAdd"]
    assert inspected["SecurityOpt"] == ["no-new-privileges"]
    assert inspected["Privileged"] is False


async def test_the_pids_limit_stops_a_fork_bomb(
    daemon: Daemon, settings: Settings, git_repo: Path
) -> None:
    settings.docker.pids_limit = 24
    client = await daemon(settings)
    session = await create_running(client, git_repo)
    assert session["status"] == "running", session
    cid = session["container_id"]

    bomb = docker_exec(
        cid, "i=0; while [ $i -lt 100 ]; do sleep 120 & i=$((i+1)); done; echo all-100-started"
    )

    assert "all-100-started" not in bomb.stdout
    assert "can't fork" in bomb.stderr, bomb.stderr
    top = subprocess.run(
        ["docker", "top", cid], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert 10 < len(top) - 1 <= 24, top  # minus the header line
    assert container_state(cid)["HostConfig"]["PidsLimit"] == 24


async def test_docker_inspect_shows_the_default_limits(
    daemon: Daemon, settings: Settings, git_repo: Path
) -> None:
    defaults = Settings().docker
    assert (defaults.memory_limit_mb, defaults.cpu_limit, defaults.pids_limit) == (4096, 2, 1024)
    client = await daemon(settings)  # the fixture leaves every limit at its default
    session = await create_running(client, git_repo)
    assert session["status"] == "running", session

    host = container_state(session["container_id"])["HostConfig"]

    assert host["Memory"] == 4096 * 1024 * 1024
    assert host["PidsLimit"] == 1024
    engine_cpus = int(
        subprocess.run(
            ["docker", "info", "--format", "{{.NCPU}}"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert host["NanoCpus"] == min(2, engine_cpus) * 1_000_000_000


async def test_more_cpus_than_the_engine_has_are_capped_not_refused(busybox_image: str) -> None:
    backend = DockerBackend()
    session_id = str(uuid.uuid4())
    spec = ContainerSpec(
        session_id=session_id,
        session_name=f"test-{session_id[:12]}",
        image=busybox_image,
        working_dir="/",
        network_mode="none",
        daemon_instance=f"test-{session_id}",
        command=("true",),
        cpu_limit=4096.0,
    )
    try:
        info = await backend.create(spec)
        host = container_state(info.id)["HostConfig"]
        engine_cpus = await backend._cpu_count()
        assert engine_cpus >= 1
        assert host["NanoCpus"] == engine_cpus * 1_000_000_000
    finally:
        await backend.close()
        subprocess.run(["docker", "rm", "-f", f"corral-{spec.session_name}"], capture_output=True)


@pytest.mark.parametrize("mode", ["host", "container:some-other-container"])
def test_a_sharing_network_mode_is_a_settings_error(tmp_path: Path, mode: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[docker]\nnetwork_mode = "{mode}"\n')

    with pytest.raises(SettingsError) as refused:
        load_settings(config, environ={})

    message = str(refused.value)
    assert "network_mode" in message
    assert "allow_host_network" in message if mode == "host" else "shares" in message
    with pytest.raises(ValueError, match="network_mode"):
        Settings().docker.network_mode = mode  # nor changed later, at run time


def test_host_network_is_accepted_only_with_the_explicit_flag(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[docker]\nallow_host_network = true\nnetwork_mode = "host"\n')
    assert load_settings(config, environ={}).docker.network_mode == "host"
    config.write_text(
        '[docker]\nallow_host_network = true\nnetwork_mode = "container:corral-other"\n'
    )
    with pytest.raises(SettingsError, match="shares another container"):
        load_settings(config, environ={})


def test_an_allowed_host_network_is_announced_loudly_at_start(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[docker]\nallow_host_network = true\nnetwork_mode = "host"\n')
    with capture_logs() as logs:
        warn_host_network(load_settings(config, environ={}))
        warn_host_network(Settings())
    assert [e["event"] for e in logs] == ["host_network_allowed"]
    assert logs[0]["log_level"] == "warning"


async def test_the_backend_refuses_the_host_network_unless_allowed(busybox_image: str) -> None:
    """The engine call is guarded too: a spec made without the settings gets no host network."""
    backend = DockerBackend()
    session_id = str(uuid.uuid4())
    name = f"test-{session_id[:12]}"
    base: dict[str, Any] = {
        "session_id": session_id,
        "session_name": name,
        "image": busybox_image,
        "working_dir": "/",
        "daemon_instance": f"test-{session_id}",
        "command": ("true",),
    }
    try:
        for mode in ("host", "container:corral-anything"):
            with pytest.raises(NetworkRefused, match="network"):
                await backend.create(ContainerSpec(**base, network_mode=mode))
            assert container_state(f"corral-{name}") == {}  # nothing was made

        with capture_logs() as logs:
            info = await backend.create(
                ContainerSpec(**base, network_mode="host", allow_host_network=True)
            )
        assert container_state(info.id)["HostConfig"]["NetworkMode"] == "host"
        warned = [e for e in logs if e["event"] == "container_on_host_network"]
        assert [e["log_level"] for e in warned] == ["warning"]
    finally:
        await backend.close()
        subprocess.run(["docker", "rm", "-f", f"corral-{name}"], capture_output=True)


async def test_a_session_on_the_bridge_cannot_reach_the_daemons_api(
    daemon: Daemon, settings: Settings, git_repo: Path
) -> None:
    """The default network: the host's loopback, where corral listens, is out of reach."""
    gateway = bridge_gateway()
    assert gateway is not None
    settings.docker.network_mode = "bridge"
    client = await daemon(settings)
    port = client.server.port
    session = await create_running(client, git_repo)
    assert session["status"] == "running", session
    cid = session["container_id"]

    async def get(address: str, port: int, path: str) -> subprocess.CompletedProcess[str]:
        # busybox's nc: its static wget crashes on lookups in this image. In a thread, so
        # this loop keeps serving the servers under test meanwhile.
        request = f"GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n"
        # stdin stays open until the answer is in: busybox's nc may quit at its end.
        script = f'{{ printf "{request}"; sleep 2; }} | nc -w 5 {address} {port} 2>&1'
        return await asyncio.to_thread(docker_exec, cid, script)

    async with ModelServer() as reachable:
        # The control: a server the host offers on the bridge's gateway answers (its 404).
        control = await get(gateway, int(reachable.container_url.rsplit(":", 1)[1]), "/")
        assert " 404 Not Found" in control.stdout, control.stdout
        for address in ("127.0.0.1", gateway):
            probe = await get(address, port, "/health")
            assert "healthy" not in probe.stdout
            assert "refused" in probe.stdout.lower(), (address, probe.stdout)


def _image_environment(image: str) -> dict[str, str]:
    out = subprocess.run(
        ["docker", "image", "inspect", image, "--format", "{{json .Config.Env}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(entry.split("=", 1) for entry in json.loads(out) or [])


@pytest.mark.parametrize(
    ("agent", "start_agent", "key"),
    [
        ("claude", True, "ANTHROPIC_API_KEY"),
        ("codex", True, "OPENAI_API_KEY"),
        ("claude", False, None),
        ("codex", False, None),
    ],
)
async def test_the_container_holds_only_the_key_its_agent_needs(
    daemon: Daemon,
    settings: Settings,
    git_repo: Path,
    busybox_image: str,
    monkeypatch: pytest.MonkeyPatch,
    agent: str,
    start_agent: bool,
    key: str | None,
) -> None:
    # Secrets the daemon can see: both agents' keys, the metadata key, and tokens in its own
    # environment that no agent needs.
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-configured-0123456789abcdef",
        "OPENAI_API_KEY": "sk-openai-configured-0123456789abcdef",
    }
    settings.agents.anthropic_api_key = SecretStr(secrets["ANTHROPIC_API_KEY"])
    settings.agents.openai_api_key = SecretStr(secrets["OPENAI_API_KEY"])
    settings.metadata.api_key = SecretStr("sk-metadata-0123456789abcdef")
    daemon_env = {
        "GITHUB_TOKEN": "ghp_daemon0123456789",
        "AWS_SECRET_ACCESS_KEY": "aws-daemon-0123456789",
        "CORRAL_AUTH__SETUP_TOKEN": "setup-daemon-0123456789",
    }
    for name, value in daemon_env.items():
        monkeypatch.setenv(name, value)
    settings.sessions.start_agent = start_agent
    client = await daemon(settings)

    # The busybox image has no agent CLI, so the agent's command fails at once; the
    # container it was given stays for inspection.
    session = await create_running(client, git_repo, agent=agent)
    assert session["container_id"], session
    env = container_environment(session["container_id"])

    forbidden = set(secrets.values()) | set(daemon_env.values()) | {"sk-metadata-0123456789abcdef"}
    if key is not None:
        # The agent's variable is there (its CLI needs one) but holds a placeholder: the
        # gateway swaps in the configured key on the way out.
        assert env[key], key
        assert env[key] not in forbidden
    for name, value in env.items():
        assert value not in forbidden, name
        assert not any(secret in value for secret in forbidden), name
    added = set(env) - set(_image_environment(busybox_image))
    assert not added & {"ANTHROPIC_API_KEY", "OPENAI_API_KEY"} - {key}
    assert not added & set(daemon_env)
