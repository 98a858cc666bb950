"""``corral serve`` with timing wrappers around the create path (diagnostics only).

    python bench/_traced_daemon.py TRACE.jsonl serve --host 127.0.0.1 --port N ...

Wraps git calls, engine calls, store writes, event publishing and the manager's create
steps; each call is written to TRACE.jsonl as {"s": session name, "op", "t0", "dt"} with
times from time.perf_counter() (CLOCK_MONOTONIC, comparable across processes on Linux).
Also records event-loop lag (a 1 ms ticker's overshoot) as op "loop_lag" when above 2 ms.
Nothing in the daemon is changed on disk; the wrappers exist only in this process.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import subprocess
import sys
import time
from typing import Any

from aiohttp import web

from backends.docker import DockerBackend
from daemon import cli
from daemon.core import git, validate
from daemon.core.actions import Lifecycle
from daemon.core.hub import EventHub
from daemon.core.manager import SessionManager
from daemon.core.store import Store
from daemon.core.validate import Names

SESSION: contextvars.ContextVar[str] = contextvars.ContextVar("bench_session", default="-")
_out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - lives as long as the process


def _record(op: str, t0: float, dt: float, session: str | None = None) -> None:
    _out.write(json.dumps({"s": session or SESSION.get(), "op": op, "t0": t0, "dt": dt}) + "\n")


def _wrap(owner: Any, attr: str, label: Any) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _record(label(args) if callable(label) else label, t0, time.perf_counter() - t0)

    setattr(owner, attr, timed)


_wrap(git, "run", lambda a: "git " + " ".join(a[0][:2]))

# The synchronous part of starting a subprocess (fork/exec, waiting for the exec to succeed)
# runs on the event loop: time it to see how long each git call blocks the loop.
_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]


def _timed_execute_child(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return _execute_child(self, *args, **kwargs)
    finally:
        _record("popen (blocks the loop)", t0, time.perf_counter() - t0)


subprocess.Popen._execute_child = _timed_execute_child  # type: ignore[attr-defined]
for _name in ("info", "create", "start", "list_managed", "remove", "inspect"):
    _wrap(DockerBackend, _name, f"docker.{_name}")
for _name in ("write", "begin_operation", "end_operation", "insert_events", "insert_session"):
    _wrap(Store, _name, f"store.{_name}")
_wrap(EventHub, "publish", lambda a: f"hub.publish {a[1]}")
# The create path's steps, labelled by their names from when they were all the manager's
# (bench/trace_create.py reads these labels).
_wrap(SessionManager, "_run_create", "manager._run_create")
for _name in ("ensure_worktrees", "launch", "mark_running", "remove_containers"):
    _wrap(Lifecycle, _name, f"manager._{_name}")
_wrap(validate, "resolve_repositories", "manager._resolve_repositories")
_wrap(Names, "check_free", "manager._check_name_free")

_create = SessionManager.create


async def _traced_create(self: SessionManager, request: Any) -> Any:
    SESSION.set(request.name or "-")  # the spawned create task copies this context
    t0 = time.perf_counter()
    try:
        return await _create(self, request)
    finally:
        _record("manager.create (POST)", t0, time.perf_counter() - t0)


SessionManager.create = _traced_create  # type: ignore[method-assign]


async def _lag_ticker(app: web.Application) -> Any:
    async def tick() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            late = time.perf_counter() - t0 - 0.001
            if late > 0.002:
                _record("loop_lag", t0, late, "-")

    task = asyncio.create_task(tick())
    yield
    task.cancel()


from daemon import app as _app_module  # noqa: E402

_original_factory = _app_module.create_app


def _factory(*args: Any, **kwargs: Any) -> web.Application:
    application = _original_factory(*args, **kwargs)
    application.cleanup_ctx.append(_lag_ticker)
    return application


_app_module.create_app = _factory

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[2:]))
