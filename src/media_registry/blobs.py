"""The inbound media store: files named by their sha256, written whole or not at all."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from pathlib import Path

from ._processes import alive
from .errors import IntegrityError

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


def _sweep_orphans(folder: Path) -> None:
    """Remove temporary files left by downloads whose process was killed (kill -9 leaves no
    chance to clean up); those of live processes are theirs."""
    for leftover in folder.glob(PARTIAL + "*"):
        pid = leftover.name[len(PARTIAL):].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            leftover.unlink(missing_ok=True)


class VerifiedFile:
    """A file written whole or not at all: bytes go to a temporary file in the destination's
    folder while being hashed; on a clean exit, size and sha256 (hex) are checked and the file
    is renamed into place atomically. On any failure nothing is left behind."""

    def __init__(self, destination: Path, size: int, sha256: str) -> None:
        self.destination = destination
        self._size = size
        self._sha256 = sha256
        self._digest = hashlib.sha256()
        self._received = 0

    def __enter__(self) -> VerifiedFile:
        folder = self.destination.parent
        folder.mkdir(parents=True, exist_ok=True)
        _sweep_orphans(folder)
        handle, self._temporary = tempfile.mkstemp(dir=folder, prefix=f"{PARTIAL}{os.getpid()}-")
        self._file = os.fdopen(handle, "wb")
        return self

    def write(self, chunk: bytes) -> None:
        """Append a chunk; more bytes than announced fail at once."""
        self._received += len(chunk)
        if self._received > self._size:
            raise IntegrityError(
                f"{self.destination.name}: received more than the {self._size:,} bytes announced; "
                "the download was discarded"
            )
        self._digest.update(chunk)
        self._file.write(chunk)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        kept = False
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                self._verify()
                os.replace(self._temporary, self.destination)
                kept = True
        finally:
            if not kept:
                os.unlink(self._temporary)

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
