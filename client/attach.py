"""``corral attach``: connect this terminal to a session's console (PROTOCOL.md, "/ws/console").

:func:`attach` is the terminal around a :class:`~client.bridge.Bridge`: raw mode,
``SIGWINCH``, signals, stdout that may be a slow pipe, and the user-facing notices on
stderr. When stdin is not a TTY it leaves termios alone and sends no sizes: a plain byte
bridge for scripts. Its exit statuses are listed in ``client/protocol.py``. End of input on
a piped stdin stops input only: output is shown until the session ends or a signal ends
the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from client.bridge import FLUSH_TIMEOUT, Bridge
from client.protocol import EXIT_FAILED, Outcome, console_url
from client.terminal import RESET_MODES, AltScreen, FdWriter, RawTerminal, TrackingWriter

DEFAULT_URL = "http://127.0.0.1:3030"
DEFAULT_DETACH_KEY = "ctrl-\\"

# Keys that would detach on Enter, Tab, Backspace or the first byte of every arrow key.
_UNSAFE_KEYS = {"m": "Enter", "j": "Enter", "i": "Tab", "h": "Backspace", "[": "Escape"}


def parse_detach_key(spec: str) -> bytes | None:
    """``ctrl-\\``, ``ctrl-]``, ``ctrl-q``, ``^Q`` ... as the byte the terminal sends; ``none``."""
    text = spec.strip().lower()
    if text == "none":
        return None
    for prefix in ("ctrl-", "ctrl+", "c-", "^"):
        if text.startswith(prefix) and len(text) == len(prefix) + 1:
            char = text[-1]
            break
    else:
        raise ValueError(f"detach key {spec!r}: use ctrl-<key> (like ctrl-\\ or ctrl-q) or none")
    if char in _UNSAFE_KEYS:
        raise ValueError(f"detach key {spec!r} is the same byte as {_UNSAFE_KEYS[char]}")
    code = ord(char.upper())
    if not 0x40 <= code <= 0x5F:
        raise ValueError(f"detach key {spec!r}: ctrl- takes a letter or one of @ \\ ] ^ _")
    return bytes([code ^ 0x40])


def _stderr(message: str, *, raw: bool = False) -> None:
    # Raw mode turns off the terminal's \n to \r\n; stderr may share stdout's O_NONBLOCK.
    with contextlib.suppress(OSError):
        sys.stderr.write(f"corral: {message}" + ("\r\n" if raw else "\n"))
        sys.stderr.flush()


def _key_name(spec: str) -> str:
    return "none" if spec.strip().lower() == "none" else "Ctrl-" + spec.strip()[-1].upper()


async def attach(
    session_id: str,
    *,
    url: str = DEFAULT_URL,
    detach_key: str = DEFAULT_DETACH_KEY,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
) -> int:
    """Attach this process's terminal to ``session_id``; the client's exit status."""
    try:
        key = parse_detach_key(detach_key)
        target = console_url(url, session_id)
    except ValueError as exc:
        _stderr(str(exc))
        return EXIT_FAILED
    loop = asyncio.get_running_loop()
    interactive = os.isatty(stdin_fd)
    terminal = RawTerminal(stdin_fd) if interactive else None
    screen = AltScreen()
    output = TrackingWriter(stdout_fd, screen) if interactive else FdWriter(stdout_fd)

    def connected() -> None:
        if terminal is not None:
            terminal.enter()
            hint = "" if key is None else f"; {_key_name(detach_key)} detaches"
            _stderr(f"attached to {session_id}{hint}", raw=True)

    bridge = Bridge(
        target,
        input_fd=stdin_fd,
        output=output,
        size=terminal.size if terminal is not None else None,
        detach_key=key,
        notice=lambda message: _stderr(message, raw=terminal is not None),
        on_connected=connected,
    )

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        bridge.stop(Outcome(128 + signum, "signal", f"{name}: detached; the session keeps running"))

    def on_continue() -> None:
        if terminal is not None:
            terminal.reenter()
            bridge.window_changed()

    handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    if terminal is not None:
        loop.add_signal_handler(signal.SIGWINCH, bridge.window_changed)
        loop.add_signal_handler(signal.SIGCONT, on_continue)
        handled += [signal.SIGWINCH, signal.SIGCONT]
    try:
        outcome = await bridge.run()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        if terminal is not None and os.isatty(stdout_fd):
            with contextlib.suppress(OSError):
                output.write(RESET_MODES + (b"\x1b[?1049l" if screen.active else b""))
                await asyncio.wait_for(output.wait_below(0), FLUSH_TIMEOUT)
        output.close()
        if terminal is not None:
            terminal.restore()
    _stderr(outcome.message)
    return outcome.status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session_id", help="the session to attach to")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"daemon URL (default {DEFAULT_URL})")
    parser.add_argument(
        "--detach-key",
        default=DEFAULT_DETACH_KEY,
        help="key that detaches without stopping the agent: ctrl-<key> or none "
        f"(default {DEFAULT_DETACH_KEY})",
    )


def run(args: argparse.Namespace) -> int:
    """``corral attach`` with parsed arguments."""
    return asyncio.run(attach(args.session_id, url=args.url, detach_key=args.detach_key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.attach", description="Attach this terminal to a corral session."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
