"""Bad input: every one gets a clear PROTOCOL error and changes nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData

from backends.docker import DockerBackend
from daemon.app import create_app
from daemon.keys import TASKS
from tests.conftest import create_running, make_repo, wait_for

UNKNOWN = "00000000-0000-4000-8000-000000000000"


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    body = await response.json()
    assert response.status == status, body
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


async def assert_nothing_created(client: Any, settings: Any) -> None:
    listed = await (await client.get("/api/sessions?include_archived=true")).json()
    assert listed == {"sessions": [], "total": 0}
    assert not (settings.data_dir / "worktrees").exists() or not any(
        (settings.data_dir / "worktrees").iterdir()
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "body"),  # neither repo_path nor repositories
        ({"repo_path": "/nonexistent/repo", "prompt": "x"}, "repo_path"),
        ({"repo_path": "relative/path", "prompt": "x"}, "repo_path"),
        ({"repo_path": "{repo}", "prompt": ""}, "prompt"),
        ({"repo_path": "{repo}", "prompt": "   "}, "prompt"),
        ({"repo_path": "{repo}"}, "prompt"),
        ({"repo_path": "{repo}", "prompt": "x", "backend": "kubernetes"}, "backend"),
        ({"repo_path": "{repo}", "prompt": "x", "agent": "gpt"}, "agent"),
        ({"repo_path": "{repo}", "prompt": "x", "name": "Bad Name!"}, "name"),
        ({"repo_path": "{repo}", "prompt": "x", "unknown_field": 1}, "unknown_field"),
        ({"repo_path": "{repo}", "prompt": "x", "base_branch": "nope"}, "base_branch"),
        ({"repo_path": "{repo}", "prompt": "x", "image_paths": ["/nonexistent.png"]},
         "image_paths"),
        ({"repo_path": "{repo}", "repositories": [{"path": "{repo}", "mount_name": "a"}],
          "prompt": "x"}, "body"),
        ({"repositories": [], "prompt": "x"}, "repositories"),
        ({"repositories": [{"path": "{repo}", "mount_name": "Bad/Name"}], "prompt": "x"},
         "repositories.0.mount_name"),
        ({"repositories": [{"path": "{repo}", "mount_name": "a"},
                           {"path": "{other}", "mount_name": "a"}], "prompt": "x"}, "body"),
        ({"repositories": [{"path": "{repo}", "mount_name": f"m{i}"} for i in range(6)],
          "prompt": "x"}, "repositories"),
        ({"repositories": [{"path": "{repo}", "mount_name": "a"},
                           {"path": "{repo}", "mount_name": "b"}], "prompt": "x"},
         "repositories"),
    ],
)  # fmt: skip
async def test_create_refuses_invalid_bodies(
    client: Any, settings: Any, tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    repo = make_repo(tmp_path / "r")
    other = make_repo(tmp_path / "o")

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{repo}", str(repo)).replace("{other}", str(other))
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    error = await error_of(
        await client.post("/api/sessions", json=fill(body)), 400, "INVALID_REQUEST"
    )
    fields = [d["field"] for d in error.get("details", [])]
    assert any(f.startswith(field) for f in fields), error
    await assert_nothing_created(client, settings)


@pytest.mark.parametrize("kind", ["file", "plain_folder"])
async def test_create_refuses_non_repositories(
    client: Any, settings: Any, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / kind
    if kind == "file":
        target.write_text("x")
    else:
        target.mkdir()
    error = await error_of(
        await client.post("/api/sessions", json={"repo_path": str(target), "prompt": "x"}),
        400,
        "INVALID_REQUEST",
    )
    assert str(target) in error["message"] or "directory" in error["message"]
    await assert_nothing_created(client, settings)


@pytest.mark.docker
async def test_name_taken_is_a_conflict(client: Any, git_repo: Path) -> None:
    await create_running(client, git_repo, name="taken")
    error = await error_of(
        await client.post(
            "/api/sessions", json={"repo_path": str(git_repo), "prompt": "x", "name": "taken"}
        ),
        409,
        "CONFLICT",
    )
    assert "taken" in error["message"]
    listed = await (await client.get("/api/sessions")).json()
    assert listed["total"] == 1


async def test_branch_left_by_earlier_session_is_a_conflict(
    client: Any, git_repo: Path, git: Any
) -> None:
    git(git_repo, "branch", "corral/reused")
    error = await error_of(
        await client.post(
            "/api/sessions", json={"repo_path": str(git_repo), "prompt": "x", "name": "reused"}
        ),
        409,
        "CONFLICT",
    )
    assert "corral/reused" in error["message"]


@pytest.mark.docker
async def test_subfolder_of_repository_is_recorded(client: Any, git_repo: Path) -> None:
    (git_repo / "pkg" / "inner").mkdir(parents=True)
    (git_repo / "pkg" / "inner" / "f.txt").write_text("f")
    subprocess.run(["git", "add", "."], cwd=git_repo, check=True)
    subprocess.run(["git", "commit", "-qm", "sub"], cwd=git_repo, check=True)
    response = await client.post(
        "/api/sessions", json={"repo_path": str(git_repo / "pkg" / "inner"), "prompt": "x"}
    )
    assert response.status == 201, await response.text()
    session = (await response.json())["session"]
    assert session["repo_path"] == str(git_repo.resolve())
    assert session["repositories"][0]["subdir"] == "pkg/inner"
    done = await wait_for(client, session["id"], lambda s: s["status"] != "creating")
    assert done["status"] == "running", done


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_unknown_session_id(client: Any, method: str) -> None:
    error = await error_of(
        await client.request(method, f"/api/sessions/{UNKNOWN}"), 404, "SESSION_NOT_FOUND"
    )
    assert UNKNOWN in error["message"]


@pytest.mark.parametrize(
    "action", ["archive", "unarchive", "start", "recreate", "recreate-fresh", "refresh", "cleanup"]
)
async def test_unknown_session_for_actions(client: Any, action: str) -> None:
    await error_of(await client.post(f"/api/sessions/{UNKNOWN}/{action}"), 404, "SESSION_NOT_FOUND")


async def test_unknown_session_for_health_metadata_upload(client: Any) -> None:
    await error_of(await client.get(f"/api/sessions/{UNKNOWN}/health"), 404, "SESSION_NOT_FOUND")
    await error_of(
        await client.patch(f"/api/sessions/{UNKNOWN}/metadata", json={"description": "d"}),
        404,
        "SESSION_NOT_FOUND",
    )
    form = FormData()
    form.add_field("file", b"x", filename="x.txt")
    await error_of(
        await client.post(f"/api/sessions/{UNKNOWN}/upload", data=form), 404, "SESSION_NOT_FOUND"
    )


async def test_unknown_route_and_wrong_method(client: Any) -> None:
    await error_of(await client.get("/api/nothing-here"), 404, "NOT_FOUND")
    await error_of(await client.put("/api/sessions"), 405, "METHOD_NOT_ALLOWED")
    await error_of(await client.delete("/health"), 405, "METHOD_NOT_ALLOWED")


async def test_malformed_json_and_non_object(client: Any, settings: Any) -> None:
    error = await error_of(
        await client.post("/api/sessions", data=b"{not json"), 400, "INVALID_REQUEST"
    )
    assert "malformed JSON" in error["message"]
    for payload in (b"[1, 2]", b'"text"', b"42", b"null"):
        error = await error_of(
            await client.post("/api/sessions", data=payload), 400, "INVALID_REQUEST"
        )
        assert "object" in error["message"]
    await error_of(await client.post("/api/sessions", data=b"\xff\xfe"), 400, "INVALID_REQUEST")
    await error_of(await client.post("/api/sessions", data=b""), 400, "INVALID_REQUEST")
    await assert_nothing_created(client, settings)


async def test_body_over_one_mebibyte(client: Any, git_repo: Path, settings: Any) -> None:
    huge = json.dumps({"repo_path": str(git_repo), "prompt": "x" * (1024 * 1024 + 10)})
    response = await client.post(
        "/api/sessions",
        data=io.BytesIO(huge.encode()),
        headers={"Content-Type": "application/json"},
    )
    await error_of(response, 413, "PAYLOAD_TOO_LARGE")
    await assert_nothing_created(client, settings)


async def test_bad_query_values(client: Any) -> None:
    await error_of(await client.get("/api/sessions?limit=0"), 400, "INVALID_REQUEST")
    await error_of(await client.get("/api/sessions?limit=abc"), 400, "INVALID_REQUEST")
    await error_of(await client.get("/api/sessions?status=sleeping"), 400, "INVALID_REQUEST")
    await error_of(await client.get("/api/sessions?offset=-1"), 400, "INVALID_REQUEST")
    await error_of(await client.get("/api/sessions?bogus=1"), 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("headers", "method"),
    [
        ({"Origin": "http://evil.example"}, "POST"),
        ({"Origin": "null"}, "POST"),
        ({"Origin": "http://localhost.evil.example:3030"}, "POST"),
        ({"Host": "evil.example"}, "GET"),
        ({"Host": "rebind.example:3030"}, "POST"),
    ],
)
async def test_hostile_origin_or_host_is_refused(
    client: Any, git_repo: Path, settings: Any, headers: dict[str, str], method: str
) -> None:
    body = {"repo_path": str(git_repo), "prompt": "x"}
    path = "/api/sessions"
    response = await client.request(method, path, json=body, headers=headers)
    await error_of(response, 403, "FORBIDDEN")
    await assert_nothing_created(client, settings)


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:5173",  # a dev server the agent started
        "http://127.0.0.1:8080",
        "http://[::1]:5173",
        "https://localhost:{port}",  # the daemon serves no TLS: not its own
        "http://127.0.0.2:{port}",  # another loopback address on our port
        "http://localhost",
    ],
)
async def test_other_local_origins_are_refused(
    client: Any, git_repo: Path, settings: Any, origin: str
) -> None:
    origin = origin.format(port=client.port)
    headers = {"Origin": origin}
    body = {"repo_path": str(git_repo), "prompt": "x"}
    await error_of(await client.post("/api/sessions", json=body, headers=headers), 403, "FORBIDDEN")
    # Reads too: a foreign page gets nothing from the API, not even an answer it cannot see.
    for path in ("/api/config", "/api/sessions"):
        await error_of(await client.get(path, headers=headers), 403, "FORBIDDEN")
    await assert_nothing_created(client, settings)


async def test_own_origin_on_the_bound_port_is_accepted(client: Any, tmp_path: Path) -> None:
    # The test server binds a free port (as port = 0 does); the settings still say 3030.
    assert client.port != 3030
    for name in ("127.0.0.1", "localhost", "[::1]"):
        headers = {"Origin": f"http://{name}:{client.port}"}
        response = await client.post(
            "/api/browse-directory", json={"path": str(tmp_path)}, headers=headers
        )
        assert response.status == 200, await response.text()
        assert "Access-Control-Allow-Origin" not in response.headers
    configured_port = {"Origin": "http://127.0.0.1:3030"}
    response = await client.post(
        "/api/browse-directory", json={"path": str(tmp_path)}, headers=configured_port
    )
    await error_of(response, 403, "FORBIDDEN")


async def test_no_cors_headers_for_anyone(aiohttp_client: Any, settings: Any) -> None:
    settings.server.allowed_origins = ["http://localhost:5173"]
    client = await aiohttp_client(create_app(settings))
    for origin in ("http://localhost:5173", f"http://localhost:{client.port}"):
        response = await client.get("/api/sessions", headers={"Origin": origin})
        assert response.status == 200
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
        preflight = await client.options(
            "/api/sessions", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status >= 400
        assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]
    refused = await client.options(
        "/api/sessions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    await error_of(refused, 403, "FORBIDDEN")
    hostile_read = await client.get("/api/sessions", headers={"Origin": "http://evil.example"})
    await error_of(hostile_read, 403, "FORBIDDEN")


async def test_same_site_fetch_metadata_is_refused(
    client: Any, git_repo: Path, settings: Any
) -> None:
    # Another port on localhost is the same site: a browser says so even without Origin.
    body = {"repo_path": str(git_repo), "prompt": "x"}
    for site in ("same-site", "cross-site"):
        headers = {"Sec-Fetch-Site": site}
        response = await client.post("/api/sessions", json=body, headers=headers)
        await error_of(response, 403, "FORBIDDEN")
        await error_of(await client.get("/api/config", headers=headers), 403, "FORBIDDEN")
    await assert_nothing_created(client, settings)
    # The UI itself, a typed address, or a link from elsewhere to the page still work.
    for site in ("same-origin", "none"):
        response = await client.get("/api/config", headers={"Sec-Fetch-Site": site})
        assert response.status == 200
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    response = await client.get("/", headers=link)
    assert response.status in (200, 503)  # 503: the UI is not built here


async def test_requests_without_origin_keep_working(client: Any, tmp_path: Path) -> None:
    response = await client.post("/api/browse-directory", json={"path": str(tmp_path)})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"repo_path": "/x", "prompt": "x", "tags": ' + b"[" * 500 + b"]" * 500 + b"}",
        b"{" + b'"a":{' * 50_000 + b"}" * 50_001,
    ],
    ids=["array", "in-a-field", "500-deep-field", "objects"],
)
async def test_deeply_nested_json_is_a_client_error(client: Any, settings: Any, raw: bytes) -> None:
    for path in ("/api/sessions", "/api/browse-directory", f"/api/sessions/{UNKNOWN}/message"):
        response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        error = await error_of(response, 400, "INVALID_REQUEST")
        assert "nested" in error["message"], error
    await assert_nothing_created(client, settings)


def raw_multipart(filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body with the filename exactly as given (clients would escape it)."""
    boundary = "corralboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.docker
async def test_upload_writes_plain_names_and_refuses_escapes(
    client: Any, git_repo: Path, tmp_path: Path
) -> None:
    session = await create_running(client, git_repo)
    worktree = Path(session["worktree_path"])
    url = f"/api/sessions/{session['id']}/upload"

    form = FormData()
    form.add_field("file", b"png-bytes", filename="shot.png")
    form.add_field("file", b"notes", filename="notes.txt")
    response = await client.post(url, data=form)
    assert response.status == 200, await response.text()
    files = (await response.json())["files"]
    assert [(f["name"], f["size"]) for f in files] == [("shot.png", 9), ("notes.txt", 5)]
    assert (worktree / "shot.png").read_bytes() == b"png-bytes"
    assert files[0]["path"] == str(worktree / "shot.png")

    for bad in ("../escape.txt", "/etc/passwd", "a\x00b", "..", "sub/dir.txt"):
        body, content_type = raw_multipart(bad, b"evil")
        response = await client.post(url, data=body, headers={"Content-Type": content_type})
        await error_of(response, 400, "INVALID_REQUEST")
    assert not (worktree.parent / "escape.txt").exists()
    assert not list(worktree.glob(".corral-upload-*"))

    # A symlink already standing at the name is replaced, never written through.
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    (worktree / "link.txt").symlink_to(outside)
    form = FormData()
    form.add_field("file", b"new", filename="link.txt")
    assert (await client.post(url, data=form)).status == 200
    assert outside.read_text() == "untouched"
    assert not (worktree / "link.txt").is_symlink()


@pytest.mark.docker
async def test_upload_over_limits(aiohttp_client: Any, settings: Any, git_repo: Path) -> None:
    settings.uploads.max_bytes = 1000
    settings.uploads.max_files = 3
    app = create_app(settings)
    client = await aiohttp_client(app)
    try:
        session = await create_running(client, git_repo)
        url = f"/api/sessions/{session['id']}/upload"
        form = FormData()
        form.add_field("file", b"x" * 2000, filename="big.bin")
        await error_of(await client.post(url, data=form), 413, "PAYLOAD_TOO_LARGE")
        form = FormData()
        for i in range(4):
            form.add_field("file", b"x", filename=f"f{i}.txt")
        await error_of(await client.post(url, data=form), 413, "PAYLOAD_TOO_LARGE")
        worktree = Path(session["worktree_path"])
        assert not (worktree / "big.bin").exists()
        assert not (worktree / "f0.txt").exists()
        assert not list(worktree.glob(".corral-upload-*"))
        await error_of(await client.post(url, data=b"plain"), 400, "INVALID_REQUEST")
    finally:
        await app[TASKS].wait(timeout=30)
        from tests.conftest import sweep_containers

        sweep_containers(settings.data_dir)


async def test_browse_directory(client: Any, tmp_path: Path) -> None:
    make_repo(tmp_path / "project")
    (tmp_path / "plain").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("x")
    response = await client.post("/api/browse-directory", json={"path": str(tmp_path)})
    body = await response.json()
    assert response.status == 200, body
    names = [(e["name"], e["is_dir"], e["is_git_repo"]) for e in body["entries"]]
    assert ("project", True, True) in names
    assert ("plain", True, False) in names
    assert ("file.txt", False, False) in names
    assert ".hidden" not in [n for n, _, _ in names]
    assert body["parent"] == str(tmp_path.parent)
    shown = await (
        await client.post(
            "/api/browse-directory", json={"path": str(tmp_path), "show_hidden": True}
        )
    ).json()
    assert ".hidden" in [e["name"] for e in shown["entries"]]
    # ".." is resolved, not trusted.
    up = await (
        await client.post("/api/browse-directory", json={"path": f"{tmp_path}/plain/.."})
    ).json()
    assert up["path"] == str(tmp_path)


async def test_browse_directory_bad_paths(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await error_of(
        await client.post("/api/browse-directory", json={"path": str(tmp_path / "missing")}),
        404,
        "NOT_FOUND",
    )
    (tmp_path / "f").write_text("x")
    await error_of(
        await client.post("/api/browse-directory", json={"path": str(tmp_path / "f")}),
        400,
        "INVALID_REQUEST",
    )
    await error_of(
        await client.post("/api/browse-directory", json={"path": "relative"}),
        400,
        "INVALID_REQUEST",
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    if os.geteuid() == 0:
        # Root reads any folder: make the refusal happen the way the kernel would report it.
        real_scandir = os.scandir

        def refuse(path: Any) -> Any:
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr("daemon.http.handlers.files.os.scandir", refuse)
    await error_of(
        await client.post("/api/browse-directory", json={"path": str(locked)}),
        403,
        "FORBIDDEN",
    )


@pytest.mark.docker
async def test_engine_down_store_still_answers(
    aiohttp_client: Any, settings: Any, git_repo: Path, tmp_path: Path
) -> None:
    app = create_app(settings)
    client = await aiohttp_client(app)
    session = await create_running(client, git_repo)
    await client.close()
    try:
        dead = {"docker": DockerBackend(f"unix://{tmp_path}/no-engine.sock")}
        down = await aiohttp_client(create_app(settings, backends=dead))
        health = await (await down.get("/health")).json()
        assert health["status"] == "degraded"
        assert health["docker"] == {"available": False, "version": None}
        listed = await (await down.get("/api/sessions")).json()
        assert [s["id"] for s in listed["sessions"]] == [session["id"]]
        got = await down.get(f"/api/sessions/{session['id']}")
        assert got.status == 200
        for action in ("archive", "recreate", "start"):
            await error_of(
                await down.post(f"/api/sessions/{session['id']}/{action}"),
                503,
                "BACKEND_UNAVAILABLE",
            )
        report = await (await down.get(f"/api/sessions/{session['id']}/health")).json()
        assert report["details"]["backend_available"] is False
        await error_of(
            await down.post("/api/sessions", json={"repo_path": str(git_repo), "prompt": "x"}),
            503,
            "BACKEND_UNAVAILABLE",
        )
        await error_of(
            await down.delete(f"/api/sessions/{session['id']}"), 503, "BACKEND_UNAVAILABLE"
        )
        still = await (await down.get(f"/api/sessions/{session['id']}")).json()
        assert still["session"]["status"] == "running"
    finally:
        from tests.conftest import sweep_containers

        sweep_containers(settings.data_dir)


@pytest.mark.docker
async def test_metadata_update_and_validation(client: Any, git_repo: Path, git: Any) -> None:
    response = await client.post(
        "/api/sessions", json={"repo_path": str(git_repo), "prompt": "x", "name": "meta"}
    )
    sid = (await response.json())["session"]["id"]
    await wait_for(client, sid, lambda s: s["status"] != "creating")
    changed = await client.patch(
        f"/api/sessions/{sid}/metadata", json={"description": "about", "tags": ["a", "b"]}
    )
    body = await changed.json()
    assert changed.status == 200, body
    assert body["session"]["description"] == "about"
    assert body["session"]["tags"] == ["a", "b"]
    posted = await client.post(f"/api/sessions/{sid}/metadata", json={"name": "renamed"})
    assert (await posted.json())["session"]["name"] == "renamed"
    await error_of(
        await client.patch(f"/api/sessions/{sid}/metadata", json={"tags": "notalist"}),
        400,
        "INVALID_REQUEST",
    )
    await error_of(
        await client.patch(f"/api/sessions/{sid}/metadata", json={"name": "NO SPACES"}),
        400,
        "INVALID_REQUEST",
    )


async def test_signed_in_cookie_mints_no_token_for_another_local_port(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    from backends.local import LocalBackend
    from tests.test_auth import auth_settings, signed_up
    from tests.webauthn_helper import SoftAuthenticator

    app = create_app(auth_settings(tmp_path), backends={"local": LocalBackend()})
    client = await aiohttp_client(app)
    own = f"http://localhost:{client.port}"
    await signed_up(client, SoftAuthenticator(origin=own))
    for origin in ("http://localhost:5173", f"http://localhost:{client.port + 1}"):
        headers = {"Origin": origin}  # the user's cookie rides along, as a browser sends it
        minted = await client.post("/api/auth/tokens", json={"name": "x"}, headers=headers)
        await error_of(minted, 403, "FORBIDDEN")
        await error_of(await client.get("/api/auth/tokens", headers=headers), 403, "FORBIDDEN")
    assert await (await client.get("/api/auth/tokens")).json() == {"tokens": []}
    minted = await client.post("/api/auth/tokens", json={"name": "mine"}, headers={"Origin": own})
    assert minted.status == 201, await minted.text()
