"""REST handlers that touch the host's files: browse a directory, upload into a session.

Every client path is resolved and confined. Disk work runs in worker threads so a slow
disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

from aiohttp import BodyPartReader, web

from daemon.core.confine import resolved_roots, within
from daemon.core.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from daemon.core.models import (
    BrowseRequest,
    BrowseResponse,
    DirectoryEntry,
    UploadedFile,
    UploadResponse,
)
from daemon.http.routes import ROUTES, dump, read_body
from daemon.keys import MANAGER, SETTINGS

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
        # A link out of the allowed folders is listed by its name alone: looking behind
        # it would tell whether a folder or repository exists out there.
        if roots and child.is_symlink() and not within(child.path, roots):
            entries.append(
                DirectoryEntry(name=child.name, path=child.path, is_dir=False, is_git_repo=False)
            )
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
    """A plain, visible file name: no folders, no traversal, no NUL, no leading dot.

    A dot name could replace the worktree's ``.git`` file (which then names any git
    directory the uploader likes) or plant a ``.bashrc``-like file the user never sees.
    """
    if not name:
        raise InvalidRequest("each file part needs a filename")
    if "\x00" in name or "/" in name or "\\" in name or name.startswith("."):
        raise InvalidRequest(
            f"invalid file name {name!r}: a plain name without folders, not starting "
            "with '.', is required",
            [
                {
                    "field": "file",
                    "message": f"refused name {name!r}: no '/', '\\', NUL or leading '.'",
                }
            ],
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidRequest("file name too long")
    return name


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_target(worktree: str, subdir: str) -> int:
    """A handle on the session's working directory, never through a symbolic link.

    The worktree's own path is the daemon's (under its data dir) and opened as it is;
    every component below it is the container's to change, so each is opened relative to
    the one before with ``O_NOFOLLOW``. Everything the upload writes is then relative to
    this handle: a folder swapped for a link afterwards cannot redirect it.
    """
    try:
        fd = os.open(worktree, _DIR_FLAGS)
    except FileNotFoundError as exc:
        raise InvalidRequest("the session's working directory does not exist") from exc
    relative = PurePosixPath(subdir)
    try:
        for part in relative.parts:
            if part == ".." or relative.is_absolute():
                raise Forbidden("the session's working directory leaves its worktree")
            if part == ".":
                continue
            try:
                inner = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError as exc:
                raise InvalidRequest("the session's working directory does not exist") from exc
            except OSError as exc:
                if exc.errno == errno.ELOOP or _is_link(part, fd):
                    raise Forbidden(
                        f"the session's working directory is a symbolic link at {part!r}; "
                        "uploads never follow links"
                    ) from exc
                raise InvalidRequest("the session's working directory is not a folder") from exc
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _target_directory(worktree: str, subdir: str) -> Path:
    """The session's working directory, checked as an upload would open it."""
    os.close(_open_target(worktree, subdir))
    return Path(worktree, subdir)


@ROUTES.route(
    "POST",
    "/api/sessions/{session_id}/upload",
    "Upload files into the session's working directory",
    multipart=True,
    response=UploadResponse,
    errors=(400, 403, 404, 413),
    tags=("files",),
    description="Plain file names only, none starting with '.'; an existing file of that "
    "name is replaced (a symlink is replaced, never followed; a folder or special file "
    "there refuses the upload). A working directory that is a symbolic link is 403.",
)
async def upload(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    limits = request.app[SETTINGS].uploads
    record = manager.get(request.match_info["session_id"])
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("upload needs a multipart/form-data body")
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise PayloadTooLarge(f"upload over {limits.max_bytes} bytes")
    primary = record.primary
    dir_fd = await asyncio.to_thread(_open_target, primary.worktree_path, primary.subdir)
    try:
        answers = await _receive(request, dir_fd, limits.max_bytes, limits.max_files)
    finally:
        os.close(dir_fd)
    where = Path(primary.worktree_path, primary.subdir)
    return dump(
        UploadResponse(
            files=[UploadedFile(name=n, path=str(where / n), size=size) for n, size in answers]
        )
    )


async def _receive(
    request: web.Request, dir_fd: int, max_bytes: int, max_files: int
) -> list[tuple[str, int]]:
    """Write each part to a temporary file in the folder, then all of them to their names."""
    reader = await request.multipart()
    written: list[tuple[str, str, int]] = []  # temp name, final name, size
    total = 0
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "file":
                raise InvalidRequest("only parts named 'file' are accepted")
            if len(written) >= max_files:
                raise PayloadTooLarge(f"more than {max_files} files")
            name = check_upload_name(part.filename)
            # A dot name, which no upload may have, so it never meets a file of the user's.
            temp = f".corral-upload-{secrets.token_hex(8)}"
            fd = await asyncio.to_thread(os.open, temp, _TEMP_FLAGS, 0o666, dir_fd=dir_fd)
            written.append((temp, name, 0))
            size = 0
            try:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    total += len(chunk)
                    if total > max_bytes:
                        raise PayloadTooLarge(f"upload over {max_bytes} bytes")
                    await asyncio.to_thread(_write_all, fd, chunk)
            finally:
                await asyncio.to_thread(os.close, fd)
            written[-1] = (temp, name, size)
        await asyncio.to_thread(_commit, dir_fd, [(temp, name) for temp, name, _ in written])
    except BaseException:
        await asyncio.to_thread(_discard, dir_fd, [temp for temp, _, _ in written])
        raise
    return [(name, size) for _, name, size in written]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _discard(dir_fd: int, names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def _commit(dir_fd: int, moves: list[tuple[str, str]]) -> None:
    """Rename every temporary file to its name, or none when one name is taken by a
    folder or a special file (a FIFO or device is never opened, nor silently replaced).
    A rename replaces a symlink standing at the name instead of writing through it."""
    for _, name in moves:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            raise InvalidRequest(f"{name} is a directory in the working directory")
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise InvalidRequest(f"{name} is a special file in the working directory")
    for temp, name in moves:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
