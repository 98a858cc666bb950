"""Fault injection for the crash tests: the daemon kills itself at a chosen journal step.

``CORRALTEST_KILL_AT=<kind>:<step>`` (say ``create:container`` or ``delete:end``) makes the
daemon SIGKILL itself right after the operations journal records that step, that is after
the step is durable and before its side effect; ``<kind>:end`` fires after the last side
effect, before the operation is marked done. It is an environment variable, not a setting,
because nobody should find it in a config file; unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

import structlog

ENV = "CORRALTEST_KILL_AT"

log = structlog.get_logger(__name__)


def journal_step(kind: str, step: str) -> None:
    """Called by the journal once ``step`` of a ``kind`` operation is stored."""
    target = os.environ.get(ENV)
    if target and target == f"{kind}:{step}":
        log.warning("fault_injected_kill", kind=kind, step=step)
        os.kill(os.getpid(), signal.SIGKILL)
