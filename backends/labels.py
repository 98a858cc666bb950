"""Names and labels of sessions' containers, the same for every backend.

The reconciler finds corral's containers by label, never by name alone (DESIGN.md, "Docker
backend"), and reads a local handle as it reads a Docker container. So the names, the
labels a container carries and the filter that finds one daemon's containers are made here
once: the Docker engine applies the filter on its side, the local backend in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from backends.base import LABEL_DAEMON_INSTANCE, LABEL_MANAGED, LABEL_SESSION_ID, ContainerSpec

CONTAINER_NAME_PREFIX = "corral-"


def container_name(session_name: str) -> str:
    """The container's name: ``corral-<session name>`` (a local handle reads alike)."""
    return f"{CONTAINER_NAME_PREFIX}{session_name}"


def labels_for(spec: ContainerSpec) -> dict[str, str]:
    """The labels that make ``spec``'s container corral's, its session's and its daemon's."""
    return {
        LABEL_MANAGED: "true",
        LABEL_SESSION_ID: spec.session_id,
        LABEL_DAEMON_INSTANCE: spec.daemon_instance,
    }


def managed_filter(instance: str | None = None) -> list[str]:
    """The ``key=value`` label filter for corral's containers, given ``instance`` only that
    daemon's: the Engine API's own filter form."""
    filters = [f"{LABEL_MANAGED}=true"]
    if instance is not None:
        filters.append(f"{LABEL_DAEMON_INSTANCE}={instance}")
    return filters


def matches(labels: Mapping[str, str], label_filter: Sequence[str]) -> bool:
    """Whether ``labels`` has every ``key=value`` of ``label_filter``, as the engine decides."""
    for entry in label_filter:
        key, _, value = entry.partition("=")
        if labels.get(key) != value:
            return False
    return True
