"""The daemon for the crash tests: ``python -m tests.crash_daemon serve …`` is ``corral serve``
with a journal hook installed that makes the daemon SIGKILL itself at one step.

``CORRALTEST_KILL_AT=<kind>:<step>`` (say ``create:container`` or ``delete:end``) names the
step: the kill comes right after the operations journal records it, that is after the step
is durable and before its side effect; ``<kind>:end`` fires after the last side effect,
before the operation is marked done. The hook lives here, not in the daemon: production
code only checks that no hook is installed (``daemon/core/faults.py``).
"""

from __future__ import annotations

import os
import signal
import sys

import structlog
from aiohttp import web

from backends.base import Backend
from daemon import app as app_module
from daemon import cli
from daemon.keys import STORE
from daemon.settings import Settings

ENV = "CORRALTEST_KILL_AT"

log = structlog.get_logger(__name__)


class KillAt:
    """A journal hook that SIGKILLs this process once ``target`` (``kind:step``) is stored."""

    def __init__(self, target: str) -> None:
        self.target = target

    def journal_step(self, kind: str, step: str) -> None:
        if self.target == f"{kind}:{step}":
            log.warning("fault_injected_kill", kind=kind, step=step)
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    target = os.environ.get(ENV, "")
    create_app = app_module.create_app

    def armed_app(
        settings: Settings, backends: dict[str, Backend] | None = None
    ) -> web.Application:
        app = create_app(settings, backends)

        async def arm(app: web.Application) -> None:
            # After the lifetime's start-up (on_startup runs in order): the store is open,
            # and no client has been served yet.
            app[STORE].journal_hook = KillAt(target)

        app.on_startup.append(arm)
        return app

    app_module.create_app = armed_app  # the CLI imports it when it serves
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
