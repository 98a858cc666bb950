"""Translations between the backend contract's types and the Docker Engine API's JSON.

A :class:`ContainerSpec` becomes a container config (hardened: no capabilities, no way to
gain privileges, inside its limits, off the host's network namespace unless allowed), and
the engine's inspect, list and event answers become :class:`ContainerInfo` and
:class:`ContainerEvent`. Pure functions, no I/O: ``backends/docker.py`` does the calls.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

import structlog

from backends.base import (
    LABEL_MANAGED,
    LABEL_SESSION_ID,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    NetworkRefused,
)
from backends.labels import labels_for

log = structlog.get_logger(__name__)

# The engine's zero time for "never started" or "never finished".
_ZERO_TIME = "0001-01-01T00:00:00Z"
_EXITED_STATUS = re.compile(r"^Exited \((-?\d+)\)")
# Measured (docs/decisions.md, "Isolation: hardened containers"): the init, git, node, Claude
# Code's TUI and Codex run as uid 0 or 1000 with no capability at all, so none is added back.
CAP_DROP = ("ALL",)
# The 20.10 engine takes the bare name (a ":true" suffix is its older, deprecated spelling).
SECURITY_OPT = ("no-new-privileges",)
# Measured on the 20.10 engine: with inter-container traffic off, a container on the network
# still reaches the host's address on it (the gateway, the egress proxy) but not its
# neighbours, so one session cannot talk to another's container directly.
NO_ICC = {"com.docker.network.bridge.enable_icc": "false"}


def check_network(spec: ContainerSpec) -> None:
    """Refuse a network mode that would share a namespace the session must not reach."""
    mode = spec.network_mode
    if mode == "host" and not spec.allow_host_network:
        raise NetworkRefused(
            "network_mode \"host\" puts the session on the host's loopback, where corral's "
            "API answers; set docker.allow_host_network = true to allow it",
            details={"network_mode": mode},
        )
    if mode.startswith("container:"):
        # Another container's namespace may be no session's (and its limits are not ours).
        raise NetworkRefused(
            f"network_mode {mode!r} shares another container's network; use a network name",
            details={"network_mode": mode},
        )


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The Engine API body for creating ``spec``'s container (not started).

    Raises :class:`NetworkRefused` for a network the spec may not have.
    """
    check_network(spec)
    host_config: dict[str, Any] = {
        # An init reaps the agent's orphaned children and forwards stop signals to it.
        "Init": True,
        # A prompt-injected agent is the threat: no capability (root in the container is then
        # just a uid), and no setuid binary or file capability can give one back.
        "CapDrop": list(CAP_DROP),
        "SecurityOpt": list(SECURITY_OPT),
        # Mounts, not Binds: a missing source is an error instead of a new root-owned dir.
        "Mounts": [
            {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
            for m in spec.mounts
        ],
        "NetworkMode": spec.network_mode,
        # The reconciler restarts sessions itself, with back-off and a record of why.
        "RestartPolicy": {"Name": "no"},
    }
    if spec.cpu_limit is not None:
        host_config["NanoCpus"] = round(spec.cpu_limit * 1_000_000_000)
    if spec.memory_limit is not None:
        host_config["Memory"] = spec.memory_limit
    if spec.pids_limit is not None:
        host_config["PidsLimit"] = spec.pids_limit
    config: dict[str, Any] = {
        "Image": spec.image,
        "WorkingDir": spec.working_dir,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": labels_for(spec),
        # A TTY with stdin kept open lets the console attach, detach and reattach any time.
        "Tty": True,
        "OpenStdin": True,
        "StdinOnce": False,
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "HostConfig": host_config,
    }
    if spec.user is not None:
        config["User"] = spec.user
    if spec.command is not None:
        config["Cmd"] = list(spec.command)
    return config


def _state(status: str) -> ContainerState:
    try:
        return ContainerState(status)
    except ValueError:
        # A status newer than this code: report it as beyond repair rather than running.
        log.warning("unknown_container_status", status=status)
        return ContainerState.DEAD


def _time(value: object) -> str | None:
    return value if isinstance(value, str) and value and value != _ZERO_TIME else None


def container_info(data: Mapping[str, Any]) -> ContainerInfo:
    """A ContainerInfo from the engine's full inspection (``GET /containers/{id}/json``)."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    labels = dict(config.get("Labels") or {})
    status = _state(str(state.get("Status", "")))
    # The engine reports 0 for a container that never ran; only an ended one has an exit code.
    ended = status in (ContainerState.EXITED, ContainerState.DEAD)
    return ContainerInfo(
        id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        state=status,
        session_id=labels.get(LABEL_SESSION_ID),
        image=str(config.get("Image") or data.get("Image") or ""),
        exit_code=int(state.get("ExitCode", 0)) if ended else None,
        error=state.get("Error") or None,
        restart_count=int(data.get("RestartCount") or 0),
        started_at=_time(state.get("StartedAt")),
        finished_at=_time(state.get("FinishedAt")),
        oom_killed=bool(state.get("OOMKilled")),
        labels=labels,
    )


def container_event(line: bytes) -> ContainerEvent | None:
    """A ContainerEvent from one line of ``/events``; None for anything else."""
    try:
        data = json.loads(line)
    except ValueError:
        log.warning("engine_event_unreadable", line=line[:200])
        return None
    if not isinstance(data, dict) or data.get("Type") != "container":
        return None
    actor = data.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    # The 20.10 engine sends "Action" beside the older "status"; exec events carry
    # their command after a colon ("exec_start: sh").
    action = str(data.get("Action") or data.get("status") or "").split(":", 1)[0]
    container_id = str(actor.get("ID") or data.get("id") or "")
    if not action or not container_id:
        return None
    exit_code = str(attributes.get("exitCode", ""))
    return ContainerEvent(
        action=action,
        container_id=container_id,
        session_id=attributes.get(LABEL_SESSION_ID),
        exit_code=int(exit_code) if exit_code.lstrip("-").isdigit() else None,
    )


def listed_container_info(data: Mapping[str, Any]) -> ContainerInfo:
    """A ContainerInfo from one entry of ``GET /containers/json``, which has no timestamps."""
    labels = dict(data.get("Labels") or {})
    names = data.get("Names") or [""]
    # The list gives the exit code only inside its human status text, "Exited (137) 2 s ago".
    exited = _EXITED_STATUS.match(str(data.get("Status", "")))
    return ContainerInfo(
        id=str(data["Id"]),
        name=str(names[0]).lstrip("/"),
        state=_state(str(data.get("State", ""))),
        session_id=labels.get(LABEL_SESSION_ID),
        image=str(data.get("Image", "")),
        exit_code=int(exited.group(1)) if exited else None,
        labels=labels,
    )


def network_config(name: str, *, internal: bool, isolate: bool) -> dict[str, Any]:
    """The Engine API body for creating a bridge network of corral's."""
    return {
        "Name": name,
        "Driver": "bridge",
        # Engines before API 1.44 make a second network of the same name unless asked not to.
        "CheckDuplicate": True,
        "Internal": internal,
        "Labels": {LABEL_MANAGED: "true"},
        "Options": dict(NO_ICC) if isolate else {},
    }


def network_gateway(data: Mapping[str, Any]) -> str | None:
    """The host's IPv4 address on a network, from its inspection (``GET /networks/{id}``).

    The engine reports it as the IPAM gateway; where that is left empty (the default
    ``docker0`` bridge), the bridge holds the first host address of its subnet.
    """
    for entry in (data.get("IPAM") or {}).get("Config") or []:
        gateway = str(entry.get("Gateway") or "")
        try:
            if gateway and ipaddress.ip_address(gateway).version == 4:
                return gateway
            subnet = ipaddress.ip_network(str(entry.get("Subnet") or ""), strict=False)
        except ValueError:
            continue
        if subnet.version == 4 and subnet.num_addresses > 2:
            return str(next(subnet.hosts()))
    return None


def container_ipv4(data: Mapping[str, Any]) -> str | None:
    """A running container's IPv4 address (its first network that gives one), from its
    inspection; None when it is not running or has none."""
    if not (data.get("State") or {}).get("Running"):
        return None
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    for network in networks.values():
        address = str((network or {}).get("IPAddress") or "")
        if address:
            return address
    return None
