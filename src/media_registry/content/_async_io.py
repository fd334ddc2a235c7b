"""The file work of the async clients, done in threads, never on the event loop: an upload's
body (read in blocks) and the writes of downloads and spools (handed over in batches)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import IO

from ..errors import SourceChanged

BLOCK = 1024 * 1024
_ESCAPES = {'"': "%22", "\\": "\\\\", **{chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B}}
_ESCAPED = re.compile("|".join(re.escape(c) for c in _ESCAPES))


class FileBody:
    """An upload's multipart/form-data body: the form fields and one file, encoded as httpx
    would (HTML5 escaping of the file name), for one attempt: the file open at byte 0 (a
    retry opens it again), the Content-Length announced from its size. :meth:`close` closes
    the file."""

    def __init__(self, file: IO[bytes], fields: dict[str, str], name: str, part_type: str) -> None:
        self._file = file
        self.size = os.fstat(file.fileno()).st_size
        boundary = os.urandom(16).hex()
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
                 for key, value in fields.items()]
        filename = _ESCAPED.sub(lambda match: _ESCAPES[match.group(0)], name)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{filename}"\r\nContent-Type: {part_type}\r\n\r\n')
        self._head = "".join(parts).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self.headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Content-Length": str(len(self._head) + self.size + len(self._tail))}

    @classmethod
    def open(cls, path: str | os.PathLike[str], fields: dict[str, str], name: str,
             part_type: str) -> FileBody:
        """Open the file (blocking: call it in a thread)."""
        file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            return cls(file, fields, name, part_type)
        except BaseException:
            file.close()
            raise

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._head
        while block := await asyncio.to_thread(self._file.read, BLOCK):
            yield block
        yield self._tail

    def changed(self, path: str | os.PathLike[str]) -> SourceChanged | None:
        """SourceChanged if the file's size changed since it was opened (blocking)."""
        if os.fstat(self._file.fileno()).st_size == self.size:
            return None
        return changed_while_uploaded(path)

    def close(self) -> None:
        """Close the file (blocking)."""
        self._file.close()


def changed_while_uploaded(path: str | os.PathLike[str]) -> SourceChanged:
    """The error of a file whose size changed while it was sent (the body no longer matched
    the Content-Length announced, which the HTTP stack refuses)."""
    return SourceChanged(f"{path}: the file changed while it was uploaded; try again once it is written")


class Batches:
    """Hands the bytes given to :meth:`write` to ``write`` in a thread, ``BLOCK`` bytes or
    more at a time; :meth:`flush` hands over the rest."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._pending = bytearray()

    async def write(self, chunk: bytes) -> None:
        """Take one chunk (as it arrives from the network)."""
        self._pending += chunk
        if len(self._pending) >= BLOCK:
            await self.flush()

    async def flush(self) -> None:
        """Hand over what is pending."""
        if self._pending:
            batch = bytes(self._pending)
            self._pending.clear()
            await asyncio.to_thread(self._write, batch)
