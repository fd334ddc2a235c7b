"""The inbound media store: files named by their sha256, written whole or not at all."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

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


def write_verified(chunks: Iterable[bytes], destination: Path, size: int, sha256: str) -> None:
    """Stream ``chunks`` into ``destination`` through a temporary file in the same folder,
    checking size and sha256 (hex) before an atomic rename. On any failure nothing is left
    behind: neither the temporary file nor a partial destination."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    received = 0
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as file:
            for chunk in chunks:
                received += len(chunk)
                if received > size:
                    raise IntegrityError(
                        f"{destination.name}: received more than the {size:,} bytes announced; "
                        "the download was discarded"
                    )
                digest.update(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        if received != size:
            raise IntegrityError(
                f"{destination.name}: received {received:,} of {size:,} bytes (truncated); "
                "the download was discarded"
            )
        if digest.hexdigest() != sha256:
            raise IntegrityError(
                f"{destination.name}: sha256 of the bytes does not match the API's; "
                "the download was discarded"
            )
        os.replace(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise
