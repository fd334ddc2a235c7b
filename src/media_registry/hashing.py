"""Streaming sha256 of files, and the fingerprints that let a cache hit skip hashing."""

from __future__ import annotations

import io
import os
import stat
from typing import NamedTuple

from .errors import SourceChanged, SourceNotFound

BLOCK_SIZE = 1 << 18


class Fingerprint(NamedTuple):
    """What one ``stat`` says of a file: if all of it matches, the content is unchanged."""

    path: str
    size: int
    mtime_ns: int
    inode: int


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Stat ``path`` (absolute, symlinks followed) and return its fingerprint.

    Raises SourceNotFound when it is missing, a directory or otherwise not a regular file.
    """
    absolute = os.path.abspath(path)
    try:
        st = os.stat(absolute)
    except FileNotFoundError:
        raise SourceNotFound(f"{path}: no such file; check the path") from None
    except PermissionError:
        raise SourceNotFound(f"{path}: permission denied; make it readable") from None
    except OSError as exc:
        raise SourceNotFound(f"{path}: cannot stat the file ({exc.strerror}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SourceNotFound(f"{path}: is {what}; pass a file")
    return Fingerprint(absolute, st.st_size, st.st_mtime_ns, st.st_ino)


def open_source(path: str | os.PathLike[str]) -> io.BufferedReader:
    """Open a source file for reading, with SourceNotFound on failure."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise SourceNotFound(f"{path}: cannot read the file ({exc.strerror}); check it") from None


def sha256_file(file: io.BufferedReader) -> str:
    """Hex sha256 of an open binary file, read in large blocks from its current position."""
    import hashlib  # here, not at the top: a cache hit never hashes, and OpenSSL is slow to load

    if hasattr(hashlib, "file_digest"):  # Python 3.11+: releases the GIL, no copies
        return hashlib.file_digest(file, "sha256").hexdigest()
    digest = hashlib.sha256()
    buffer = bytearray(BLOCK_SIZE)
    view = memoryview(buffer)
    while size := file.readinto(buffer):
        digest.update(view[:size])
    return digest.hexdigest()


def ensure_unchanged(before: Fingerprint) -> None:
    """Raise SourceChanged if the file no longer matches the fingerprint taken earlier."""
    if fingerprint(before.path) != before:
        raise SourceChanged(
            f"{before.path}: the file changed while it was read; try again once it is written"
        )
