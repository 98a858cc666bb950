"""The Changes tab in Chromium: files and counts, a file's highlighted diff, the commits,
the merge verdict before Merge is live, a refusal with its files handed to the agent, push,
the pull request, a line comment arriving as a message, and live re-fetches on
``session_changes``.

The session is a real local-backend one (no agent started) in a real repository, and its
branch really holds the changes the page shows. Where the daemon does not serve a review
route yet, the page's request to it is answered here with a body built from the API's own
pydantic models out of that same repository (real ``git diff``, real ``git merge-tree``), so
the page is held to the contract either way; each route the daemon does serve is left to it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, Route, expect

from daemon.core.changes_models import (
    Checks,
    Commit,
    DiffTotals,
    FileChange,
    MergeResult,
    PullRequest,
    PushResult,
    RepoCommits,
    RepoDiff,
    SessionCommits,
    SessionDiff,
)
from daemon.keys import HUB
from tests import ui_helpers
from tests.conftest import create_running
from tests.test_web_ui import assert_page_clean, open_page
from tests.ui_helpers import PageProblems, UiServer, shot

web_dist = ui_helpers.web_dist
ui_server = ui_helpers.ui_server
ui_browser = ui_helpers.ui_browser
ui_problems = ui_helpers.ui_problems
ui_page = ui_helpers.ui_page
pytestmark = [pytest.mark.browser]

APP_PY = 'def greet(name: str) -> str:\n    return f"hello {name}"\n\n\nCOUNT = 42\n'
MINUS = "\u2212"  # the page writes deletions with a minus sign, as typeset
STATUS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "C": "copied"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class World:
    """The session's real repository and what the page asked of the review routes."""

    sid: str
    repo: Path
    worktree: Path
    branch: str
    base: str
    mount: str
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, session: dict[str, Any], repo: Path) -> World:
        """The world of a session (as the API returned it) on ``repo``, its first mount."""
        primary = session["repositories"][0]
        return cls(
            sid=session["id"],
            repo=repo,
            worktree=Path(primary["worktree_path"]),
            branch=primary["branch_name"],
            base=primary["base_branch"],
            mount=primary["mount_name"],
        )

    def calls(self, method: str, suffix: str) -> list[Any]:
        return [body for m, path, body in self.requests if m == method and path.endswith(suffix)]

    # --- bodies from the models, out of the real repository ----------------------------

    def diff(self, include: str) -> SessionDiff:
        base = git(self.worktree, "merge-base", self.base, "HEAD")
        numstat = git(self.worktree, "diff", "--no-ext-diff", "--numstat", "-z", base, "HEAD")
        statuses = git(self.worktree, "diff", "--no-ext-diff", "--name-status", "-z", base, "HEAD")
        status_of: dict[str, str] = {}
        parts = statuses.split("\0")
        for kind, path in zip(parts[::2], parts[1::2], strict=False):
            status_of[path] = STATUS.get(kind[:1], "modified")
        files = []
        for entry in filter(None, numstat.split("\0")):
            added, deleted, path = entry.split("\t", 2)
            binary = added == "-"
            files.append(
                FileChange(
                    path=path,
                    status=status_of.get(path, "modified"),
                    additions=0 if binary else int(added),
                    deletions=0 if binary else int(deleted),
                    binary=binary,
                )
            )
        totals = DiffTotals(
            files=len(files),
            additions=sum(f.additions for f in files),
            deletions=sum(f.deletions for f in files),
        )
        repo = RepoDiff(
            mount_name=self.mount,
            repo_path=str(self.repo),
            branch=self.branch,
            base_branch=self.base,
            merge_base=base,
            head_commit=git(self.worktree, "rev-parse", "HEAD"),
            includes_uncommitted=include != "committed",
            totals=totals,
            files=files,
        )
        return SessionDiff(
            session_id=self.sid,
            include=include,
            totals=totals,
            repositories=[repo],
        )

    def patch(self, path: str) -> str:
        base = git(self.worktree, "merge-base", self.base, "HEAD")
        return (
            git(self.worktree, "diff", "--no-ext-diff", "--no-textconv", base, "HEAD", "--", path)
            + "\n"
        )

    def commits(self) -> SessionCommits:
        out = git(
            self.worktree,
            "log",
            "-z",
            "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%s%x1f%b",
            f"{self.base}..HEAD",
        )
        commits = []
        for record in filter(None, out.split("\0")):
            sha, name, email, date, subject, body = record.strip("\n").split("\x1f")
            files = git(self.worktree, "show", "--format=", "--name-only", sha).split("\n")
            commits.append(
                Commit(
                    hash=sha,
                    author_name=name,
                    author_email=email,
                    date=datetime.fromisoformat(date),
                    subject=subject,
                    body=body.strip(),
                    files=[f for f in files if f],
                )
            )
        return SessionCommits(
            session_id=self.sid,
            repositories=[
                RepoCommits(
                    mount_name=self.mount,
                    branch=self.branch,
                    base_branch=self.base,
                    commits=commits,
                )
            ],
        )

    def merge(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """What the daemon's merge says, worked out by ``git merge-tree`` (never a worktree)."""
        target = body.get("target_branch") or self.base
        before = git(self.repo, "rev-parse", target)
        out = subprocess.run(
            [
                "git",
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                target,
                self.branch,
            ],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=False,
        )
        conflicts = out.stdout.strip().split("\n")[1:] if out.returncode == 1 else []
        strategy = body.get("strategy", "merge")
        kept = f"Nothing was moved yet; a merge keeps the branch {self.branch} as it is."
        result = MergeResult(
            mount_name=self.mount,
            strategy=strategy,
            target_branch=target,
            dry_run=bool(body.get("dry_run")),
            clean=not conflicts,
            conflicts=conflicts,
            refusal="conflicts" if conflicts else None,
            target_before=before,
            kept=kept,
        )
        if conflicts or body.get("dry_run"):
            return 200, result.model_dump(mode="json")
        result.kept = f"{target} keeps every commit it had, and {self.branch} is untouched."
        result.target_after = "f" * 40
        result.backup_ref = f"refs/corral/backup/{target}/20260101T000000Z"
        return 200, result.model_dump(mode="json")


async def served(server: UiServer, method: str, suffix: str) -> bool:
    """Whether the daemon itself serves ``method`` on a session path ending in ``suffix``."""
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path") or ""
        if route.method == method and path.endswith(suffix):
            return True
    return False


async def mock_routes(page: Page, server: UiServer, world: World) -> None:
    """Answer, from the models, each review route the daemon does not serve yet; spy on
    the message route (the session has no agent to take the message)."""
    sid = world.sid
    base = f"/api/sessions/{sid}"
    pr = PullRequest(
        mount_name=world.mount,
        number=7,
        url="https://github.example/acme/repo/pull/7",
        state="open",
        title="Add the greeting",
        head=world.branch,
        base=world.base,
        checks=Checks(state="pending", total=3, passed=2, pending=1),
    )
    handlers: dict[tuple[str, str], Callable[[dict[str, str], Any], tuple[int, Any]]] = {
        ("GET", "/diff"): lambda q, _b: (
            (200, world.patch(q["path"]))
            if "path" in q
            else (200, world.diff(q.get("include", "all")).model_dump(mode="json"))
        ),
        ("GET", "/commits"): lambda _q, _b: (200, world.commits().model_dump(mode="json")),
        ("POST", "/merge"): lambda _q, b: world.merge(b),
        ("POST", "/merge/ask-agent"): lambda _q, _b: (202, {}),
        ("POST", "/push"): lambda _q, _b: (
            200,
            PushResult(
                mount_name=world.mount,
                remote="origin",
                branch=world.branch,
                commit=git(world.worktree, "rev-parse", "HEAD"),
                output="To ../origin.git\n * [new branch]",
            ).model_dump(mode="json"),
        ),
        ("GET", "/pull-request"): lambda _q, _b: (
            404,
            {"error": {"code": "NOT_FOUND", "message": "No pull request yet"}},
        ),
        ("POST", "/pull-request"): lambda _q, _b: (201, pr.model_dump(mode="json")),
    }
    # The pull request always from here: the scripted GitHub is another test's business.
    live = {
        key
        for key in handlers
        if "/pull-request" not in key[1] and await served(server, key[0], key[1])
    }

    async def handle(route: Route) -> None:
        request = route.request
        url = request.url.split("?", 1)
        path = url[0].split(f"{base}", 1)[1] or "/"
        query = dict(re.findall(r"([^&=]+)=([^&]*)", url[1])) if len(url) > 1 else {}
        query = {k: _unquote(v) for k, v in query.items()}
        body: Any = request.post_data_json if request.method == "POST" else None
        world.requests.append((request.method, path, body))
        if path == "/message" and request.method == "POST":
            world.messages.append(body["content"])
            await route.fulfill(status=202, body="")
            return
        key = (request.method, path)
        if key in live or key not in handlers:
            await route.continue_()
            return
        status, answer = handlers[key](query, body)
        if isinstance(answer, str):
            await route.fulfill(status=status, body=answer, content_type="text/x-diff")
        else:
            await route.fulfill(
                status=status, body=json.dumps(answer), content_type="application/json"
            )

    await page.route(re.compile(rf"/api/sessions/{sid}/"), handle)


def _unquote(value: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(value)


async def make_world(server: UiServer, repo: Path) -> World:
    session = await create_running(server.client, repo, backend="local")
    world = World.of(session, repo)
    # The agent's work, really on the session's branch.
    (world.worktree / "app.py").write_text(APP_PY)
    (world.worktree / "README.md").write_text("hello\nworld\n")
    git(world.worktree, "add", "app.py", "README.md")
    git(world.worktree, "commit", "-q", "-m", "Add the greeting", "-m", "With a count.")
    # A bare remote to push to, in the repository's own config.
    remote = repo.parent / "origin.git"
    git(repo.parent, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    # A release branch that changed README.md the other way: merging there conflicts.
    git(repo, "branch", "release", world.base)
    git(repo, "worktree", "add", "-q", str(repo.parent / "release-wt"), "release")
    (repo.parent / "release-wt" / "README.md").write_text("hello\nrelease\n")
    git(repo.parent / "release-wt", "commit", "-q", "-am", "Release notes")
    return world


async def test_changes_tab_review_merge_comment(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    world = await make_world(ui_server, git_repo)
    await mock_routes(ui_page, ui_server, world)
    await open_page(ui_page, f"/#/s/{world.sid}/changes")
    tab = ui_page.locator(".panel-changes")
    await expect(ui_page.get_by_role("tab", name="Changes")).to_have_attribute(
        "aria-selected", "true"
    )

    # The files with their counts and status.
    await expect(tab.locator(".changes-summary")).to_contain_text("2 files changed")
    await expect(tab.locator(".changes-summary")).to_contain_text(f"+6 {MINUS}0")
    app = tab.locator(".file-link[data-path='app.py']")
    await expect(app.locator(".file-status")).to_have_text("A")
    await expect(app.locator(".counts")).to_have_text(f"+5 {MINUS}0")
    readme = tab.locator(".file-link[data-path='README.md']")
    await expect(readme.locator(".file-status")).to_have_text("M")
    await expect(readme.locator(".counts")).to_have_text(f"+1 {MINUS}0")

    # The commits.
    commit = tab.locator(".commit")
    await expect(commit).to_have_count(1)
    await expect(commit.locator(".commit-subject")).to_have_text("Add the greeting")

    # A file's diff, highlighted; unified, then split.
    await app.click()
    await expect(app).to_have_attribute("aria-current", "true")
    diff = tab.locator(".diff-render")
    await expect(diff.locator(".d2h-file-wrapper")).to_have_count(1)
    await expect(diff.locator(".d2h-code-line-ctn .hljs-keyword").first).to_have_text("def")
    await expect(diff.locator(".d2h-code-line-ctn .hljs-number").first).to_have_text("42")
    assert world.calls("GET", "/diff") or await served(ui_server, "GET", "/diff")
    await tab.get_by_role("button", name="Split").click()
    await expect(diff.locator(".d2h-file-side-diff")).to_have_count(2)
    await expect(diff.locator(".hljs-keyword").first).to_be_visible()
    await tab.get_by_role("button", name="Unified").click()
    await expect(diff.locator(".d2h-file-side-diff")).to_have_count(0)

    # A comment on a line of the diff reaches the agent as a message quoting that code.
    await app.click()
    line = diff.locator("tr", has=ui_page.locator(".d2h-code-line-ctn", has_text="def greet"))
    await line.locator("td.d2h-code-linenumber").click()
    box = tab.locator(".diff-comment")
    await expect(box).to_be_visible()
    await expect(box.locator("h4")).to_have_text("Comment on app.py, line 1")
    await box.get_by_label("Your comment for the agent").fill("Greet in French, please.")
    await box.get_by_role("button", name="Send to agent").click()
    await expect(tab.locator(".comment-note")).to_contain_text("Sent to the agent")
    assert len(world.messages) == 1
    message = world.messages[0]
    assert "Review comment on app.py, line 1 of the diff" in message
    assert "```diff\n+def greet(name: str) -> str:\n```" in message
    assert message.endswith("Greet in French, please.")

    # A selection over several lines: the button quotes them all.
    await ui_page.evaluate(
        """() => {
            const cells = [...document.querySelectorAll('.diff-render .d2h-code-line-ctn')];
            const range = document.createRange();
            range.setStart(cells[0], 0);
            range.setEnd(cells[1], cells[1].childNodes.length);
            const selection = document.getSelection();
            selection.removeAllRanges();
            selection.addRange(range);
        }"""
    )
    await tab.get_by_role("button", name="Comment on selection").click()
    await expect(box.locator("h4")).to_have_text("Comment on app.py, lines 1\u20132")
    await box.get_by_label("Your comment for the agent").fill("Type hints are fine.")
    await box.get_by_role("button", name="Send to agent").click()
    await expect(box).to_be_hidden()
    assert '+def greet(name: str) -> str:\n+    return f"hello {name}"' in world.messages[1]

    # Live: the agent commits again, session_changes arrives, the list is fetched anew.
    (world.worktree / "notes.txt").write_text("one\ntwo\n")
    git(world.worktree, "add", "notes.txt")
    git(world.worktree, "commit", "-q", "-m", "Notes")
    await ui_server.app[HUB].publish(
        "session_changes",
        world.sid,
        totals=DiffTotals(files=3, additions=8).model_dump(),
        heads={world.mount: git(world.worktree, "rev-parse", "HEAD")},
    )
    await expect(tab.locator(".file-link[data-path='notes.txt'] .counts")).to_have_text(
        f"+2 {MINUS}0"
    )
    await expect(tab.locator(".commit")).to_have_count(2)
    await expect(tab.locator(".changes-summary")).to_contain_text("3 files changed")
    # The branch moved: the verdict shown before no longer stands.
    await expect(tab.locator(".changes-error")).to_have_count(0)
    # Merge is not live before the dry run's verdict; the verdict says what it keeps.
    merge = tab.get_by_role("button", name="Merge", exact=True)
    await expect(merge).to_be_disabled()
    await expect(tab.locator(".merge-verdict")).to_contain_text("Check the merge first")
    await tab.get_by_role("button", name="Check merge").click()
    verdict = tab.locator(".verdict")
    await expect(verdict).to_have_attribute("data-verdict", "clean")
    await expect(verdict).to_contain_text(f"Merges cleanly into {world.base}")
    await expect(verdict.locator(".keeps")).to_contain_text(world.branch)
    await expect(merge).to_be_enabled()
    assert world.calls("POST", "/merge")[-1]["dry_run"] is True
    # The screenshot for the README (copied to docs/screenshots/ by hand when the tab
    # changes; a test never writes into the checkout): files, diff and verdict at once.
    await ui_page.set_viewport_size({"width": 1280, "height": 1100})
    await tab.evaluate("(panel) => { panel.scrollTop = 0; }")
    await app.click()
    await expect(diff.locator(".hljs-keyword").first).to_be_visible()
    await shot(ui_page, "changes")
    await ui_page.set_viewport_size(ui_helpers.DESKTOP)  # type: ignore[arg-type]
    # The branch moves (session_changes): the verdict no longer stands.
    await ui_server.app[HUB].publish(
        "session_changes",
        world.sid,
        totals=DiffTotals(files=3, additions=8).model_dump(),
        heads={world.mount: git(world.worktree, "rev-parse", "HEAD")},
    )
    await expect(tab.locator(".merge-verdict")).to_contain_text("The branch changed")
    await expect(merge).to_be_disabled()

    # Another target: the verdict no longer stands, Merge is off until checked again.
    target = tab.get_by_label("Target branch")
    await target.fill("release")
    await expect(merge).to_be_disabled()
    await tab.get_by_role("button", name="Check merge").click()
    await expect(verdict).to_have_attribute("data-verdict", "conflicts")
    await expect(verdict).to_contain_text("conflicts with release")
    await expect(verdict.locator(".conflict-files li")).to_have_text(["README.md"])
    await expect(verdict.locator(".keeps")).to_have_text(re.compile(r"✓ \S"))
    await expect(merge).to_be_disabled()
    await verdict.get_by_role("button", name="Ask the agent to resolve").click()
    await expect(tab.locator(".merge-verdict .asked")).to_contain_text("rebase onto release")
    assert world.calls("POST", "/merge/ask-agent") == [
        {"strategy": "merge", "repository": world.mount, "target_branch": "release"}
    ]

    # Back to the base branch: checked, then merged; the answer says what was kept.
    await target.fill("")
    await tab.get_by_role("button", name="Check merge").click()
    await expect(merge).to_be_enabled()
    await merge.click()
    await expect(verdict).to_have_attribute("data-verdict", "merged")
    await expect(verdict.locator(".keeps")).to_have_text(re.compile(r"✓ \S"))
    await expect(verdict).to_contain_text("refs/corral/backup/")
    real = world.calls("POST", "/merge")[-1]
    assert real["dry_run"] is False
    assert real["strategy"] == "merge"

    # Push, then the pull request with its checks.
    await tab.get_by_role("button", name="Push").click()
    await expect(tab.locator(".push-result")).to_contain_text(f"Pushed {world.branch} to origin")
    await tab.get_by_label("Pull request title").fill("Add the greeting")
    await tab.get_by_role("button", name="Create pull request").click()
    pr = tab.locator(".pr")
    await expect(pr).to_contain_text("#7")
    await expect(pr).to_contain_text("checks: 2 of 3 passed, 1 pending")
    assert world.calls("POST", "/pull-request")[-1]["title"] == "Add the greeting"
    # The PR as it changes arrives on the events socket.
    await ui_server.app[HUB].publish(
        "pull_request",
        world.sid,
        pull_request=PullRequest(
            mount_name=world.mount,
            number=7,
            url="https://github.example/acme/repo/pull/7",
            state="merged",
            title="Add the greeting",
            head=world.branch,
            base=world.base,
            checks=Checks(state="success", total=3, passed=3),
        ).model_dump(mode="json"),
    )
    await expect(pr).to_have_attribute("data-state", "merged")
    await expect(pr).to_contain_text("checks: 3 of 3 passed")

    await assert_page_clean(ui_page, ui_problems, allow_status=(404,))


async def test_changes_tab_empty_and_errors_stay_in_the_tab(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    session = await create_running(ui_server.client, git_repo, backend="local")
    world = World.of(session, git_repo)
    await mock_routes(ui_page, ui_server, world)
    # No remote to push to: the error stays in the tab, with the daemon's code.
    if not await served(ui_server, "POST", "/push"):
        await ui_page.route(
            re.compile(rf"/api/sessions/{world.sid}/push$"),
            lambda route: route.fulfill(
                status=400,
                content_type="application/json",
                body=json.dumps(
                    {
                        "error": {
                            "code": "INVALID_REQUEST",
                            "message": "the repository has no remote 'origin'",
                        }
                    }
                ),
            ),
        )
    await open_page(ui_page, f"/#/s/{world.sid}/changes")
    tab = ui_page.locator(".panel-changes")
    await expect(tab.locator(".changes-summary")).to_have_text("No changes yet")
    await expect(tab.locator(".changes-empty")).to_contain_text("No changes yet")
    await expect(tab.locator(".changes-commits")).to_contain_text("No commits on the branch yet")

    await tab.get_by_role("button", name="Push").click()
    error = tab.locator(".changes-error")
    await expect(error).to_contain_text("Pushing:")
    await expect(error).to_contain_text("origin")
    await expect(error.locator(".notice-code")).to_have_text("INVALID_REQUEST")
    await ui_page.wait_for_timeout(4500)  # longer than a notice lives: this one stays
    await expect(error).to_have_count(1)
    await error.get_by_role("button", name="Dismiss").click()
    await expect(error).to_have_count(0)
    await assert_page_clean(ui_page, ui_problems, allow_status=(400, 404))


async def test_changes_tab_groups_files_per_repository(
    ui_page: Page, ui_server: UiServer, git_repo: Path, ui_problems: PageProblems
) -> None:
    """A session over two repositories: each repository's files under its own heading."""
    session = await create_running(ui_server.client, git_repo, backend="local")
    sid = session["id"]
    two = SessionDiff(
        session_id=sid,
        include="all",
        totals=DiffTotals(files=2, additions=3, deletions=1),
        repositories=[
            RepoDiff(
                mount_name=mount,
                repo_path=f"/r/{mount}",
                branch="corral/x",
                base_branch="main",
                merge_base="a" * 40,
                head_commit="b" * 40,
                includes_uncommitted=True,
                totals=DiffTotals(files=1, additions=adds, deletions=dels),
                files=[FileChange(path=path, status="modified", additions=adds, deletions=dels)],
            )
            for mount, path, adds, dels in [("api", "server.py", 2, 1), ("web", "app.ts", 1, 0)]
        ],
    )

    async def answer(route: Route) -> None:
        await route.fulfill(status=200, content_type="application/json", body=two.model_dump_json())

    await ui_page.route(re.compile(rf"/api/sessions/{sid}/diff\?include=all$"), answer)
    await ui_page.route(
        re.compile(rf"/api/sessions/{sid}/commits$"),
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body=SessionCommits(session_id=sid, repositories=[]).model_dump_json(),
        ),
    )
    await ui_page.route(
        re.compile(rf"/api/sessions/{sid}/pull-request$"),
        lambda route: route.fulfill(status=200, content_type="application/json", body="[]"),
    )
    await open_page(ui_page, f"/#/s/{sid}/changes")
    tab = ui_page.locator(".panel-changes")
    groups = tab.locator(".repo-files")
    await expect(groups).to_have_count(2)
    await expect(groups.nth(0).locator("h4")).to_contain_text("api")
    await expect(groups.nth(0).locator("h4")).to_contain_text(f"+2 {MINUS}1")
    await expect(groups.nth(1).locator(".file-link")).to_have_attribute("data-path", "app.ts")
    await assert_page_clean(ui_page, ui_problems)
