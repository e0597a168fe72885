"""The data directory belongs to the server's user alone, whatever the umask, and no link inside it is followed.

It holds prompts and pending inputs (``server.db``), results and uploads: directories are made 0700 and
files 0600 explicitly, and files are opened with ``O_NOFOLLOW``, so a symlink planted in ``results/`` or
``uploads/`` is neither read through nor written through.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def private_directory(path: Path) -> Path:
    """Creates ``path`` (and its missing parents) if needed, and makes it the owner's alone."""
    path.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    path.chmod(DIRECTORY_MODE)
    return path


def private_file(path: Path) -> Path:
    """Creates an empty file at ``path`` if there is none (for SQLite to open), and makes it the owner's alone.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's permissions.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | _NO_FOLLOW, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
    return path


def write_new(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Writes a file that must not exist yet (never through a link); ``sync`` flushes it to disk."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def replace_with(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, then renames it over ``path``: readers see the old
    file or the new one, and a link at ``path`` is replaced, not followed."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crash; unlink removes a link itself, not its target
    write_new(temporary, data)
    temporary.replace(path)


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file at ``path``; ``FileNotFoundError`` for anything else, links included."""
    try:
        descriptor = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    except OSError as error:  # ELOOP: a link
        raise FileNotFoundError(str(path)) from error
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise FileNotFoundError(str(path))
        return handle.read()
