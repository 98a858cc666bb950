"""Hostile input beyond sign-in: huge uploads, escaping paths, secrets in logs, remote binds.

Sessions run on the local backend (a host PTY), so no container engine is needed. The
confinement helpers get property tests with hypothesis: whatever a client sends, nothing
lands or is listed outside the folders it is meant for.
"""

from __future__ import annotations

import asyncio
import io
import json
import string
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import FormData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.local import LocalBackend
from daemon.app import create_app
from daemon.cli import check_bind
from daemon.core.confine import resolved_roots, within
from daemon.core.errors import ApiError
from daemon.http.handlers.files import _target_directory, check_upload_name
from daemon.keys import TASKS
from daemon.log import SCRUBBER, SecretScrubber, register_secret
from daemon.settings import Settings, SettingsError
from tests.conftest import create_running
from tests.test_api_errors import error_of


def local_settings(tmp_path: Path, **server: Any) -> Settings:
    return Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "sessions": {"default_backend": "local", "start_agent": False},
            "uploads": {"max_bytes": 64 * 1024, "max_files": 20},
            "server": server,
        }
    )


@pytest.fixture
async def local_client(aiohttp_client: Any, tmp_path: Path) -> Any:
    app = create_app(local_settings(tmp_path), backends={"local": LocalBackend()})
    client = await aiohttp_client(app)
    yield client
    await app[TASKS].wait(timeout=30)


async def test_upload_of_ten_thousand_tiny_files_is_refused_and_leaves_nothing(
    local_client: Any, git_repo: Path
) -> None:
    session = await create_running(local_client, git_repo, backend="local")
    worktree = Path(session["worktree_path"])
    before = sorted(p.name for p in worktree.iterdir())
    form = FormData()
    for index in range(10_000):
        form.add_field("file", io.BytesIO(b"x"), filename=f"f{index}.txt")
    response = await local_client.post(f"/api/sessions/{session['id']}/upload", data=form)
    await error_of(response, 413, "PAYLOAD_TOO_LARGE")
    assert sorted(p.name for p in worktree.iterdir()) == before
    await local_client.delete(f"/api/sessions/{session['id']}")


async def test_a_ten_gigabyte_declared_length_is_refused_before_reading(
    local_client: Any, git_repo: Path
) -> None:
    session = await create_running(local_client, git_repo, backend="local")
    for path, content_type in (
        (f"/api/sessions/{session['id']}/upload", "multipart/form-data; boundary=x"),
        ("/api/sessions", "application/json"),
        ("/api/browse-directory", "application/json"),
    ):
        # A raw request: the headers promise 10 GB, the body never comes.
        reader, writer = await asyncio.open_connection("127.0.0.1", local_client.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {10 * 1024**3}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 413"), (path, head)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
        assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
        writer.close()
    await local_client.delete(f"/api/sessions/{session['id']}")


async def test_upload_over_a_symlink_to_outside_replaces_the_link(
    local_client: Any, git_repo: Path, tmp_path: Path
) -> None:
    session = await create_running(local_client, git_repo, backend="local")
    worktree = Path(session["worktree_path"])
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    (worktree / "notes.txt").symlink_to(outside)
    form = FormData()
    form.add_field("file", io.BytesIO(b"uploaded\n"), filename="notes.txt")
    response = await local_client.post(f"/api/sessions/{session['id']}/upload", data=form)
    assert response.status == 200, await response.text()
    assert outside.read_text() == "keep me\n"
    assert not (worktree / "notes.txt").is_symlink()
    assert (worktree / "notes.txt").read_text() == "uploaded\n"
    for name in ("../escape.txt", "/etc/passwd", "a\\\\b", "..", "sub/../../escape.txt"):
        # Raw multipart: aiohttp's own FormData would percent-encode the name for us.
        body = (
            f'--B\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\nx\r\n--B--\r\n"
        ).encode()
        response = await local_client.post(
            f"/api/sessions/{session['id']}/upload",
            data=body,
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )
        assert response.status == 400, (name, await response.text())
    assert not (worktree.parent / "escape.txt").exists()
    await local_client.delete(f"/api/sessions/{session['id']}")


async def test_browse_and_repositories_stay_inside_allowed_roots(
    aiohttp_client: Any, tmp_path: Path, git_repo: Path
) -> None:
    allowed = tmp_path / "allowed"
    inside = allowed / "projects"
    inside.mkdir(parents=True)
    (allowed / "escape").symlink_to(tmp_path)  # a link out of the allowed folder
    settings = local_settings(tmp_path, allowed_roots=[str(allowed)])
    client = await aiohttp_client(create_app(settings, backends={"local": LocalBackend()}))
    listed = await client.post("/api/browse-directory", json={"path": str(inside)})
    assert listed.status == 200
    assert (await listed.json())["parent"] == str(allowed)
    top = await (await client.post("/api/browse-directory", json={"path": str(allowed)})).json()
    assert top["parent"] is None  # no way up and out
    for path in (str(tmp_path), "/", "/etc", f"{allowed}/../", f"{allowed}/escape",
                 f"{allowed}-evil", str(git_repo)):  # fmt: skip
        response = await client.post("/api/browse-directory", json={"path": path})
        await error_of(response, 403, "FORBIDDEN")
    await error_of(
        await client.post("/api/browse-directory", json={"path": "/tmp/\x00"}),
        400,
        "INVALID_REQUEST",
    )
    created = await client.post(
        "/api/sessions", json={"repo_path": str(git_repo), "prompt": "x", "backend": "local"}
    )
    await error_of(created, 403, "FORBIDDEN")
    listed_sessions = await (await client.get("/api/sessions")).json()
    assert listed_sessions["total"] == 0


# --- property tests of the confinement helpers -------------------------------------------

NAME_CHARS = st.sampled_from([*string.ascii_letters, *".-_/\\~ \x00é", "..", "../"])
names = st.lists(NAME_CHARS, min_size=0, max_size=12).map("".join)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worktree with a folder, a symlink out, and a sibling whose name extends it."""
    base = tmp_path_factory.mktemp("confine")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (base / "root-evil").mkdir()
    (base / "outside").mkdir()
    (root / "out").symlink_to(base / "outside")
    (root / "sub" / "up").symlink_to(root.parent)
    return root


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_an_accepted_upload_name_always_lands_directly_in_the_target(tree: Path, name: str) -> None:
    try:
        accepted = check_upload_name(name)
    except ApiError:
        return
    final = tree / accepted
    assert final.parent == tree
    assert "/" not in accepted
    assert "\x00" not in accepted
    assert accepted not in (".", "..")


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subdir=names)
def test_the_upload_target_never_leaves_the_worktree(tree: Path, subdir: str) -> None:
    try:
        target = _target_directory(str(tree), subdir)
    except (ApiError, ValueError):
        return
    assert target.resolve().is_relative_to(tree.resolve())


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(relative=names)
def test_within_allowed_roots_means_inside_after_resolving(tree: Path, relative: str) -> None:
    roots = resolved_roots([str(tree)])
    candidate = f"{tree}/{relative}"
    if within(candidate, roots):
        real = Path(candidate).resolve()
        assert real == roots[0] or roots[0] in real.parents
        assert not real.is_relative_to(tree.parent / "outside")
        assert not real.is_relative_to(tree.parent / "root-evil")
    assert within(candidate, [])  # no roots configured: everything is allowed


# --- secrets in logs and remote binds ---------------------------------------------------


def test_the_scrubber_hides_tokens_and_registered_secrets() -> None:
    scrubber = SecretScrubber(["sk-configured-key"])
    event = {
        "event": "request",
        "header": "Bearer corral_tok_abcDEF123_-xyz",
        "cookie": "corral_session=corral_ses_Q1w2E3r4T5",
        "setup": "token corral_setup_zzzzzzzz in text",
        "key": "uses sk-configured-key here",
        "count": 3,
    }
    out = scrubber(None, "info", dict(event))
    assert "corral_tok_" not in out["header"]
    assert "corral_ses_" not in out["cookie"]
    assert "corral_setup_" not in out["setup"]
    assert "sk-configured-key" not in out["key"]
    assert out["count"] == 3
    register_secret("runtime-secret-value")
    assert "runtime-secret-value" not in SCRUBBER(None, "info", {"m": "runtime-secret-value"})["m"]


def test_tracebacks_are_scrubbed_too() -> None:
    """The scrubber runs after the traceback is rendered into the event."""
    import logging

    from daemon.log import configure_logging

    handlers = list(logging.getLogger().handlers)
    configure_logging("info", "json")
    try:
        processors = structlog.get_config()["processors"]
        try:
            raise RuntimeError("failed with corral_tok_leakedLEAKED123")
        except RuntimeError as exc:
            event: Any = {"event": "boom", "exc_info": exc}
        for processor in processors[:-1]:  # all but the renderer
            event = processor(None, "error", event)
        assert "RuntimeError" in event["exception"]
        assert "leakedLEAKED123" not in json.dumps(event)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = handlers


@pytest.mark.parametrize(
    ("host", "auth", "override", "ok"),
    [
        ("127.0.0.1", {}, False, True),
        ("0.0.0.0", {}, False, False),
        ("0.0.0.0", {}, True, True),  # the loud override
        ("0.0.0.0", {"mode": "webauthn"}, False, True),
        ("192.0.2.7", {"mode": "webauthn"}, False, False),  # an IP is no rp_id
        ("192.0.2.7", {"mode": "webauthn", "rp_id": "corral.example"}, False, True),
        ("corral.example", {"mode": "webauthn"}, False, True),
    ],
)
def test_a_remote_bind_needs_auth_or_the_override(
    host: str, auth: dict[str, str], override: bool, ok: bool
) -> None:
    settings = Settings.model_validate(
        {"server": {"host": host, "allow_remote_without_auth": override}, "auth": auth}
    )
    if ok:
        check_bind(settings)
    else:
        with pytest.raises(SettingsError):
            check_bind(settings)
