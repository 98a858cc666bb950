"""The ``corral`` command: ``corral serve`` starts the daemon; ``corral attach`` joins a
session; ``corral doctor`` checks what the daemon's main job needs, each with its fix;
``corral login`` gives the daemon an agent's credential; ``corral ls``, ``show``, ``diff``,
``merge``, ``push`` and ``pr`` review and land sessions' work through the daemon's API."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from client import attach, land, login, sessions_cli
from daemon import __version__
from daemon.auth.service import derive_rp_id
from daemon.core.readiness import system_status
from daemon.core.system_models import WARNING_CHECKS, SystemStatus
from daemon.http.middlewares import is_loopback
from daemon.log import configure_logging
from daemon.settings import Settings, SettingsError, load_settings, warn_unknown_variables

log = structlog.get_logger(__name__)

URL_PATTERN = re.compile(r"https?://[^\s,]+")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description=__doc__)
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 3030)")
    serve.add_argument("--config", type=Path, help="config.toml (default ~/.config/corral/)")
    serve.add_argument("--data-dir", type=Path, help="data folder (default ~/.local/share/corral)")
    serve.add_argument(
        "--allow-remote-without-auth",
        action="store_true",
        default=None,
        help="DANGEROUS: allow a non-loopback bind with authentication off",
    )
    attach.add_arguments(
        commands.add_parser("attach", help="connect this terminal to a session's console")
    )
    login.add_arguments(
        commands.add_parser("login", help="give the daemon Claude's or Codex's credential")
    )
    sessions_cli.add_parsers(commands)  # ls, show
    land.add_parsers(commands)  # diff, merge, push, pr
    doctor = commands.add_parser(
        "doctor", help="check the engine, agent image, keys, data dir and git, with fixes"
    )
    doctor.add_argument("--config", type=Path, help="config.toml (default ~/.config/corral/)")
    doctor.add_argument("--data-dir", type=Path, help="data folder (default ~/.local/share/corral)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server: dict[str, Any] = {}
    if getattr(args, "host", None) is not None:
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if getattr(args, "allow_remote_without_auth", None):
        server["allow_remote_without_auth"] = True
    out: dict[str, Any] = {"server": server} if server else {}
    if args.data_dir is not None:
        out["data_dir"] = str(args.data_dir)
    return out


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback bind unless auth is on or the operator overrides it, loudly."""
    if settings.auth.mode == "webauthn":
        derive_rp_id(settings)  # a bind to a bare IP address needs auth.rp_id: fail now
        return
    if is_loopback(settings.server.host):
        return
    if not settings.server.allow_remote_without_auth:
        raise SettingsError(
            f"refusing to bind {settings.server.host}: corral would be open to other hosts "
            'without authentication; bind 127.0.0.1, turn on auth.mode = "webauthn", or '
            "pass --allow-remote-without-auth"
        )
    log.warning(
        "remote_bind_without_auth",
        host=settings.server.host,
        warning="ANYONE WHO CAN REACH THIS ADDRESS CAN RUN CODE AS YOU",
    )


def warn_host_network(settings: Settings) -> None:
    """Say once at start, loudly, that sessions may share the host's network."""
    if settings.docker.allow_host_network and settings.docker.network_mode == "host":
        log.warning(
            "host_network_allowed",
            warning="SESSIONS SHARE THE HOST'S NETWORK: THEY CAN REACH EVERY LOCAL SERVICE",
        )


def serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, overrides=_overrides(args))
    except SettingsError as exc:
        configure_logging()
        log.error("bad_configuration", error=str(exc))
        return 2
    secrets = [
        getattr(getattr(settings, section), name).get_secret_value()
        for section, names in Settings.secret_fields().items()
        for name in names
    ]
    configure_logging(settings.logging.level, settings.logging.format, secrets)
    warn_unknown_variables()
    try:
        check_bind(settings)
    except SettingsError as exc:
        log.error("refusing_to_start", error=str(exc))
        return 2
    warn_host_network(settings)
    from daemon.app import create_app  # imported late: argument errors stay fast

    app = create_app(settings)

    def listening(banner: str) -> None:
        # aiohttp's start-up banner names each bound site with its real port (port = 0).
        urls = URL_PATTERN.findall(banner)
        log.info("listening", urls=urls, data_dir=str(settings.data_dir), version=__version__)

    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        shutdown_timeout=settings.server.shutdown_timeout,
        # aiohttp's keep-alive timer runs from the connection's start until a complete
        # request arrives (and again between requests), and is not reset by bytes that
        # do not finish one: so it bounds how long a client may take to send its headers.
        keepalive_timeout=settings.server.header_timeout,
        print=listening,
        access_log=None,
        handle_signals=True,
    )
    log.info("stopped")
    return 0


async def _doctor_status(settings: Settings) -> SystemStatus:
    from backends.docker import DockerBackend  # imported late: argument errors stay fast

    engine = DockerBackend(settings.docker.url or None, api_timeout=settings.docker.api_timeout)
    try:
        return await system_status(settings, engine)
    finally:
        await engine.close()


def doctor(args: argparse.Namespace) -> int:
    """Print every readiness check with its fix; 1 when one fails (credentials only warn)."""
    configure_logging("error")
    try:
        settings = load_settings(args.config, overrides=_overrides(args))
    except SettingsError as exc:
        print(f"✗ configuration: {exc}")
        return 2
    status = asyncio.run(_doctor_status(settings))
    width = max(len(check.name) for check in status.checks)
    for check in status.checks:
        mark = "✓" if check.ok else "!" if check.name in WARNING_CHECKS else "✗"
        print(f"{mark} {check.name:<{width}}  {check.summary}")
        if check.fix:
            print(f"  {'':<{width}}  fix: {check.fix}")
    failing = [c.name for c in status.checks if not c.ok and c.name not in WARNING_CHECKS]
    if failing:
        print(f"not ready: {', '.join(failing)} (fix each, then run corral doctor again)")
        return 1
    print("ready: sessions can be created (! lines are warnings)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "doctor":
        return doctor(args)
    if args.command == "attach":
        return attach.run(args)
    if args.command == "login":
        return login.run(args)
    handler = getattr(args, "handler", None)
    if handler is not None:  # the session commands (client/sessions_cli.py, client/land.py)
        return int(handler(args))
    return 2  # unreachable: argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
