"""Streaming sha256 of files, and the fingerprints that let a cache hit skip hashing."""

from __future__ import annotations

import functools
import io
import os
import stat
from datetime import datetime

from .._tuples import NamedTuple
from ..errors import SourceChanged, SourceNotFound, SourceUnreadable

BLOCK_SIZE = 1 << 18
_new_tuple = tuple.__new__


class Fingerprint(NamedTuple):
    """What one ``stat`` says of a file: if all of it matches (and it was not recorded
    racily, see :func:`racily_clean`), the content is unchanged. ctime cannot be set back
    by a tool that restores mtime after rewriting the bytes."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Stat ``path`` (absolute, symlinks followed) and return its fingerprint.

    Raises SourceNotFound only when there is no such file (ENOENT, ENOTDIR: it vanished),
    SourceUnreadable when it exists but cannot be used (permission denied, a directory or
    another kind of file, any other error).
    """
    absolute = os.fspath(path)
    # What os.path.abspath would hand back as it is (absolute, no empty, "." or ".." part, no
    # trailing slash), told without its Python-level normalisation: this is every cache hit.
    if not (absolute[:1] == "/" and "//" not in absolute and "/." not in absolute and absolute[-1:] != "/"):
        absolute = os.path.abspath(absolute)
    try:
        st = os.stat(absolute)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceNotFound(f"{path}: no such file; check the path") from None
    except PermissionError:
        raise SourceUnreadable(f"{path}: permission denied; make it readable") from None
    except OSError as exc:
        raise SourceUnreadable(f"{path}: cannot stat the file ({exc.strerror}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SourceUnreadable(f"{path}: is {what}; pass a file")
    # Built without Fingerprint's __new__ (a Python call): this is every cache hit.
    return _new_tuple(Fingerprint, (absolute, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev))


def racily_clean(fp: Fingerprint, recorded_at: datetime) -> bool:
    """True when a fingerprint recorded at ``recorded_at`` cannot be trusted (git's "racily
    clean" case): the file's mtime or ctime is not strictly older, at whole-second
    granularity, than the recording, so a same-size rewrite within that second (on a
    filesystem with 1 s timestamps) would leave the fingerprint unchanged. Hash it again."""
    return max(fp[2], fp[3]) // 1_000_000_000 >= _second(recorded_at)


@functools.lru_cache(maxsize=4096)  # the cache hits check the same few recordings over and over
def _second(moment: datetime) -> int:
    return int(moment.timestamp())


def open_source(path: str | os.PathLike[str]) -> io.BufferedReader:
    """Open a source file for reading: SourceNotFound if there is no such file (any more),
    SourceUnreadable for any other failure."""
    try:
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise SourceNotFound(f"{path}: no such file; check the path") from None
    except OSError as exc:
        raise SourceUnreadable(f"{path}: cannot read the file ({exc.strerror}); check it") from None


def sha256_file(file: io.BufferedReader) -> str:
    """Hex sha256 of an open binary file, read in large blocks from its current position."""
    import hashlib  # here, not at the top: a cache hit never hashes, and OpenSSL is slow to load

    if hasattr(hashlib, "file_digest"):  # Python 3.11+: releases the GIL, no copies
        hex_digest: str = hashlib.file_digest(file, "sha256").hexdigest()
        return hex_digest
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
