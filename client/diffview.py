"""``corral diff``: a session's changes printed like ``git diff`` prints them.

The daemon's ``format=patch`` text, coloured on a terminal (or with ``--color=always``),
through ``$PAGER`` (else ``less -FRX``) on a terminal only; ``--stat`` and ``--name-only``
from the diff's JSON, every page of it. The patch is a session's writing, so on its way to
a terminal every control character is made visible: a file's contents must not drive the
user's terminal. Piped without colour its bytes go out untouched, so
``corral diff s > x.patch`` applies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

from client.sessions_cli import EXIT_OK, Api, CliError, add_connection, clean, run_command
from daemon.core.changes_models import FileChange, SessionDiff

MAX_PATCH_BYTES = 256 * 1024 * 1024  # the daemon pages and summarises far below this
MAX_STAT_PAGES = 1000
GRAPH_WIDTH = 50

# git's default colours (color.diff.*): meta bold, frag cyan, old red, new green.
BOLD, CYAN, RED, GREEN, RESET = "\x1b[1m", "\x1b[36m", "\x1b[31m", "\x1b[32m", "\x1b[m"
_META = (
    "diff ", "index ", "--- ", "+++ ", "old mode", "new mode", "new file mode",
    "deleted file mode", "similarity index", "dissimilarity index", "rename from",
    "rename to", "copy from", "copy to", "Binary files",
)  # fmt: skip


def use_colour(choice: str, stream: BinaryIO | Any) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"


def colour_patch(text: str, colour: bool) -> str:
    """``text`` made safe for a terminal, with git's colours when ``colour``."""
    out: list[str] = []
    in_header = False
    for line in clean(text, keep_newlines=True).splitlines(keepends=True):
        body, end = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        if body.startswith("diff "):
            in_header = True
        if not colour:
            out.append(line)
            continue
        if body.startswith("@@"):
            in_header = False
            close = body.find("@@", 2)
            split = close + 2 if close > 0 else len(body)
            out.append(f"{CYAN}{body[:split]}{RESET}{body[split:]}{end}")
        elif in_header and body.startswith(_META):
            out.append(f"{BOLD}{body}{RESET}{end}")
        elif not in_header and body.startswith("+"):
            out.append(f"{GREEN}{body}{RESET}{end}")
        elif not in_header and body.startswith("-"):
            out.append(f"{RED}{body}{RESET}{end}")
        else:
            out.append(line)
    return "".join(out)


def pager_command() -> list[str] | None:
    """``$PAGER`` (none when empty or ``cat``), else ``less -FRX`` as git runs it."""
    configured = os.environ.get("PAGER")
    if configured is None:
        return ["less", "-FRX"]
    words = shlex.split(configured)
    return None if not words or words == ["cat"] else words


def page(data: bytes, *, paged: bool) -> None:
    """``data`` to the pager when ``paged`` and one can be started, else to stdout."""
    command = pager_command() if paged else None
    if command is not None:
        try:
            # The user's own pager, as git runs it; never anything from a session.
            pager = subprocess.Popen(command, stdin=subprocess.PIPE)
        except OSError:
            pager = None
        if pager is not None and pager.stdin is not None:
            # As git does: Ctrl-C belongs to the pager while it runs.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                with contextlib.suppress(BrokenPipeError):  # the user quit the pager early
                    pager.stdin.write(data)
                with contextlib.suppress(BrokenPipeError):
                    pager.stdin.close()
                pager.wait()
            finally:
                signal.signal(signal.SIGINT, previous)
            return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _query(args: argparse.Namespace) -> dict[str, str]:
    query = {"include": args.include}
    if args.repository:
        query["repository"] = args.repository
    return query


async def full_diff(api: Api, sid: str, query: Mapping[str, str]) -> SessionDiff:
    """The diff's JSON with every repository's files, page after page."""
    url = api.path("api", "sessions", sid, "diff")
    diff = SessionDiff.model_validate(await api.call("GET", url, query=query))
    for repo in diff.repositories:
        pages = 0
        while repo.next_offset is not None and pages < MAX_STAT_PAGES:
            more = SessionDiff.model_validate(
                await api.call(
                    "GET",
                    url,
                    query={**query, "repository": repo.mount_name, "offset": str(repo.next_offset)},
                )
            )
            page_of = next((r for r in more.repositories if r.mount_name == repo.mount_name), None)
            if page_of is None or not page_of.files:
                break
            repo.files += page_of.files
            repo.next_offset = page_of.next_offset
            pages += 1
    return diff


def _stat_name(change: FileChange) -> str:
    if change.old_path and change.old_path != change.path:
        return f"{clean(change.old_path)} => {clean(change.path)}"
    return clean(change.path)


def stat_lines(files: list[FileChange], colour: bool) -> list[str]:
    """``git diff --stat``'s lines for ``files``, and its summary line."""
    if not files:
        return []
    names = [_stat_name(f) for f in files]
    width = max(len(n) for n in names)
    most = max((f.additions + f.deletions for f in files), default=0)
    count_width = len(str(most))
    lines = []
    for name, change in zip(names, files, strict=True):
        if change.binary:
            lines.append(f" {name:<{width}} | Bin")
            continue
        total = change.additions + change.deletions
        plus, minus = change.additions, change.deletions
        if most > GRAPH_WIDTH:  # scaled like git: every changed file keeps at least one mark
            plus = max(1, plus * GRAPH_WIDTH // most) if plus else 0
            minus = max(1, minus * GRAPH_WIDTH // most) if minus else 0
        graph = "+" * plus + "-" * minus
        if colour:
            graph = f"{GREEN}{'+' * plus}{RED}{'-' * minus}{RESET}"
        lines.append(f" {name:<{width}} | {total:>{count_width}} {graph}".rstrip())
    added = sum(f.additions for f in files)
    deleted = sum(f.deletions for f in files)
    summary = f" {len(files)} file{'s' if len(files) != 1 else ''} changed"
    summary += f", {added} insertion{'s' if added != 1 else ''}(+)"
    summary += f", {deleted} deletion{'s' if deleted != 1 else ''}(-)"
    return [*lines, summary]


async def diff(api: Api, args: argparse.Namespace) -> int:
    session = await api.resolve(args.session)
    sid = str(session["id"])
    colour = use_colour(args.color, sys.stdout)
    paged = sys.stdout.isatty() and not args.no_pager
    if args.stat or args.name_only:
        whole = await full_diff(api, sid, _query(args))
        out: list[str] = []
        several = len(whole.repositories) > 1
        for repo in whole.repositories:
            if several:
                extra = ", with uncommitted changes" if repo.includes_uncommitted else ""
                out.append(
                    clean(f"{repo.mount_name}: {repo.branch} against {repo.base_branch}{extra}")
                )
            if args.name_only:
                out += [clean(f.path) for f in repo.files]
            else:
                out += stat_lines(repo.files, colour)
        if out:
            page(("\n".join(out) + "\n").encode(), paged=paged)
        return EXIT_OK
    query = {**_query(args), "format": "patch"}
    if args.path:
        query["path"] = args.path
    received = bytearray()

    async def keep(chunk: bytes) -> None:
        received.extend(chunk)
        if len(received) > MAX_PATCH_BYTES:
            raise CliError(f"the patch is over {MAX_PATCH_BYTES} bytes: see --stat, or give a path")

    await api.stream(api.path("api", "sessions", sid, "diff"), query, keep)
    if not received:
        return EXIT_OK
    if colour or sys.stdout.isatty():
        text = colour_patch(received.decode("utf-8", errors="replace"), colour)
        page(text.encode(), paged=paged)
    else:
        page(bytes(received), paged=False)
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("diff", help="a session's changes, like git diff")
    parser.add_argument("session", help="id, unique id prefix, or name")
    parser.add_argument("path", nargs="?", help="only this file's patch")
    parser.add_argument("--include", choices=("all", "committed", "uncommitted"), default="all")
    parser.add_argument("--repository", metavar="MOUNT", help="one repository, by mount name")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--stat", action="store_true", help="files with their line counts")
    shape.add_argument("--name-only", action="store_true", help="the changed files' paths")
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="default auto"
    )
    parser.add_argument("--no-pager", action="store_true", help="never page")
    add_connection(parser)
    parser.set_defaults(handler=lambda a: run_command(lambda api: diff(api, a), a.url))
