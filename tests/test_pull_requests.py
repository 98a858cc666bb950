"""A session's pull request against a scripted GitHub (tests/github_server.py), reached
through ``[github] api_url``; the branch is pushed to a real bare remote on disk."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.core.github import github_token, parse_remote
from daemon.keys import HUB, MANAGER, PULL_REQUESTS, TASKS
from daemon.settings import Settings
from daemon.supervise.pull_requests import PullRequestWatcher
from tests.conftest import Daemon, create_running
from tests.github_server import TOKEN, GitHubServer
from tests.model_server import FAKE_API_KEY, ModelServer, Text


def git(cwd: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
async def github(tmp_path: Path) -> AsyncIterator[GitHubServer]:
    remote = tmp_path / "remote.git"

    def head_sha(branch: str) -> str:
        return git(remote, "rev-parse", f"refs/heads/{branch}")

    async with GitHubServer(head_sha) as server:
        yield server


@pytest.fixture
def pr_settings(settings: Settings, github: GitHubServer) -> Settings:
    settings.github.api_url = github.url
    settings.github.token = TOKEN  # type: ignore[assignment]
    return settings


async def pr_session(
    daemon: Daemon, settings: Settings, git_repo: Path, tmp_path: Path
) -> tuple[Any, dict[str, Any], Path]:
    """A local session on a repository whose origin is a GitHub URL and whose push URL is
    a bare remote on disk; the session's branch has one commit."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(git_repo, "remote", "add", "origin", "git@github.com:acme/widgets.git")
    git(git_repo, "config", "remote.origin.pushurl", str(remote))
    git(git_repo, "push", "-q", "origin", "main")
    client = await daemon(settings)
    session = await create_running(client, git_repo, backend="local", name="feature")
    worktree = Path(session["worktree_path"])
    (worktree / "feature.txt").write_text("new\n")
    git(worktree, "add", "feature.txt")
    git(worktree, "commit", "-q", "-m", "Add the feature file")
    return client, session, remote


async def post_pr(client: Any, session_id: str, status: int, **body: Any) -> Any:
    response = await client.post(f"/api/sessions/{session_id}/pull-request", json=body)
    answer = await response.json()
    assert response.status == status, answer
    return answer


async def test_create_pushes_first_then_opens_and_get_shows_it_with_checks(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    client, session, remote = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    head = git(session["worktree_path"], "rev-parse", "HEAD")
    github.check_runs[head] = [
        {"status": "completed", "conclusion": "success"},
        {"status": "in_progress", "conclusion": None},
    ]
    pull = await post_pr(client, session["id"], 201, draft=True)
    # Pushed first: the branch is on the remote.
    assert git(remote, "rev-parse", "refs/heads/corral/feature") == head
    (created,) = github.of("POST", "/pulls")
    assert created.path == "/repos/acme/widgets/pulls"
    assert created.headers["Authorization"] == f"Bearer {TOKEN}"
    assert created.headers["Accept"] == "application/vnd.github+json"
    assert created.body["head"] == "corral/feature"
    assert created.body["base"] == "main"
    assert created.body["draft"] is True
    assert created.body["title"] == "feature"
    assert "- Add the feature file" in created.body["body"]
    assert pull["number"] == 1
    assert pull["state"] == "open"
    assert pull["draft"] is True
    assert pull["head"] == "corral/feature"
    assert pull["url"] == "https://github.example/acme/widgets/pull/1"
    assert pull["checks"] == {"state": "pending", "total": 2, "passed": 1, "failed": 0,
                              "pending": 1}  # fmt: skip

    response = await client.get(f"/api/sessions/{session['id']}/pull-request")
    assert response.status == 200
    assert await response.json() == pull


async def test_title_and_body_given_are_sent(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    await post_pr(client, session["id"], 201, title="Add it", body="Because.", base="main")
    (created,) = github.of("POST", "/pulls")
    assert (created.body["title"], created.body["body"]) == ("Add it", "Because.")


async def test_a_refused_token_is_502(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    github.token = "another-token"
    client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    answer = await post_pr(client, session["id"], 502)
    assert answer["error"]["code"] == "BACKEND_ERROR"
    assert answer["error"]["message"] == "GitHub refused the token"
    assert answer["error"]["details"]["status"] == 401
    assert TOKEN not in str(answer)


async def test_an_existing_pull_request_is_fetched_and_returned(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    first = await post_pr(client, session["id"], 201)
    again = await post_pr(client, session["id"], 200)
    assert again["number"] == first["number"]
    assert [r.status for r in github.of("POST", "/pulls")] == [201, 422]
    (listed,) = github.of("GET", "/pulls")[:1]
    assert listed.query["head"] == "acme:corral/feature"


async def test_a_rate_limit_is_503_with_retry_after(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    reset = int(time.time()) + 120
    github.fail_next(
        403,
        "API rate limit exceeded for user.",
        **{"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    response = await client.post(f"/api/sessions/{session['id']}/pull-request", json={})
    answer = await response.json()
    assert response.status == 503, answer
    assert answer["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert 100 <= int(response.headers["Retry-After"]) <= 121
    # A 403 that is no rate limit is GitHub refusing: 502.
    github.fail_next(403, "Resource not accessible by integration")
    answer = await post_pr(client, session["id"], 502)
    assert "Resource not accessible" in answer["error"]["message"]


async def test_refresh_is_conditional_and_publishes_changes(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    head = git(session["worktree_path"], "rev-parse", "HEAD")
    github.check_runs[head] = [{"status": "in_progress", "conclusion": None}]
    await post_pr(client, session["id"], 201)
    app = client.app
    events: list[dict[str, Any]] = []
    app[HUB].listen(lambda e: events.append(e) if e["type"] == "pull_request" else None)
    watcher = PullRequestWatcher(app[MANAGER], store=app[PULL_REQUESTS], hub=app[HUB],
                                 tasks=app[TASKS])  # fmt: skip

    assert await watcher.refresh_all() == 0  # the first GET has no ETag yet; nothing changed
    github.requests.clear()
    assert await watcher.refresh_all() == 0
    assert [r.status for r in github.requests] == [304, 304]
    assert all("If-None-Match" in r.headers for r in github.requests)
    assert events == []

    pull = github.pulls[("acme", "widgets", 1)]
    pull.update(state="closed", merged=True, merged_at="2026-01-29T00:00:00Z")
    github.check_runs[head] = [{"status": "completed", "conclusion": "failure"}]
    assert await watcher.refresh_all() == 1
    (event,) = events
    assert event["session_id"] == session["id"]
    assert event["pull_request"]["state"] == "merged"
    assert event["pull_request"]["checks"]["state"] == "failure"
    shown = await (await client.get(f"/api/sessions/{session['id']}/pull-request")).json()
    assert shown == event["pull_request"]
    # A merged pull request is not asked about again.
    github.requests.clear()
    assert await watcher.refresh_all() == 0
    assert github.requests == []


async def test_bad_input(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
    sid = session["id"]
    response = await client.get(f"/api/sessions/{sid}/pull-request")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "NOT_FOUND"
    unknown = "00000000-0000-0000-0000-000000000000"
    for method in ("GET", "POST"):
        response = await client.request(method, f"/api/sessions/{unknown}/pull-request")
        assert (await response.json())["error"]["code"] == "SESSION_NOT_FOUND"
    response = await client.get(f"/api/sessions/{sid}/pull-request?repository=nope")
    assert response.status == 400
    response = await client.get(f"/api/sessions/{sid}/pull-request?other=1")
    assert response.status == 400
    for body in ({"repository": "nope"}, {"remote": "nope"}, {"remote": "-x"},
                 {"title": ""}, {"title": "x" * 300}, {"draft": "maybe"}):  # fmt: skip
        answer = await post_pr(client, sid, 400, **body)
        assert answer["error"]["code"] == "INVALID_REQUEST", body
    # A remote that is no GitHub repository.
    git(git_repo, "remote", "add", "disk", str(tmp_path / "remote.git"))
    answer = await post_pr(client, sid, 400, remote="disk")
    assert "GitHub" in answer["error"]["message"]
    # generate needs the metadata model.
    answer = await post_pr(client, sid, 409, generate=True)
    assert "ai_metadata" in answer["error"]["message"]
    assert github.of("POST") == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/acme/widgets.git", ("acme", "widgets")),
        ("https://github.com/acme/widgets", ("acme", "widgets")),
        ("git@github.com:acme/widgets.git", ("acme", "widgets")),
        ("ssh://git@ssh.github.com:443/acme/widgets.git", ("acme", "widgets")),
    ],
)
def test_parse_remote(url: str, expected: tuple[str, str]) -> None:
    assert parse_remote(url, "https://api.github.com") == expected


def test_parse_remote_refuses_other_hosts_unless_enterprise() -> None:
    from daemon.core.errors import InvalidRequest

    for url in ("https://gitlab.com/acme/widgets.git", "/srv/git/widgets.git", "widgets",
                "https://github.com/acme"):  # fmt: skip
        with pytest.raises(InvalidRequest):
            parse_remote(url, "https://api.github.com")
    assert parse_remote("git@ghe.corp:team/app.git", "https://ghe.corp/api/v3") == ("team", "app")


async def test_token_sources(settings: Settings, tmp_path: Path, monkeypatch: Any) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert await github_token(settings, {}) is None  # no gh: no token
    gh = bin_dir / "gh"
    gh.write_text("#!/bin/sh\n[ \"$1 $2\" = 'auth token' ] && echo gho_from_gh\n")
    gh.chmod(0o755)
    assert await github_token(settings, {}) == "gho_from_gh"
    assert await github_token(settings, {"GITHUB_TOKEN": "env_token"}) == "env_token"
    settings.github.token = "configured"  # type: ignore[assignment]
    assert await github_token(settings, {"GITHUB_TOKEN": "env_token"}) == "configured"


async def test_generate_has_the_metadata_model_write_title_and_body(
    daemon: Daemon, pr_settings: Settings, github: GitHubServer, git_repo: Path, tmp_path: Path
) -> None:
    async with ModelServer(side_request=lambda body: False) as model:
        pr_settings.metadata.ai_metadata = True
        pr_settings.metadata.base_url = model.url
        pr_settings.metadata.api_key = FAKE_API_KEY  # type: ignore[assignment]
        client, session, _ = await pr_session(daemon, pr_settings, git_repo, tmp_path)
        model.script(Text(json.dumps({"title": "Add  the feature", "body": "It adds a file."})))
        await post_pr(client, session["id"], 201, generate=True)
        (created,) = github.of("POST", "/pulls")
        assert (created.body["title"], created.body["body"]) == ("Add the feature",
                                                                 "It adds a file.")  # fmt: skip
        (asked,) = model.requests
        assert "Add the feature file" in json.dumps(asked)  # the commit subjects went along
