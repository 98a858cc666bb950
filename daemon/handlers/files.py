"""REST handlers that touch the host's files: browse a directory, upload into a session.

Every client path is resolved and confined. Disk work runs in worker threads so a slow
disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

from aiohttp import BodyPartReader, web

from daemon.confine import resolved_roots, within
from daemon.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from daemon.keys import MANAGER, SETTINGS
from daemon.models import (
    BrowseRequest,
    BrowseResponse,
    DirectoryEntry,
    UploadedFile,
    UploadResponse,
)
from daemon.routes import ROUTES, dump, read_body

MAX_ENTRIES = 5000
MAX_NAME_BYTES = 255
CHUNK = 256 * 1024


def _list_directory(request: BrowseRequest, roots: list[Path]) -> BrowseResponse:
    if "\x00" in request.path:
        raise InvalidRequest("path contains a NUL byte", [{"field": "path", "message": "NUL"}])
    raw = Path(request.path).expanduser()
    if not raw.is_absolute():
        raise InvalidRequest("path must be absolute", [{"field": "path", "message": "relative"}])
    if not within(raw, roots):
        raise Forbidden(f"{request.path} is outside the folders this daemon may browse")
    path = raw.resolve()
    if not path.exists():
        raise NotFound(f"{path} does not exist")
    if not path.is_dir():
        raise InvalidRequest(f"{path} is not a directory")
    try:
        children = list(os.scandir(path))
    except PermissionError as exc:
        raise Forbidden(f"{path} cannot be read: permission denied") from exc
    entries = []
    for child in children:
        if not request.show_hidden and child.name.startswith("."):
            continue
        try:
            is_dir = child.is_dir()
        except OSError:
            continue
        is_repo = is_dir and (Path(child.path) / ".git").exists()
        entries.append(
            DirectoryEntry(name=child.name, path=child.path, is_dir=is_dir, is_git_repo=is_repo)
        )
    entries.sort(key=lambda e: (not e.is_dir, e.name.lower()))
    # No way up out of the allowed folders.
    parent = str(path.parent) if path.parent != path and within(path.parent, roots) else None
    return BrowseResponse(path=str(path), parent=parent, entries=entries[:MAX_ENTRIES])


@ROUTES.route(
    "POST",
    "/api/browse-directory",
    "List a directory to pick a repository",
    body=BrowseRequest,
    response=BrowseResponse,
    errors=(400, 403, 404),
    tags=("files",),
    description="Outside server.allowed_roots (when set) is 403.",
)
async def browse_directory(request: web.Request) -> web.Response:
    body = await read_body(request, BrowseRequest)
    roots = resolved_roots(request.app[SETTINGS].server.allowed_roots)
    return dump(await asyncio.to_thread(_list_directory, body, roots))


def check_upload_name(name: str | None) -> str:
    """A plain file name: no folders, no traversal, no NUL, not hidden from the user."""
    if not name:
        raise InvalidRequest("each file part needs a filename")
    if "\x00" in name or "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidRequest(
            f"invalid file name {name!r}: a plain name without folders is required",
            [{"field": "file", "message": "no '/', '\\', NUL, '.' or '..'"}],
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest("file name too long")
    return name


def _target_directory(worktree: str, subdir: str) -> Path:
    root = Path(worktree).resolve()
    target = (root / subdir).resolve()
    if not target.is_relative_to(root):
        raise Forbidden("the session's working directory leaves its worktree")
    if not target.is_dir():
        raise InvalidRequest("the session's working directory does not exist")
    return target


@ROUTES.route(
    "POST",
    "/api/sessions/{session_id}/upload",
    "Upload files into the session's working directory",
    multipart=True,
    response=UploadResponse,
    errors=(400, 404, 413),
    tags=("files",),
    description="Plain file names only; an existing file of that name is replaced "
    "(a symlink is replaced, never followed).",
)
async def upload(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    limits = request.app[SETTINGS].uploads
    record = manager.get(request.match_info["session_id"])
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("upload needs a multipart/form-data body")
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise PayloadTooLarge(f"upload over {limits.max_bytes} bytes")
    target = await asyncio.to_thread(
        _target_directory, record.primary.worktree_path, record.primary.subdir
    )
    reader = await request.multipart()
    written: list[tuple[Path, Path, UploadedFile]] = []  # temp, final, answer
    total = 0
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "file":
                raise InvalidRequest("only parts named 'file' are accepted")
            if len(written) >= limits.max_files:
                raise PayloadTooLarge(f"more than {limits.max_files} files")
            name = check_upload_name(part.filename)
            temp = target / f".corral-upload-{secrets.token_hex(8)}"
            size = 0
            handle = await asyncio.to_thread(open, temp, "xb")
            written.append((temp, target / name, UploadedFile(name=name, path="", size=0)))
            try:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    total += len(chunk)
                    if total > limits.max_bytes:
                        raise PayloadTooLarge(f"upload over {limits.max_bytes} bytes")
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            final = target / name
            written[-1] = (temp, final, UploadedFile(name=name, path=str(final), size=size))
    except BaseException:
        await asyncio.to_thread(_discard, [temp for temp, _, _ in written])
        raise
    # Renaming over the final name replaces a symlink there instead of writing through it.
    await asyncio.to_thread(_commit, [(temp, final) for temp, final, _ in written])
    return dump(UploadResponse(files=[answer for _, _, answer in written]))


def _discard(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _commit(moves: list[tuple[Path, Path]]) -> None:
    clash = [final.name for _, final in moves if final.is_dir() and not final.is_symlink()]
    if clash:
        _discard([temp for temp, _ in moves])
        raise InvalidRequest(f"{clash[0]} is a directory in the working directory")
    for temp, final in moves:
        temp.replace(final)
