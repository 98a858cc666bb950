"""Files in an agent home, opened so that what the session's container put there cannot
turn a daemon write or read against the host.

The agent home (``<data_dir>/sessions/<id>/home``) is the container's ``$HOME``: anything
in it may be a symlink to a host file, a FIFO, a device node or a directory where a file
should be. Every path here is relative to a trusted root (the home) and is walked one
component at a time from a directory handle, with ``O_NOFOLLOW`` on every component:

* writes go to a temporary file created ``O_EXCL`` in the destination's directory, then
  ``rename`` over the destination, so a symlink there is replaced, never followed; a
  directory component the daemon needs that is not a real directory (a symlink, a file)
  is removed and made again, so the session keeps working;
* reads open ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block), accept only a regular
  file (``fstat`` after opening, so a swap between a check and the open changes nothing)
  and read at most a cap of bytes;
* directory walks never descend through a symlink and visit a bounded number of entries.

Everything not as it must be raises :class:`HostileFile`. All of it blocks: callers run
it in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import structlog

log = structlog.get_logger(__name__)

# A settings file the daemon merges into (``.claude.json`` grows with the agent's project
# history, measured in KiB): far above any real one, small enough to hold in memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Entries a directory walk looks at before it calls the tree hostile: one session's
# Codex home holds a few rollouts a day; the walk runs several times a second.
MAX_WALK_ENTRIES = 10_000
_COPY_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Tries at replacing something that is not a directory with one, against a container
# putting it back in between.
_MAKE_DIR_TRIES = 3


class HostileFile(Exception):
    """A path in an agent home is not what the daemon may use (a symlink, a FIFO, a
    device, a directory where a file must be, too large…). ``path`` is relative to the home."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} in the agent home: {reason}")
        self.path = path
        self.reason = reason


def parts(relative: str | PurePosixPath) -> list[str]:
    """The components of a relative path; anything that could leave the root is refused."""
    text = str(relative)
    if not text or text.startswith("/"):
        raise ValueError(f"not a relative path: {text!r}")
    found = [p for p in text.split("/") if p not in ("", ".")]
    if not found or ".." in found or "\0" in text:
        raise ValueError(f"not a path under the root: {text!r}")
    return found


def describe(mode: int) -> str:
    """What a file type is, in words, for a report."""
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def make_home(home: Path) -> None:
    """Make the home (and its parents, the daemon's own) and check it is a real directory."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        home.mkdir(mode=0o700)
    os.close(open_root(home))


def open_root(root: Path) -> int:
    """A handle on the trusted root: its parents are the daemon's, the root itself is not
    followed if it is a link."""
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise HostileFile(".", "the home is not a directory") from exc
        raise


def _open_child_dir(parent: int, name: str, where: str, *, create: bool) -> int:
    for _ in range(_MAKE_DIR_TRIES):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            found = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            if not create:
                raise HostileFile(where, f"{describe(found)} where a directory must be") from exc
            # Ours to have as a directory: the thing in the way is removed (unlink never
            # follows a link) and the directory made again.
            log.warning("agent_home_entry_replaced", path=where, found=describe(found))
            os.unlink(name, dir_fd=parent)
    raise HostileFile(where, "keeps being replaced while the daemon makes it a directory")


@contextlib.contextmanager
def open_dir(
    root: Path, relative: str | PurePosixPath = ".", *, create: bool = False
) -> Iterator[int]:
    """A handle on ``root/relative``, reached without following any link.

    With ``create``, missing directories (the root too) are made, mode 0700, and anything
    else in the way of one below the root is replaced by one; without it, a missing one
    raises FileNotFoundError.
    """
    if create:
        make_home(root)
    fd = open_root(root)
    try:
        walked: list[str] = []
        for name in parts(relative) if str(relative) not in ("", ".") else []:
            walked.append(name)
            child = _open_child_dir(fd, name, "/".join(walked), create=create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def make_dir(root: Path, relative: str | PurePosixPath) -> None:
    """Make ``root/relative`` a real directory (and its parents), as :func:`open_dir` does."""
    with open_dir(root, relative, create=True):
        pass


def _split(relative: str | PurePosixPath) -> tuple[str, str]:
    names = parts(relative)
    return "/".join(names[:-1]) or ".", names[-1]


@contextlib.contextmanager
def _temp_in(dir_fd: int, name: str, mode: int) -> Iterator[tuple[int, str]]:
    """A new temporary file beside ``name``; removed unless renamed into place."""
    temp = f".{name}.corral-{secrets.token_hex(6)}.tmp"
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode,
        dir_fd=dir_fd,
    )
    try:
        yield fd, temp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rename_into_place(dir_fd: int, temp: str, name: str, where: str) -> None:
    try:
        # rename replaces a link at the destination with the file; it never writes through it.
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise HostileFile(where, "a directory where a file must be") from exc
        raise


def write_file(root: Path, relative: str | PurePosixPath, data: bytes, mode: int = 0o600) -> None:
    """Replace ``root/relative`` with ``data`` atomically, following no link on the way."""
    directory, name = _split(relative)
    with (
        open_dir(root, directory, create=True) as dir_fd,
        _temp_in(dir_fd, name, mode) as (fd, temp),
    ):
        _write_all(fd, data)
        os.fsync(fd)
        _rename_into_place(dir_fd, temp, name, str(relative))


def copy_into(root: Path, relative: str | PurePosixPath, source: Path, mode: int = 0o600) -> None:
    """Copy ``source`` (a trusted path on the host) to ``root/relative`` as :func:`write_file`
    does, streamed so a large file is never held whole."""
    directory, name = _split(relative)
    with (
        open(source, "rb") as src,
        open_dir(root, directory, create=True) as dir_fd,
        _temp_in(dir_fd, name, mode) as (fd, temp),
    ):
        while chunk := src.read(_COPY_CHUNK):
            _write_all(fd, chunk)
        os.fsync(fd)
        _rename_into_place(dir_fd, temp, name, str(relative))


def remove_file(root: Path, relative: str | PurePosixPath) -> None:
    """Remove ``root/relative`` if it is there and not a directory (a link itself, never
    what it points at); a missing file or folder on the way is fine."""
    directory, name = _split(relative)
    try:
        with open_dir(root, directory) as dir_fd:
            os.unlink(name, dir_fd=dir_fd)
    except (FileNotFoundError, IsADirectoryError):
        pass


def lstat(root: Path, relative: str | PurePosixPath) -> os.stat_result:
    """``lstat`` of ``root/relative`` (the last component itself, never what it points at)."""
    directory, name = _split(relative)
    with open_dir(root, directory) as dir_fd:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def open_regular(root: Path, relative: str | PurePosixPath) -> tuple[int, os.stat_result]:
    """An open descriptor (the caller closes it) on the regular file ``root/relative``,
    and its ``fstat``. FileNotFoundError if it does not exist, HostileFile if it is
    anything but a regular file or is reached through a link."""
    directory, name = _split(relative)
    where = str(relative)
    with open_dir(root, directory) as dir_fd:
        # Look before opening so a device node is never opened at all; the fstat after
        # opening is what counts (the entry can change in between).
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(found.st_mode):
            raise HostileFile(where, describe(found.st_mode))
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HostileFile(where, "a symlink") from exc
            raise
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise HostileFile(where, describe(opened.st_mode))
    return fd, opened


def read_file(root: Path, relative: str | PurePosixPath, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file ``root/relative``, at most ``limit`` of them (more is
    HostileFile, not a silently cut file)."""
    fd, _ = open_regular(root, relative)
    try:
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(fd)
    raise HostileFile(str(relative), f"larger than {limit} bytes")


def find_files(
    root: Path, pattern: str, limit: int = MAX_WALK_ENTRIES
) -> list[tuple[PurePosixPath, os.stat_result]]:
    """Regular files under ``root`` matching ``pattern`` (``/``-separated, ``fnmatch``
    wildcards per component, no ``**``) with their ``lstat``, found without descending
    through any link.

    As with ``glob``, a wildcard does not match a name starting with ``.``. More than
    ``limit`` entries looked at raise HostileFile.
    """
    components = parts(pattern)
    found: list[tuple[PurePosixPath, os.stat_result]] = []
    seen = 0

    def walk(dir_fd: int, prefix: PurePosixPath, depth: int) -> None:
        nonlocal seen
        component, last = components[depth], depth == len(components) - 1
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                seen += 1
                if seen > limit:
                    raise HostileFile(str(prefix), f"more than {limit} entries to look through")
                if entry.name.startswith(".") and not component.startswith("."):
                    continue
                if not fnmatch.fnmatchcase(entry.name, component):
                    continue
                if last:
                    if entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):  # removed since listed
                            found.append((prefix / entry.name, entry.stat(follow_symlinks=False)))
                elif entry.is_dir(follow_symlinks=False):
                    try:
                        child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                    except OSError:
                        continue  # replaced since the listing: passed over, as a link is
                    try:
                        walk(child, prefix / entry.name, depth + 1)
                    finally:
                        os.close(child)

    try:
        with open_dir(root) as fd:
            walk(fd, PurePosixPath(), 0)
    except FileNotFoundError:
        return []
    return found
