"""A scripted GitHub REST server for the pull request tests: aiohttp on 127.0.0.1.

It keeps pull requests and check runs in memory and speaks the parts of GitHub's API corral
uses: ``POST /repos/{o}/{r}/pulls`` (422 "A pull request already exists" for a head with an
open one), ``GET /repos/{o}/{r}/pulls?head=o:branch``, ``GET /repos/{o}/{r}/pulls/{n}`` and
``GET /repos/{o}/{r}/commits/{sha}/check-runs``, the last two with ETags (``If-None-Match``
on an unchanged answer is a 304). A request without ``Authorization: Bearer <token>`` gets
401; :meth:`GitHubServer.fail_next` makes the next request answer as a test says (a rate
limit, say). Every request is kept in ``requests``, with its status.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "ghp_test_token_0123456789"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class GitHubServer:
    def __init__(self, head_sha: Callable[[str], str] | None = None) -> None:
        self.token = TOKEN
        self.requests: list[Recorded] = []
        self.pulls: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.check_runs: dict[str, list[dict[str, Any]]] = {}
        self.failures: list[Failure] = []
        # The head commit of a branch, as GitHub would know it from the push.
        self.head_sha = head_sha or (lambda branch: "a" * 40)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> GitHubServer:
        app = web.Application()
        app.router.add_post("/repos/{owner}/{repo}/pulls", self._create)
        app.router.add_get("/repos/{owner}/{repo}/pulls", self._list)
        app.router.add_get("/repos/{owner}/{repo}/pulls/{number}", self._get)
        app.router.add_get("/repos/{owner}/{repo}/commits/{sha}/check-runs", self._checks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, status: int, message: str, **headers: str) -> None:
        self.failures.append(Failure(status, {"message": message}, headers))

    def of(self, method: str, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and contains in r.path]

    # --- handlers --------------------------------------------------------------------

    async def _record(self, request: web.Request) -> tuple[Recorded, web.Response | None]:
        raw = await request.read()
        recorded = Recorded(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            json.loads(raw) if raw else None,
        )
        self.requests.append(recorded)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return recorded, self._answer(recorded, 401, {"message": "Bad credentials"})
        if self.failures:
            failure = self.failures.pop(0)
            return recorded, self._answer(recorded, failure.status, failure.body, failure.headers)
        return recorded, None

    @staticmethod
    def _answer(
        recorded: Recorded, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        recorded.status = status
        return web.json_response(body, status=status, headers=headers)

    def _conditional(self, request: web.Request, recorded: Recorded, body: Any) -> web.Response:
        etag = '"' + hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest() + '"'
        if request.headers.get("If-None-Match") == etag:
            recorded.status = 304
            return web.Response(status=304, headers={"ETag": etag})
        return self._answer(recorded, 200, body, {"ETag": etag})

    async def _create(self, request: web.Request) -> web.Response:
        recorded, failed = await self._record(request)
        if failed is not None:
            return failed
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        body = recorded.body
        for (o, r, _), pull in self.pulls.items():
            if (o, r) == (owner, repo) and pull["head"]["ref"] == body["head"] \
                    and pull["state"] == "open":  # fmt: skip
                message = f"A pull request already exists for {owner}:{body['head']}."
                return self._answer(
                    recorded,
                    422,
                    {"message": "Validation Failed",
                     "errors": [{"resource": "PullRequest", "code": "custom",
                                 "message": message}]},
                )  # fmt: skip
        number = len(self.pulls) + 1
        pull = {
            "number": number,
            "html_url": f"https://github.example/{owner}/{repo}/pull/{number}",
            "state": "open",
            "draft": body.get("draft", False),
            "title": body["title"],
            "body": body["body"],
            "head": {"ref": body["head"], "sha": self.head_sha(body["head"])},
            "base": {"ref": body["base"]},
            "merged": False,
            "merged_at": None,
            "updated_at": "2026-01-28T12:30:00Z",
        }
        self.pulls[(owner, repo, number)] = pull
        return self._answer(recorded, 201, pull)

    async def _list(self, request: web.Request) -> web.Response:
        recorded, failed = await self._record(request)
        if failed is not None:
            return failed
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        head = request.query.get("head", "")
        found = [
            p for (o, r, _), p in sorted(self.pulls.items(), key=lambda kv: -kv[0][2])
            if (o, r) == (owner, repo) and f"{owner}:{p['head']['ref']}" == head
        ]  # fmt: skip
        return self._answer(recorded, 200, found)

    async def _get(self, request: web.Request) -> web.Response:
        recorded, failed = await self._record(request)
        if failed is not None:
            return failed
        key = (request.match_info["owner"], request.match_info["repo"],
               int(request.match_info["number"]))  # fmt: skip
        if key not in self.pulls:
            return self._answer(recorded, 404, {"message": "Not Found"})
        return self._conditional(request, recorded, self.pulls[key])

    async def _checks(self, request: web.Request) -> web.Response:
        recorded, failed = await self._record(request)
        if failed is not None:
            return failed
        runs = self.check_runs.get(request.match_info["sha"], [])
        return self._conditional(request, recorded, {"total_count": len(runs), "check_runs": runs})
