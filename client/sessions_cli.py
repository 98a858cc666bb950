"""``corral ls`` and ``corral show``, and what every session command shares: the daemon's
address (``--url``, else ``CORRAL_URL``), its token (``CORRAL_TOKEN``), one clear line on
stderr for any error, and finding a session by id, unique id prefix or name.

Exit statuses of the session commands: 0 done; 1 the daemon refused or failed, a merge
was refused, or the daemon could not be reached; 2 no such session, or a prefix that names
several.

Everything printed to a terminal that a session could have written (names, branches,
paths, the remote's words) goes through :func:`clean` first: a session's container is
hostile, and control characters in a branch name must not drive the user's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp
from yarl import URL

DEFAULT_URL = "http://127.0.0.1:3030"
EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND = 0, 1, 2
CONNECT_TIMEOUT = 10.0
# The daemon computes diffs and talks to remotes and GitHub before it answers.
READ_TIMEOUT = 300.0
MAX_JSON_BYTES = 64 * 1024 * 1024  # a paged diff's answer is far smaller; a bound all the same
LIST_PAGE = 1000  # the most GET /api/sessions gives at once
MAX_PAGES = 50
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# C0 controls but tab and newline, DEL, and the C1 controls (ESC's 8-bit forms).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CliError(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ApiRefusal(CliError):
    """The daemon answered with its error body: ``code`` and ``details`` kept for callers."""

    def __init__(self, http_status: int, code: str, message: str, details: Any) -> None:
        super().__init__(message, EXIT_NOT_FOUND if code == "SESSION_NOT_FOUND" else EXIT_FAILED)
        self.http_status = http_status
        self.code = code
        self.details = details


def clean(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters (and newlines, unless kept) shown as ``^X`` or
    ``\\xNN``, never sent to the terminal as they are."""

    def show(match: re.Match[str]) -> str:
        char = ord(match.group())
        return f"^{chr(char ^ 0x40)}" if char < 0x20 or char == 0x7F else f"\\x{char:02x}"

    return (_CONTROL if keep_newlines else _CONTROL_OR_NEWLINE).sub(show, str(text))


def default_url() -> str:
    return os.environ.get("CORRAL_URL", "").strip() or DEFAULT_URL


def add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help=f"daemon URL (default $CORRAL_URL, else {DEFAULT_URL})"
    )


def _unauthorized() -> str:
    if os.environ.get("CORRAL_TOKEN", "").strip():
        return "the daemon refused the API token in CORRAL_TOKEN (401): revoked or mistyped?"
    return "the daemon requires authentication (401): set CORRAL_TOKEN to an API token"


class Api:
    """The daemon's REST API for one command: one connection pool, errors as :class:`CliError`."""

    def __init__(self, url: str | None) -> None:
        self.url = (url or default_url()).rstrip("/")
        base = URL(self.url)
        if base.scheme not in ("http", "https") or not base.host:
            raise CliError(f"daemon URL {self.url!r} must look like {DEFAULT_URL}")
        self.base = base
        token = os.environ.get("CORRAL_TOKEN", "").strip()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        # trust_env stays off: a proxy from the environment must not see a loopback daemon.
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            ),
            headers=self.headers,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    def path(self, *segments: str) -> URL:
        # Each segment one opaque path part: a "/" or ".." in a name reaches no other route.
        encoded = "/".join(quote(s, safe="").replace(".", "%2E") for s in segments)
        return URL(f"{self.url}/{encoded}", encoded=True)

    def _unreachable(self, exc: BaseException) -> NoReturn:
        raise CliError(
            f"cannot reach the daemon at {self.url} ({type(exc).__name__}): "
            "is corral serve running?"
        ) from exc

    async def _refusal(self, response: aiohttp.ClientResponse) -> NoReturn:
        if response.status == 401:
            raise CliError(_unauthorized())
        raw = await response.content.read(MAX_JSON_BYTES)
        try:
            error = json.loads(raw)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            raise CliError(
                f"the daemon answered {response.status} without a corral error: "
                "is --url a corral daemon?"
            ) from None
        if code == "NOT_FOUND" and response.status == 404:
            message += " (is the daemon older than this client?)"
        raise ApiRefusal(response.status, code, clean(message), error.get("details"))

    async def call(
        self,
        method: str,
        url: URL,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """The JSON answer of one request; an error answer raises :class:`ApiRefusal`."""
        assert self.http is not None
        try:
            async with self.http.request(
                method, url.update_query(query or {}), json=body
            ) as response:
                if response.status >= 400:
                    await self._refusal(response)
                if response.status == 204:
                    return None
                raw = await response.content.read(MAX_JSON_BYTES + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
        if len(raw) > MAX_JSON_BYTES:
            raise CliError(f"the daemon's answer is over {MAX_JSON_BYTES} bytes; not read")
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError("the daemon's answer is not JSON: is --url a corral daemon?") from None

    async def stream(
        self, url: URL, query: Mapping[str, str], sink: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """A text answer (a patch) handed to ``sink`` chunk by chunk as it arrives."""
        assert self.http is not None
        try:
            async with self.http.get(url.update_query(query)) as response:
                if response.status >= 400:
                    await self._refusal(response)
                async for chunk in response.content.iter_chunked(64 * 1024):
                    await sink(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._unreachable(exc)

    async def sessions(self, *, include_archived: bool) -> dict[str, Any]:
        """Every session (page by page), in the list's own shape."""
        found: list[dict[str, Any]] = []
        total = 0
        for page in range(MAX_PAGES):
            answer = await self.call(
                "GET",
                self.path("api", "sessions"),
                query={
                    "include_archived": "true" if include_archived else "false",
                    "limit": str(LIST_PAGE),
                    "offset": str(page * LIST_PAGE),
                },
            )
            batch, total = list(answer["sessions"]), int(answer["total"])
            found += batch
            if not batch or len(found) >= total:
                break
        return {"sessions": found, "total": total}

    async def resolve(self, wanted: str) -> dict[str, Any]:
        """The session ``wanted`` names: its id, a unique prefix of its id, or its name."""
        if UUID.match(wanted):
            answer = await self.call("GET", self.path("api", "sessions", wanted))
            return dict(answer["session"])
        sessions = (await self.sessions(include_archived=True))["sessions"]
        for session in sessions:
            if session["name"] == wanted:
                return dict(session)
        matches = [s for s in sessions if wanted and str(s["id"]).startswith(wanted.lower())]
        if len(matches) == 1:
            return dict(matches[0])
        if not matches:
            raise CliError(f"no session has the id, id prefix or name {clean(wanted)!r}", 2)
        names = ", ".join(f"{s['id'][:8]} ({clean(s['name'])})" for s in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise CliError(
            f"{clean(wanted)!r} is the start of {len(matches)} sessions' ids: {names}{more}; "
            "give more of the id, or the name",
            EXIT_NOT_FOUND,
        )


def run_command(work: Callable[[Api], Awaitable[int]], url: str | None) -> int:
    """Run ``work`` against the daemon: any failure is one line on stderr, never a traceback."""

    async def go() -> int:
        async with Api(url) as api:
            return await work(api)

    try:
        return asyncio.run(go())
    except CliError as exc:
        print(f"corral: {exc.message}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``corral ls | head``): nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a malformed answer must still be one line, not a traceback
        print(f"corral: unexpected error: {type(exc).__name__}: {clean(exc)}", file=sys.stderr)
        return EXIT_FAILED


# --- ls and show ------------------------------------------------------------------------


def age(created_at: str, now: datetime | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``12d`` since ``created_at``."""
    try:
        then = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cost(session: Mapping[str, Any]) -> str:
    return f"${float(session.get('cost_usd') or 0):.2f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def print_json(value: object) -> None:
    # Not cleaned: JSON escapes every control character itself (ensure_ascii).
    print(json.dumps(value, indent=2, sort_keys=False))


async def ls(api: Api, args: argparse.Namespace) -> int:
    answer = await api.sessions(include_archived=args.all)
    if args.json:
        print_json(answer)
        return EXIT_OK
    if not answer["sessions"]:
        print("no sessions" + ("" if args.all else " (--all shows archived ones)"))
        return EXIT_OK
    rows = [["ID", "NAME", "STATUS", "HEALTH", "AGENT", "BRANCH", "COST", "AGE"]]
    for s in answer["sessions"]:
        status = str(s["status"]) + (" (archived)" if s.get("archived") else "")
        cells = [s["id"][:8], s["name"], status, s["health"], s["agent"], s["branch_name"]]
        rows.append([clean(c) for c in cells] + [cost(s), age(str(s["created_at"]))])
    print(table(rows))
    return EXIT_OK


async def optional(api: Api, url: URL, query: Mapping[str, str] | None = None) -> Any:
    """An extra that may be missing (no PR yet, an older daemon, a diff that failed): None
    then, since the session itself is what ``show`` must show."""
    try:
        return await api.call("GET", url, query=query)
    except ApiRefusal:
        return None


def _pull_requests(answer: Any) -> list[dict[str, Any]]:
    if isinstance(answer, dict) and isinstance(answer.get("pull_requests"), list):
        return [p for p in answer["pull_requests"] if isinstance(p, dict)]
    if isinstance(answer, dict) and isinstance(answer.get("pull_request"), dict):
        return [answer["pull_request"]]
    return [answer] if isinstance(answer, dict) and "number" in answer else []


def describe_pr(pr: Mapping[str, Any]) -> str:
    checks = pr.get("checks") or {}
    verdict = f", checks {checks['state']}" if checks.get("state") not in (None, "none") else ""
    draft = " draft" if pr.get("draft") else ""
    return clean(f"#{pr.get('number')} {pr.get('state')}{draft}{verdict}: {pr.get('url')}")


async def show(api: Api, args: argparse.Namespace) -> int:
    found = await api.resolve(args.session)
    sid = str(found["id"])
    session = dict((await api.call("GET", api.path("api", "sessions", sid)))["session"])
    session.pop("chat_history", None)  # the conversation is the UI's and the console's
    prs = _pull_requests(await optional(api, api.path("api", "sessions", sid, "pull-request")))
    diff = await optional(api, api.path("api", "sessions", sid, "diff"))
    totals = diff.get("totals") if isinstance(diff, dict) else None
    if args.json:
        print_json({"session": session, "pull_requests": prs, "diff_totals": totals})
        return EXIT_OK
    lines = [
        ("id", session["id"]),
        ("name", session["name"]),
        ("description", session.get("description") or "-"),
        ("status", session["status"] + (" (archived)" if session.get("archived") else "")),
        ("health", session["health"]),
        ("agent", f"{session['agent']} ({session.get('agent_state', 'unknown')})"),
        ("model", session.get("model") or "default"),
        ("backend", session["backend"]),
        ("branch", f"{session['branch_name']} (from {session['base_branch']})"),
        ("usage", f"{cost(session)}, {int(session.get('total_tokens') or 0):,} tokens"),
        ("created", f"{session['created_at']} ({age(str(session['created_at']))} ago)"),
    ]
    if session.get("error_message"):
        lines.append(("error", session["error_message"]))
    if totals:
        lines.append(
            (
                "changes",
                f"{totals['files']} file{'s' if totals['files'] != 1 else ''}, "
                f"+{totals['additions']} -{totals['deletions']}",
            )
        )
    for pr in prs:
        lines.append(("pull request", describe_pr(pr)))
    for repo in session.get("repositories", []):
        mark = "*" if repo.get("is_primary") else " "
        lines.append(
            (
                f"repo {mark}{repo['mount_name']}",
                f"{repo['path']} @ {repo['branch_name']} (worktree {repo['worktree_path']})",
            )
        )
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {clean(value)}")
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser("ls", help="list sessions")
    listing.add_argument("--all", action="store_true", help="archived sessions too")
    listing.add_argument("--json", action="store_true", help="the API's answer as JSON")
    add_connection(listing)
    listing.set_defaults(handler=lambda a: run_command(lambda api: ls(api, a), a.url))
    one = commands.add_parser("show", help="one session in detail")
    one.add_argument("session", help="id, unique id prefix, or name")
    one.add_argument("--json", action="store_true", help="as JSON")
    add_connection(one)
    one.set_defaults(handler=lambda a: run_command(lambda api: show(api, a), a.url))
