"""The inbound media store: files named by their sha256, written whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mimetypes
import os
import stat
import tempfile
from pathlib import Path
from typing import Protocol

from ..errors import DownloadError, IntegrityError
from .hashing import sha256_file

# What mimetypes gets wrong or leaves to chance for WhatsApp's types.
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "audio/mp4": ".m4a",
    "video/3gpp": ".3gp",
    "text/plain": ".txt",
}


def file_name(sha256: str, mime_type: str) -> str:
    """``<sha256>.<ext>``, the extension taken from the MIME type (``.bin`` if unknown)."""
    bare = mime_type.split(";")[0].strip().lower()
    return sha256 + (EXTENSIONS.get(bare) or mimetypes.guess_extension(bare) or ".bin")


PARTIAL = ".partial-"


def holds(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` is a regular file (not a symlink) of exactly these bytes.

    Whatever else is there (a planted symlink, other bytes of the same size, a FIFO) is not
    trusted, never followed and never read past its size: the verified download replaces it.
    """
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, a symlink (ELOOP), unreadable: not held
        return False
    facts = os.fstat(handle)
    if not stat.S_ISREG(facts.st_mode) or facts.st_size != size:
        os.close(handle)
        return False
    with os.fdopen(handle, "rb") as file:
        return sha256_file(file) == sha256


def _sweep_orphans(folder: Path) -> None:
    """Remove temporary files left by downloads that were killed (kill -9 leaves no chance to
    clean up). A download holds a lock on its temporary file for as long as it writes, and the
    kernel releases it when the process dies, whatever its PID namespace or host: a temporary
    that can be locked has no writer left."""
    for leftover in folder.glob(PARTIAL + "*"):
        try:
            handle = os.open(leftover, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # gone already, or not a file of ours
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            leftover.unlink(missing_ok=True)
        except OSError:  # BlockingIOError: a live download is writing it
            pass
        finally:
            os.close(handle)


class Sink(Protocol):
    """Where a download's bytes go as they arrive (a :class:`VerifiedFile`, or the archive's
    spool), each chunk checked against the announced size."""

    def write(self, chunk: bytes) -> None:
        """Take the next chunk; IntegrityError past the announced size."""
        ...


class VerifiedFile:
    """A file written whole or not at all: bytes go to a temporary file in the destination's
    folder while being hashed; on a clean exit, size and sha256 (hex) are checked and the file
    is renamed into place atomically (replacing whatever was there, never following a
    symlink). On any failure nothing is left behind; an unusable folder or a full disk is a
    :class:`DownloadError`."""

    def __init__(self, destination: Path, size: int, sha256: str) -> None:
        self.destination = destination
        self._size = size
        self._sha256 = sha256
        self._digest = hashlib.sha256()
        self._received = 0
        self._kept = False

    def __enter__(self) -> VerifiedFile:
        folder = self.destination.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _sweep_orphans(folder)
            handle, self._temporary = self._locked_temporary(folder)
        except (FileExistsError, NotADirectoryError):
            raise DownloadError(f"{folder}: not a folder; name a folder for the downloads") from None
        except OSError as exc:
            raise self._unwritable(exc) from None
        self._file = os.fdopen(handle, "wb")
        return self

    @staticmethod
    def _locked_temporary(folder: Path) -> tuple[int, str]:
        """A new temporary file (created exclusively, never through a symlink), locked."""
        while True:
            handle, name = tempfile.mkstemp(dir=folder, prefix=f"{PARTIAL}{os.getpid()}-")
            fcntl.flock(handle, fcntl.LOCK_EX)
            if os.fstat(handle).st_nlink:  # not swept in the instant before it was locked
                return handle, name
            os.close(handle)

    def write(self, chunk: bytes) -> None:
        """Append a chunk; more bytes than announced fail at once."""
        self._received += len(chunk)
        if self._received > self._size:
            raise IntegrityError(
                f"{self.destination.name}: received more than the {self._size:,} bytes announced; "
                "the download was discarded"
            )
        self._digest.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise self._unwritable(exc) from None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self._keep()
        finally:
            if not self._kept:
                os.unlink(self._temporary)
            with contextlib.suppress(OSError):  # buffered bytes of a discarded file
                self._file.close()  # releases the lock only now, once the name is settled

    def _keep(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise self._unwritable(exc) from None
        self._verify()
        try:
            os.replace(self._temporary, self.destination)
        except OSError as exc:
            raise DownloadError(
                f"{self.destination}: cannot be replaced ({exc.strerror}); move it away and "
                "download again"
            ) from None
        self._kept = True

    def _unwritable(self, exc: OSError) -> DownloadError:
        fix = {errno.ENOSPC: "free some space there", errno.EDQUOT: "free some space there"}.get(
            exc.errno or 0, "choose a folder you can write to")
        return DownloadError(
            f"{self.destination.parent}: cannot write the download ({exc.strerror}); {fix}, "
            "or download to another folder; nothing was kept"
        )

    def _verify(self) -> None:
        if self._received != self._size:
            raise IntegrityError(
                f"{self.destination.name}: received {self._received:,} of {self._size:,} bytes "
                "(truncated); the download was discarded"
            )
        if self._digest.hexdigest() != self._sha256:
            raise IntegrityError(
                f"{self.destination.name}: sha256 of the bytes does not match the API's; "
                "the download was discarded"
            )
