"""An upload session's body: a file's bytes from an offset, read a block at a time (memory
stays flat), and the sha256 of the file computed from those bytes as they go, so that a
file's first upload reads it once: each block is hashed once it was sent, while the API
reads it (the async transfer hashes it in a thread while it is sent)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import IO

# Large blocks: few Python calls (and thread hand-offs) per 100 MB; still flat memory.
CHUNK = 4 << 20
# The sync transfer's blocks, each read, sent, then hashed by the one thread while still in
# the core's cache (the API reads it meanwhile); a hash thread beside the sender measured
# slower (benchmarks/handles.py): it takes cores from whatever receives the bytes.
BLOCK = 512 << 10


class RunningDigest:
    """A file's sha256 computed from its bytes as they are sent, in order: bytes sent again
    after a break are hashed once, and bytes a former transfer sent (a session resumed after
    a crash) are read back first (:meth:`catch_up`)."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._lock = threading.Lock()  # a broken transfer's last block may still be hashing
        self.position = 0

    def feed(self, offset: int, chunk: bytes) -> None:
        """The bytes at ``offset`` of the file (never past :attr:`position`)."""
        with self._lock:
            skip = self.position - offset
            if skip < 0:
                raise RuntimeError(f"hashing a file's bytes out of order (at {offset}, hashed {self.position})")
            if skip < len(chunk):
                self._sha256.update(memoryview(chunk)[skip:] if skip else chunk)
                self.position = offset + len(chunk)

    def catch_up(self, file: IO[bytes], offset: int) -> None:
        """Hash the file's bytes up to ``offset`` not yet hashed (they were sent before)."""
        file.seek(self.position)
        while self.position < offset and (chunk := file.read(min(CHUNK, offset - self.position))):
            self.feed(self.position, chunk)

    def hexdigest(self) -> str:
        """The sha256 of the bytes fed so far."""
        with self._lock:
            return self._sha256.hexdigest()


def open_at(path: str | os.PathLike[str], offset: int, digest: RunningDigest | None) -> IO[bytes]:
    """The file open at ``offset``, the digest caught up to it."""
    file = open(path, "rb")  # noqa: SIM115 - the transfer closes it
    if digest is not None:
        digest.catch_up(file, offset)
    file.seek(offset)
    return file


def chunks(file: IO[bytes], offset: int, length: int, digest: RunningDigest | None) -> Iterator[bytes]:
    """``length`` bytes of ``file`` from ``offset`` (where it stands), a block at a time; each
    is hashed into ``digest`` once it was sent (the API reads it meanwhile)."""
    while length > 0 and (chunk := file.read(min(BLOCK, length))):
        yield chunk
        if digest is not None:
            digest.feed(offset, chunk)
        offset, length = offset + len(chunk), length - len(chunk)


async def achunks(file: IO[bytes], offset: int, length: int,
                  digest: RunningDigest | None) -> AsyncIterator[bytes]:
    """:func:`chunks`, each block read in a thread, and hashed in one while it is sent."""
    hashed: asyncio.Future[None] | None = None
    try:
        while length > 0 and (chunk := await asyncio.to_thread(file.read, min(CHUNK, length))):
            if digest is not None:
                if hashed is not None:
                    await hashed
                hashed = asyncio.ensure_future(asyncio.to_thread(digest.feed, offset, chunk))
            offset, length = offset + len(chunk), length - len(chunk)
            yield chunk
    finally:
        if hashed is not None:
            await hashed
