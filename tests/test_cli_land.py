"""``corral ls``, ``show``, ``diff``, ``merge``, ``push`` and ``pr`` run as subprocesses.

``ls`` and ``show`` talk to a real in-process daemon with local-backend sessions; the
landing commands talk to a scripted aiohttp server on 127.0.0.1 whose answers are built
from the API's own pydantic models (daemon/core/changes_models.py), so the client is held
to the contract the daemon's handlers are written against.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from client.diffview import colour_patch, stat_lines
from daemon.core.changes_models import (
    AskAgentResult,
    Checks,
    DiffTotals,
    FileChange,
    MergeResult,
    PullRequest,
    PushResult,
    RepoDiff,
    SessionDiff,
)
from daemon.core.models import Session
from tests.conftest import ROOT, create_running

pytestmark = pytest.mark.timeout(60)

ESC = "\x1b"
GREEN_PLUS = f"{ESC}[32m+"
PATCH = (
    "diff --git a/app.py b/app.py\n"
    "index 1111111..2222222 100644\n"
    "--- a/app.py\n"
    "+++ b/app.py\n"
    "@@ -1,3 +1,3 @@ def main():\n"
    " keep\n"
    "--- a removed line that looks like a header\n"
    f"+print('{ESC}]0;owned{ESC}\\\\')\n"
)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_URL", "CORRAL_TOKEN")}
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


async def corral(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    """``corral args`` as a subprocess with piped output: status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.cli",
        *args,
        cwd=ROOT,
        env=env or cli_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("corral: "), err
    return lines[0]


# --- ls and show against the real daemon ------------------------------------------------


async def test_ls_and_show_against_the_daemon(client: Any, git_repo: Path) -> None:
    first = await create_running(client, git_repo, backend="local", name="alpha-one")
    second = await create_running(client, git_repo, backend="local", name="beta-two")
    url = str(client.make_url("")).rstrip("/")

    status, out, err = await corral("ls", "--url", url)
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "HEALTH", "AGENT", "BRANCH", "COST", "AGE"]
    assert {row.split()[1] for row in rows} == {"alpha-one", "beta-two"}
    assert first["id"][:8] in out
    assert first["branch_name"] in out
    assert "$0.00" in out

    # CORRAL_URL stands in for --url; --json is the API's own answer.
    status, out, err = await corral("ls", "--json", env=cli_env(CORRAL_URL=url))
    assert status == 0, err
    listed = json.loads(out)
    assert listed["total"] == 2
    assert {s["id"] for s in listed["sessions"]} == {first["id"], second["id"]}

    wanted = (first["id"], first["id"][:8], "alpha-one")
    shown_all = await asyncio.gather(*(corral("show", w, "--url", url) for w in wanted))
    for (status, out, err), which in zip(shown_all, wanted, strict=True):
        assert status == 0, (which, err)
        assert first["id"] in out
        assert "alpha-one" in out
        assert f"{first['branch_name']} (from main)" in out
        assert str(git_repo) in out

    status, out, err = await corral("show", "beta-two", "--json", "--url", url)
    assert status == 0, err
    shown = json.loads(out)
    assert shown["session"]["id"] == second["id"]
    assert "chat_history" not in shown["session"]

    status, out, err = await corral("show", "no-such-name", "--url", url)
    assert status == 2
    assert "no-such-name" in one_line_error(err)
    status, out, err = await corral("show", "00000000-0000-4000-8000-000000000000", "--url", url)
    assert status == 2
    assert "not found" in one_line_error(err)

    # Archived sessions are listed with --all only.
    archived = await client.post(f"/api/sessions/{second['id']}/archive")
    assert archived.status == 200, await archived.text()
    status, out, _ = await corral("ls", "--url", url)
    assert "beta-two" not in out
    status, out, _ = await corral("ls", "--all", "--url", url)
    assert "beta-two" in out
    assert "(archived)" in out


async def test_diff_and_merge_against_the_daemon(client: Any, git_repo: Path, git: Any) -> None:
    session = await create_running(client, git_repo, backend="local", name="lander")
    url = str(client.make_url("")).rstrip("/")
    worktree = Path(session["worktree_path"])
    (worktree / "app.py").write_text("print('hi')\n")
    git(worktree, "add", "app.py")
    git(worktree, "commit", "-q", "-m", "add app")
    (worktree / "notes.txt").write_text("not committed\n")

    status, out, err = await corral("diff", "lander", "--url", url)
    assert status == 0, err
    assert "+++ b/app.py\n" in out
    assert "+not committed\n" in out
    assert ESC not in out
    status, out, err = await corral("diff", "lander", "--stat", "--include=committed", "--url", url)
    assert status == 0, err
    assert out.splitlines() == [" app.py | 1 +", " 1 file changed, 1 insertion(+), 0 deletions(-)"]

    # Uncommitted work is named and kept: refused, exit 1, nothing moved.
    main_before = git(git_repo, "rev-parse", "main")
    status, out, err = await corral("merge", "lander", "--url", url)
    assert status == 1, err
    assert "merge refused (merge): the session has uncommitted changes" in out
    assert "notes.txt" in out
    assert git(git_repo, "rev-parse", "main") == main_before

    status, out, err = await corral("merge", "lander", "--commit-uncommitted", "--url", url)
    assert status == 0, (out, err)
    assert f"merged {session['branch_name']} into main (merge): {main_before[:12]} -> " in out
    assert "refs/corral/backup/" in out
    assert git(git_repo, "show", "main:app.py") == "print('hi')"
    assert (git_repo / "notes.txt").read_text() == "not committed\n"  # the checkout followed

    # A conflict: both sides change README.md; the dry run lists it, exit 1.
    (worktree / "README.md").write_text("session's words\n")
    git(worktree, "commit", "-q", "-am", "session edit")
    (git_repo / "README.md").write_text("user's words\n")
    git(git_repo, "commit", "-q", "-am", "user edit")
    status, out, err = await corral("merge", "lander", "--dry-run", "--url", url)
    assert status == 1, err
    assert "conflicting files:\n  README.md\n" in out


async def test_unreachable_daemon_is_one_line() -> None:
    commands = (["ls"], ["show", "x"], ["diff", "x"], ["merge", "x"], ["push", "x"], ["pr", "x"])
    answers = await asyncio.gather(*(corral(*c, "--url", "http://127.0.0.1:9") for c in commands))
    for status, _, err in answers:
        assert status == 1
        assert "cannot reach the daemon at http://127.0.0.1:9" in one_line_error(err)
    status, _, err = await corral("ls", env=cli_env(CORRAL_URL="ftp://nowhere"))
    assert status == 1
    assert "must look like" in one_line_error(err)


# --- the landing commands against a scripted daemon -------------------------------------

SID_A = "abc12345-0000-4000-8000-000000000001"
SID_B = "abc12399-0000-4000-8000-000000000002"


def session_body(sid: str, name: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return Session.model_validate(
        {
            "id": sid,
            "name": name,
            "backend": "local",
            "agent": "claude",
            "status": "running",
            "repositories": [
                {
                    "path": "/repo",
                    "mount_name": "repo",
                    "worktree_path": f"/wt/{name}",
                    "branch_name": f"corral/{name}",
                    "base_branch": "main",
                    "is_primary": True,
                }
            ],
            "prompt": "do it",
            "created_at": now,
            "updated_at": now,
            "repo_path": "/repo",
            "worktree_path": f"/wt/{name}",
            "branch_name": f"corral/{name}",
            "base_branch": "main",
            "health": "healthy",
            "cost_usd": 1.5,
        }
    ).model_dump(mode="json")


def error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


def merge_result(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mount_name": "repo",
        "strategy": "merge",
        "target_branch": "main",
        "dry_run": False,
        "clean": True,
        "target_before": "a" * 40,
        "kept": "Your branch and main's old commit (in the backup ref) are kept.",
    }
    return MergeResult.model_validate({**base, **fields}).model_dump(mode="json")


def diff_page(offset: int) -> dict[str, Any]:
    """Three files, served two per page."""
    files = [
        FileChange(path="app.py", status="modified", additions=3, deletions=1),
        FileChange(path="new.py", old_path="old.py", status="renamed", additions=1),
        FileChange(path="logo.png", status="added", binary=True),
    ]
    repo = RepoDiff(
        mount_name="repo",
        repo_path="/repo",
        branch="corral/alpha",
        base_branch="main",
        merge_base="b" * 40,
        head_commit="c" * 40,
        includes_uncommitted=True,
        totals=DiffTotals(files=3, additions=4, deletions=1),
        files=files[offset : offset + 2],
        next_offset=offset + 2 if offset + 2 < len(files) else None,
    )
    return SessionDiff(
        session_id=SID_A, include="all", totals=repo.totals, repositories=[repo]
    ).model_dump(mode="json")


class Scripted:
    """The daemon's landing routes, answering from the models; requests are recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.sessions = {SID_A: session_body(SID_A, "alpha"), SID_B: session_body(SID_B, "beta")}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.query), body))
        parts = request.path.strip("/").split("/")
        if parts[0] != "api":
            return web.Response(
                status=502, text="<html>bad gateway</html>", content_type="text/html"
            )
        if parts == ["api", "sessions"]:
            sessions = list(self.sessions.values())
            return web.json_response({"sessions": sessions, "total": len(sessions)})
        if len(parts) < 3 or parts[2] not in self.sessions:
            return error(404, "SESSION_NOT_FOUND", f"Session with ID '{parts[-1]}' not found")
        action = parts[3] if len(parts) > 3 else ""
        if action == "diff":
            return self.diff(request)
        if action == "merge" and parts[4:] == ["ask-agent"]:
            return web.json_response(
                AskAgentResult(
                    sent=True,
                    message=f"Rebase onto {body['target_branch']} and resolve app.py",
                    conflicts=["app.py"],
                ).model_dump(mode="json")
            )
        if action == "merge":
            return self.merge(body)
        if action == "push":
            if body.get("remote") == "nowhere":
                return error(500, "BACKEND_ERROR", "remote 'nowhere' is not configured")
            return web.json_response(
                PushResult(
                    mount_name="repo",
                    remote=body.get("remote", "origin"),
                    branch="corral/alpha",
                    commit="d" * 40,
                    output=f"To /remote.git\n * [new branch] corral/alpha {ESC}[2J",
                ).model_dump(mode="json")
            )
        if action == "pull-request":
            if body and body.get("title") == "taken":
                return error(409, "CONFLICT", "a pull request for corral/alpha already exists")
            return web.json_response(
                PullRequest(
                    mount_name="repo",
                    number=7,
                    url="https://github.example/o/r/pull/7",
                    state="open",
                    draft=bool(body and body.get("draft")),
                    title=(body or {}).get("title") or "Alpha",
                    head="corral/alpha",
                    base="main",
                    checks=Checks(state="success", total=2, passed=2),
                ).model_dump(mode="json")
            )
        if action == "":
            return web.json_response({"session": self.sessions[parts[2]]})
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    def diff(self, request: web.Request) -> web.Response:
        if request.query.get("include", "all") not in ("all", "committed", "uncommitted"):
            return error(400, "INVALID_REQUEST", "include must be all, committed or uncommitted")
        if request.query.get("format") == "patch":
            return web.Response(text=PATCH, content_type="text/x-diff")
        return web.json_response(diff_page(int(request.query.get("offset", "0"))))

    def merge(self, body: dict[str, Any]) -> web.Response:
        if body.get("target_branch") == "conflicted":
            refused = merge_result(
                target_branch="conflicted",
                dry_run=body["dry_run"],
                clean=False,
                refusal="conflicts",
                conflicts=["app.py", "docs/guide.md"],
                kept="Nothing was changed: corral/alpha and conflicted are as they were.",
            )
            return error(409, "CONFLICT", "the merge would conflict", refused)
        if body.get("target_branch") == "gone":
            return error(409, "CONFLICT", "session is being deleted")
        if body["dry_run"]:
            return web.json_response(merge_result(dry_run=True, strategy=body["strategy"]))
        return web.json_response(
            merge_result(
                strategy=body["strategy"],
                target_after="e" * 40,
                backup_ref="refs/corral/backup/main/1",
                updated_checkout="/repo",
            )
        )


@pytest.fixture
async def scripted(aiohttp_server: Any) -> tuple[Scripted, str]:
    fake = Scripted()
    server = await aiohttp_server(fake.app(), host="127.0.0.1")
    return fake, str(server.make_url("")).rstrip("/")


async def test_prefix_resolution_and_ambiguity(scripted: tuple[Scripted, str]) -> None:
    fake, url = scripted
    status, out, err = await corral("show", "abc12399", "--url", url)
    assert status == 0, err
    assert "beta" in out
    assert "$1.50" in out
    status, _, err = await corral("show", "abc123", "--url", url)
    assert status == 2
    line = one_line_error(err)
    assert "start of 2 sessions" in line
    assert "abc12345 (alpha)" in line
    assert "abc12399 (beta)" in line
    fake.requests.clear()
    status, _, err = await corral("diff", "abc123", "--url", url)
    assert status == 2
    assert not any(path.endswith("/diff") for _, path, _, _ in fake.requests)


async def test_diff_piped_is_the_patch_untouched_and_never_paged(
    scripted: tuple[Scripted, str], tmp_path: Path
) -> None:
    fake, url = scripted
    marker = tmp_path / "paged"
    pager = f"{sys.executable} -c \"open('{marker}', 'w').write('x')\""
    status, out, err = await corral("diff", "alpha", "--url", url, env=cli_env(PAGER=pager))
    assert status == 0, err
    assert out == PATCH  # no colour, no escaping: it applies as it is
    assert not marker.exists()
    assert fake.requests[-1][2] == {"include": "all", "format": "patch"}

    status, out, err = await corral(
        "diff", "alpha", "app.py", "--include", "committed", "--repository", "repo",
        "--color=always", "--url", url, env=cli_env(PAGER=pager),
    )  # fmt: skip
    assert status == 0, err
    assert fake.requests[-1][2] == {
        "include": "committed",
        "repository": "repo",
        "format": "patch",
        "path": "app.py",
    }
    assert f"{ESC}[1mdiff --git a/app.py b/app.py" in out
    assert f"{ESC}[36m@@ -1,3 +1,3 @@{ESC}[m def main():" in out
    assert f"{ESC}[31m--- a removed line" in out
    assert GREEN_PLUS in out
    # The file's own escape sequence is shown, never sent to the terminal.
    assert "^[]0;owned^[\\" in out
    assert f"{ESC}]0;owned" not in out
    assert not marker.exists()


async def test_diff_on_a_terminal_goes_through_the_pager_in_colour(
    scripted: tuple[Scripted, str], tmp_path: Path
) -> None:
    _, url = scripted
    paged = tmp_path / "paged"
    pager = (
        f"{sys.executable} -c \"import sys; open('{paged}', 'wb').write(sys.stdin.buffer.read())\""
    )
    main, child = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "diff", "alpha", "--url", url,
            cwd=ROOT, env=cli_env(PAGER=pager, TERM="xterm"),
            stdin=asyncio.subprocess.DEVNULL, stdout=child, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(child)
        os.close(main)
    assert proc.returncode == 0, err
    text = paged.read_bytes().decode()
    assert GREEN_PLUS in text
    assert "^[]0;owned" in text


async def test_diff_stat_and_name_only_read_every_page(scripted: tuple[Scripted, str]) -> None:
    fake, url = scripted
    status, out, err = await corral("diff", "alpha", "--stat", "--url", url)
    assert status == 0, err
    assert out.splitlines() == [
        " app.py           | 4 +++-",
        " old.py => new.py | 1 +",
        " logo.png         | Bin",
        " 3 files changed, 4 insertions(+), 1 deletion(-)",
    ]
    assert fake.requests[-1][2] == {"include": "all", "repository": "repo", "offset": "2"}
    status, out, err = await corral("diff", "alpha", "--name-only", "--url", url)
    assert status == 0, err
    assert out.split() == ["app.py", "new.py", "logo.png"]
    status, _, err = await corral("diff", "alpha", "--stat", "--name-only", "--url", url)
    assert status == 2  # argparse: the two shapes exclude each other
    assert "not allowed with" in err


async def test_merge_verdicts(scripted: tuple[Scripted, str]) -> None:
    fake, url = scripted
    status, out, err = await corral("merge", "alpha", "--dry-run", "--squash", "--url", url)
    assert status == 0, err
    assert "corral/alpha merges cleanly into main (squash, dry run); nothing was changed" in out
    assert fake.requests[-1][3] == {
        "strategy": "squash",
        "dry_run": True,
        "commit_uncommitted": False,
    }

    status, out, err = await corral(
        "merge", "alpha", "--ff-only", "--commit-uncommitted", "-m", "land it", "--url", url
    )
    assert status == 0, err
    assert "merged corral/alpha into main (fast-forward): aaaaaaaaaaaa -> eeeeeeeeeeee" in out
    assert "refs/corral/backup/main/1" in out
    assert "updated your checkout of main: /repo" in out
    assert fake.requests[-1][3]["commit_uncommitted"] is True
    assert fake.requests[-1][3]["message"] == "land it"

    # A refusal: the reason, each conflicting file, what was kept; exit 1.
    status, out, err = await corral("merge", "alpha", "--into", "conflicted", "--url", url)
    assert status == 1
    assert err == ""
    assert "merge refused (merge): corral/alpha conflicts with conflicted in 2 files" in out
    assert "  app.py\n  docs/guide.md\n" in out
    assert "Nothing was changed" in out

    # What keeps it from merging goes to the agent in one call.
    status, out, err = await corral(
        "merge", "alpha", "--ask-agent", "--rebase", "--into", "dev", "--url", url
    )
    assert status == 0, err
    assert fake.requests[-1][1] == f"/api/sessions/{SID_A}/merge/ask-agent"
    assert fake.requests[-1][3] == {"strategy": "rebase", "target_branch": "dev"}
    assert "asked the agent to resolve 1 conflicting files" in out
    assert "  Rebase onto dev and resolve app.py" in out

    # Another 409 is an error line.
    status, out, err = await corral("merge", "alpha", "--into", "gone", "--url", url)
    assert status == 1
    assert "session is being deleted" in one_line_error(err)
    # Bad flags fail before the daemon is asked.
    before = len(fake.requests)
    status, _, err = await corral("merge", "alpha", "-m", "", "--url", url)
    assert status == 1
    assert "message" in one_line_error(err)
    assert len(fake.requests) == before


async def test_push_and_pr(scripted: tuple[Scripted, str]) -> None:
    fake, url = scripted
    status, out, err = await corral("push", "alpha", "--remote", "upstream", "--url", url)
    assert status == 0, err
    assert out.startswith("pushed corral/alpha (dddddddddddd) to upstream\n")
    assert "[new branch] corral/alpha ^[[2J" in out
    assert ESC not in out
    assert fake.requests[-1][3] == {"remote": "upstream", "set_upstream": True}

    status, _, err = await corral("push", "alpha", "--remote", "nowhere", "--url", url)
    assert status == 1
    assert one_line_error(err) == "corral: remote 'nowhere' is not configured"

    status, out, err = await corral(
        "pr", "alpha", "--title", "Add it", "--draft", "--base", "dev", "--url", url
    )
    assert status == 0, err
    assert "pull request #7 (draft): https://github.example/o/r/pull/7" in out
    assert fake.requests[-1][3] == {
        "title": "Add it",
        "draft": True,
        "base": "dev",
        "generate": False,
    }
    status, out, err = await corral("pr", "alpha", "--show", "--url", url)
    assert status == 0, err
    assert "#7 open, checks success: https://github.example/o/r/pull/7" in out

    status, _, err = await corral("pr", "alpha", "--title", "taken", "--url", url)
    assert status == 1
    assert "already exists" in one_line_error(err)


async def test_answers_that_are_not_corral_errors(scripted: tuple[Scripted, str]) -> None:
    _, url = scripted
    # Under /x the scripted server is something else that answers with an HTML 502.
    status, _, err = await corral("diff", "alpha", "--url", url + "/x")
    assert status == 1
    assert "answered 502 without a corral error" in one_line_error(err)
    # show's extras (its PR, its diff's totals) are shown when the daemon has them.
    status, out, err = await corral("show", "alpha", "--url", url)
    assert status == 0, err
    assert "changes       3 files, +4 -1" in out
    assert "#7 open, checks success" in out


def test_colour_patch_tells_headers_from_hunks() -> None:
    coloured = colour_patch(PATCH, colour=True)
    assert f"{ESC}[1m--- a/app.py{ESC}[m" in coloured
    assert f"{ESC}[31m--- a removed line that looks like a header{ESC}[m" in coloured
    plain = colour_patch(PATCH, colour=False)
    assert ESC not in plain
    assert plain.count("\n") == PATCH.count("\n")


def test_stat_graph_scales_and_keeps_small_changes_visible() -> None:
    files = [
        FileChange(path="big", status="modified", additions=500, deletions=500),
        FileChange(path="small", status="modified", additions=1),
    ]
    big, small, summary = stat_lines(files, colour=False)
    assert big == " big   | 1000 " + "+" * 25 + "-" * 25
    assert small == " small |    1 +"
    assert summary == " 2 files changed, 501 insertions(+), 500 deletions(-)"
