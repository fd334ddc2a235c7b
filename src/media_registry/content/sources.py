"""Sources other than a path: bytes, binary file objects and URLs, hashed as they are read.

Each becomes a :class:`Content`: its sha256, size and first bytes (for sniffing), and a
file holding exactly those bytes for the upload. Bytes are hashed in place and a seekable
file object from where it stands; an unseekable stream and a URL's body are spooled to a
temporary file while hashing, never held whole in memory. Streams and downloads are cut off
as soon as they exceed the most WhatsApp takes of what their first bytes show.

URL sources are fetched by :mod:`media_registry.graph.fetch`. A URL is printed, logged and
stored only in its key form (:func:`url_key`): without fragment or the query parameters of a signed URL (its
signature is a credential, and changes on every request). A URL with ``user:password@`` is
refused: it would be keyed without them, so another user's answer would be served.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import selectors
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from ..defaults import URL_IGNORE_QUERY as DEFAULT_URL_IGNORE_QUERY
from ..errors import (
    MediaTooLarge,
    SourceChanged,
    SourceUnreadable,
    UnsafeSourceURL,
)
from .media_types import SNIFF_BYTES, ZIP_MAGIC, MediaType, check, size_limit

CHUNK_SIZE = 1 << 20
SPOOL_PREFIX = "media-registry-"
# A suffix taken from a URL's path names the temporary file (Office formats are told apart
# by name); anything odd is dropped rather than put in a file name.
SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


# -- URLs --------------------------------------------------------------------------------


def is_url(source: object) -> bool:
    """Whether ``source`` is a URL string (``https://`` or ``http://``), not a path."""
    return isinstance(source, str) and source[:8].lower().startswith(("https://", "http://"))


def url_key(url: str | httpx.URL, ignore_query: Iterable[str] = DEFAULT_URL_IGNORE_QUERY) -> str:
    """The only form of a URL that is printed, logged or stored: no ``user:password@``, no
    fragment, and none of the query parameters named in ``ignore_query`` (compared without
    case; ``X-Goog-*`` matches a prefix). Two signed URLs of one object share this key."""
    return _url_key(str(url), tuple(ignore_query))


@functools.lru_cache(maxsize=1024)  # a URL hit should cost a lookup, not a parse
def _url_key(url: str, ignore_query: tuple[str, ...]) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:  # its message names the bad part, never the query
        raise UnsafeSourceURL(f"not a valid URL ({exc}); check it") from None
    patterns = [name.lower() for name in ignore_query]
    kept = [(name, value) for name, value in parsed.params.multi_items() if not _ignored(name, patterns)]
    return str(parsed.copy_with(username=None, password=None, fragment=None, query=None,
                                params=kept or None))


def refetchable(url: str, key: str) -> bool:
    """Whether ``key`` (the stored form of ``url``) is enough to fetch the URL again: nothing
    of it was left out but a fragment (no signature)."""
    return key == url_key(url, ())


def refuse_credentials(url: str | httpx.URL, label: str) -> None:
    """UnsafeSourceURL for a URL with ``user:password@`` (named by ``label``, its key form):
    its key would leave them out, so another user's content would be served for it."""
    if "@" in str(url) and httpx.URL(url).userinfo:  # no parse for the usual URL: hits stay cheap
        raise UnsafeSourceURL(f"{label}: a URL with user:password@ is not taken as a source; "
                              "use a signed URL or one that needs no credentials")


def _ignored(name: str, patterns: list[str]) -> bool:
    name = name.lower()
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


@dataclass(frozen=True)
class Validators:
    """What a URL's last answer said about its version, for a conditional GET."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        """``If-None-Match`` / ``If-Modified-Since`` for what is known."""
        headers = {}
        if self.etag and _sendable(self.etag):  # an older registry may hold any value
            headers["If-None-Match"] = self.etag
        if self.last_modified and _sendable(self.last_modified):
            headers["If-Modified-Since"] = self.last_modified
        return headers

    @classmethod
    def of(cls, response: httpx.Response) -> Validators:
        """The validators a response carries; one that is not printable ASCII is left out
        (it could not be sent back as the bytes it was)."""
        etag, last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        return cls(etag if etag and _sendable(etag) else None,
                   last_modified if last_modified and _sendable(last_modified) else None)


def _sendable(value: str) -> bool:
    return value.isascii() and value.isprintable()


# -- content -----------------------------------------------------------------------------


@dataclass
class Content:
    """A source's bytes, hashed and checked against the size limit while read.

    ``label`` is how the source is named in output and errors (a URL's key form, ``-`` for
    standard input, ``<bytes>``); ``suffix`` is the file-name suffix the source had, if any.
    Close it (or use it as a context manager) to remove its temporary file.
    """

    label: str
    sha256: str
    size: int
    head: bytes
    suffix: str = ""
    validators: Validators = Validators()
    _spool: str | None = field(default=None, repr=False)
    _data: memoryview | None = field(default=None, repr=False)
    _file: IO[bytes] | None = field(default=None, repr=False)
    _offset: int = field(default=0, repr=False)

    @contextmanager
    def file(self) -> Iterator[str]:
        """A path holding exactly these bytes, for as long as the block runs (to upload).

        A seekable file object hashed in place is copied and hashed again: SourceChanged if
        it no longer holds the same bytes."""
        if self._spool is not None:
            yield self._spool
            return
        with _temporary(self.suffix) as (path, out):
            digest = hashlib.sha256()
            for chunk in self._chunks():
                digest.update(chunk)
                out.write(chunk)
            out.close()
            if digest.hexdigest() != self.sha256:
                raise SourceChanged(f"{self.label}: the stream changed while it was read; try again")
            yield path

    def media_type(self, declared: str | None = None) -> MediaType:
        """Sniffed and checked against WhatsApp's limits as a file would be (errors name the
        source by its label). Raises UnsupportedMedia, MislabelledMedia or MediaTooLarge."""
        if self._spool is None and self.head.startswith(ZIP_MAGIC):  # Office: the archive tells
            with self.file() as path:
                return check(Path(path), self.head, self.size, declared, name=self.label)
        return check(Path(self._spool or f"source{self.suffix}"), self.head, self.size, declared,
                     name=self.label)

    def _chunks(self) -> Iterator[bytes | memoryview]:
        if self._data is not None:
            for start in range(0, len(self._data), CHUNK_SIZE):
                yield self._data[start:start + CHUNK_SIZE]
            return
        assert self._file is not None
        try:
            self._file.seek(self._offset)
        except (OSError, ValueError) as exc:
            raise _unreadable(self.label, exc) from exc
        yield from _blocks(self._file, self.label)

    def close(self) -> None:
        """Remove the temporary file, if this content has one."""
        if self._spool is not None:
            _unlink(self._spool)
            self._spool = None

    def __enter__(self) -> Content:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Meter:
    """Hashes, counts and keeps the first bytes of a stream as it passes; raises
    MediaTooLarge as soon as it exceeds the limit of what those first bytes show (the
    overall largest until they are in), or when ``announced`` (a Content-Length) does."""

    def __init__(self, label: str, announced: int | None = None) -> None:
        self.label = label
        self.digest = hashlib.sha256()
        self.size = 0
        self.head = bytearray()
        self.announced = announced
        self.limit = size_limit(b"")
        self._check(announced or 0)

    def update(self, chunk: bytes | memoryview) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
            if len(self.head) == SNIFF_BYTES:
                self.limit = size_limit(bytes(self.head))
                self._check(self.announced or 0)
        self._check(self.size)

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise MediaTooLarge(
                f"{self.label}: over {self.limit:,} bytes, the most WhatsApp takes of this kind of "
                "content; stopped reading, send a smaller file"
            )


def from_bytes(data: bytes | bytearray | memoryview, label: str = "<bytes>") -> Content:
    """Content of a bytes-like object, hashed in place (no copy until an upload needs a file)."""
    view = memoryview(data).cast("B")
    return Content(label, hashlib.sha256(view).hexdigest(), len(view), bytes(view[:SNIFF_BYTES]),
                   _data=view)


def from_stream(stream: IO[bytes], label: str = "-", suffix: str = "") -> Content:
    """Content of a binary file object, read once from where it stands.

    A seekable file is hashed in place; anything else (a pipe, a socket, a response body) is
    spooled to a temporary file while hashing. Either way it is read in blocks to its end,
    never whole, and cut off with MediaTooLarge as soon as it is over the limit. A stream that
    fails, is closed or is not binary raises SourceUnreadable (the original as its cause)."""
    if isinstance(stream, io.TextIOBase):
        raise _not_binary(label)
    suffix = suffix if SAFE_SUFFIX.match(suffix) else ""
    if _seekable(stream):
        try:
            offset = stream.tell()
        except (OSError, ValueError) as exc:
            raise _unreadable(label, exc) from exc
        meter = _Meter(label)
        for chunk in _blocks(stream, label):
            meter.update(chunk)
        return _content(meter, suffix, _file=stream, _offset=offset)
    spool = Spool(label, suffix)
    with spool:
        for chunk in _blocks(stream, label):
            spool.write(chunk)
        return spool.finish()


def _blocks(stream: IO[bytes], label: str) -> Iterator[bytes]:
    """The stream's blocks up to its end. A non-blocking stream with nothing ready reads as
    None (or raises BlockingIOError): that is not the end, so wait until it is readable."""
    while True:
        try:
            chunk = stream.read(CHUNK_SIZE)
        except BlockingIOError:
            chunk = None
        except (OSError, ValueError) as exc:
            raise _unreadable(label, exc) from exc
        if chunk is None:
            _wait_readable(stream, label)
        elif not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise _not_binary(label)
        elif not chunk:
            return
        else:
            yield chunk


def _wait_readable(stream: IO[bytes], label: str) -> None:
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(stream.fileno(), selectors.EVENT_READ)
            selector.select()
    except (OSError, ValueError) as exc:  # no descriptor to wait on
        raise SourceUnreadable(f"{label}: a non-blocking stream with no data ready; pass a blocking "
                               "stream") from exc


def _unreadable(label: str, exc: OSError | ValueError) -> SourceUnreadable:
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc).rstrip(".")
    if isinstance(exc, ValueError):  # e.g. a closed file
        return SourceUnreadable(f"{label}: the file object cannot be read ({reason}); pass an open "
                                "binary file object")
    return SourceUnreadable(f"{label}: reading the stream failed ({reason}); check the source and "
                            "try again")


def _not_binary(label: str) -> SourceUnreadable:
    return SourceUnreadable(f"{label}: a text-mode file; open it in binary mode ('rb')")


def _seekable(stream: IO[bytes]) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _content(meter: _Meter, suffix: str, **where: Any) -> Content:
    return Content(meter.label, meter.digest.hexdigest(), meter.size, bytes(meter.head), suffix, **where)


class Spool:
    """A temporary file filled while hashing and metering; :meth:`finish` hands it over as
    a :class:`Content`, and leaving the ``with`` block without finishing removes it."""

    def __init__(self, label: str, suffix: str = "", announced: int | None = None,
                 validators: Validators = Validators()) -> None:
        self._meter = _Meter(label, announced)
        self._suffix = suffix if SAFE_SUFFIX.match(suffix) else ""
        self._validators = validators
        descriptor, self._path = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=self._suffix)
        self._out = os.fdopen(descriptor, "wb")
        self._finished = False

    def write(self, chunk: bytes) -> None:
        """Hash, meter and store one block."""
        self._meter.update(chunk)
        self._out.write(chunk)

    def finish(self) -> Content:
        """The content spooled so far, which now owns the temporary file."""
        self._out.close()
        self._finished = True
        return _content(self._meter, self._suffix, validators=self._validators, _spool=self._path)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._finished:
            self._out.close()
            _unlink(self._path)


@contextmanager
def _temporary(suffix: str) -> Iterator[tuple[str, IO[bytes]]]:
    descriptor, path = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=suffix)
    out = os.fdopen(descriptor, "wb")
    try:
        yield path, out
    finally:
        out.close()
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
