"""Sources beyond paths: bytes, file objects and URLs; and IDs Meta refused (invalidate).

Bytes and file objects become a :class:`~media_registry.content.sources.Content` (hashed, spooled if
unseekable) and then go through the same checks and single flight as a file. A URL is
served from its remembered mapping (URL → sha256 with its ``ETag``/``Last-Modified``) with no
request within ``url_revalidate``, else after one conditional GET; one thread or task of a
process fetches a given URL at a time.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeGuard, TypeVar

from ..content import sources
from ..content.sources import Content, Validators
from ..errors import (
    ConfigError,
    MediaRegistryError,
    NotInRegistry,
    SourceNotFound,
    SourceUnavailable,
)
from ..graph.refusal import media_id_refused
from ..models import graph_id
from ..store import UrlSource
from . import listing
from .context import Context
from .effects import Blocking, Fetch, Flow, Hashing, Send, Sleep, ask
from .sending import Miss, Outcome, Sending
from .webhook import Webhooks

# What get_or_upload takes: a path, bytes, a binary file object, or an https:// URL string;
# or a Content already read (the service spools a body once, hashing it on the way).
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Content
REFUSED = "Meta refused it at send time"
T = TypeVar("T")
_PATH = type(Path())  # the concrete Path class: a type check, not PathLike's ABC check
_new_tuple = tuple.__new__


class Sourcing:
    """Which flow a source takes; ``get_or_upload`` of bytes, file objects and URLs,
    ``send_with_media`` and ``invalidate``. ``key`` is the URL fetcher's key form."""

    def __init__(self, ctx: Context, sending: Sending, key: Callable[[str], str]) -> None:
        self.ctx = ctx
        self.sending = sending
        self.key = key
        self._urls_in_flight = _Claims()

    def lookup(self, source: Source, phone_number_id: str | None,
                declared: str | None) -> Outcome | Flow[Outcome]:
        """A cache hit answered inline (a path's fingerprint, a fresh URL), or the flow that
        serves or uploads the source: each driver runs the flow its own way."""
        if is_path(source):
            found = self.sending.fast_path(source, phone_number_id, declared)
            if isinstance(found, Miss):
                return self.sending.get_or_upload_flow(source, found, declared)
            outcome = _new_tuple(Outcome, (found[1], False))  # Outcome's __new__ costs a call
            outcome.sha256 = found[0]
            return outcome
        if isinstance(source, str) and (hit := self._url_fast_path(source, phone_number_id, declared)):
            return hit
        return self._source_flow(source, phone_number_id, declared)

    def media_id(self, source: Source, phone_number_id: str | None, declared: str | None) -> str | Flow[Outcome]:
        """:meth:`lookup` as ``get_or_upload`` answers: a path's cache hit is its media ID, with
        no Outcome built (the hottest call of all); anything else is :meth:`lookup`'s."""
        if type(source) is _PATH:
            source = str(source)  # one Python call where os.fspath would make two, on every hit
        if type(source) is str and (source[:1] == "/" or not sources.is_url(source)):
            found = self.sending.fast_path(source, phone_number_id, declared)
            if isinstance(found, Miss):
                return self.sending.get_or_upload_flow(source, found, declared)
            return found[1]
        outcome = self.lookup(source, phone_number_id, declared)
        return outcome.media_id if isinstance(outcome, Outcome) else outcome

    def _outcome_flow(self, source: Source, phone_number_id: str | None) -> Flow[Outcome]:
        found = self.lookup(source, phone_number_id, None)
        return found if isinstance(found, Outcome) else (yield from found)

    def send_with_media_flow(self, source: Source, send: Callable[[str], Any],
                              phone_number_id: str | None) -> Flow[Any]:
        """Send with the source's ID; when Meta refuses it, invalidate, upload and send again,
        unless the refusal cannot be about the media (see :func:`_wrong_sender`)."""
        held = yield from ask(Hashing(functools.partial(hold, source)))
        phone = self.ctx.phone(phone_number_id)
        flow = self._send_held(held, send, phone)
        return (yield from (flow if held is source else closing_after(held, flow)))

    def _send_held(self, held: Source, send: Callable[[str], Any], phone: str) -> Flow[Any]:
        outcome = yield from self._outcome_flow(held, phone)
        result, refused = yield from _send(send, outcome.media_id)
        if not refused:
            yield from Webhooks(self.ctx).sent_flow(result, outcome.media_id, phone)
            return result
        if outcome.uploaded or (yield from self._repaired_lately(outcome.media_id, phone)):
            raise _wrong_sender(phone)
        yield from self.invalidate_flow(outcome.media_id, REFUSED)
        media_id = (yield from self._outcome_flow(held, phone)).media_id
        result, refused = yield from _send(send, media_id)
        if refused:
            raise _wrong_sender(phone)
        yield from Webhooks(self.ctx).sent_flow(result, media_id, phone)
        return result

    def _repaired_lately(self, media_id: str, phone: str) -> Flow[bool]:
        """Whether an ID of this media ID's content on ``phone`` was invalidated within
        ``repair_window``: its ID now is a recent upload, so a refusal is not about the media."""
        store = self.ctx.store
        sha256 = yield from ask(Blocking(functools.partial(store.resolve, media_id)))
        events = [] if sha256 is None else (yield from ask(Blocking(functools.partial(store.events, sha256))))
        since = self.ctx.clock() - self.ctx.settings.repair_window
        return any(event.action == "invalidate" and event.phone_number_id == phone and event.at > since
                   for event in events)

    def _url_fast_path(self, url: str, phone_number_id: str | None, declared: str | None) -> Outcome | None:
        """The URL cache hit, inline in both drivers: checked within ``url_revalidate``,
        with a valid ID; no network, one indexed query. A URL with credentials is refused
        here: its key leaves them out, so it must never be answered from the registry."""
        key = self.key(url)
        sources.refuse_credentials(url, key)
        if declared is not None:  # a declared type is checked against the bytes
            return None
        ctx = self.ctx
        phone = ctx.phone(phone_number_id)
        media_id = ctx.store.url_hit(key, phone, ctx.min_valid_until(phone),
                                     ctx.valid_until(-ctx.settings.url_revalidate))
        return None if media_id is None else Outcome(media_id, uploaded=False)

    def _source_flow(self, source: Source, phone_number_id: str | None,
                     declared: str | None) -> Flow[Outcome]:
        """get_or_upload of a URL, bytes or a file object (a path takes ``fast_path``)."""
        phone = self.ctx.phone(phone_number_id)
        if isinstance(source, str):
            return (yield from self._url_flow(source, phone, declared))
        if isinstance(source, Content):  # read once already (send_with_media)
            return (yield from self._content_flow(source, phone, declared))
        content = yield from ask(Hashing(functools.partial(read, source)))
        return (yield from closing_after(content, self._content_flow(content, phone, declared)))

    def _content_flow(self, content: Content, phone: str, declared: str | None,
                      url: str | None = None) -> Flow[Outcome]:
        """Check the content like a file, record it (and the URL it came from), then single
        flight."""
        store = self.ctx.store
        media_type = yield from ask(Hashing(functools.partial(content.media_type, declared)))
        now = self.ctx.clock()
        yield from ask(Blocking(functools.partial(
            store.remember_content, content.sha256, media_type.mime_type, content.size, now)))
        if url is not None:
            key = self.key(url)
            yield from ask(Blocking(functools.partial(store.remember_url, UrlSource(
                key, content.sha256, content.validators.etag, content.validators.last_modified, now,
                sources.refetchable(url, key)))))
        return (yield from self.sending.single_flight(content, content.sha256, phone, media_type.mime_type))

    def _url_flow(self, url: str, phone: str, declared: str | None) -> Flow[Outcome]:
        """Serve a fresh mapping's ID, or claim the URL and fetch it; others wait for the
        claim and then find the mapping fresh."""
        key = self.key(url)
        store = self.ctx.store
        delay = 0.02
        while True:
            known = yield from ask(Blocking(functools.partial(store.url_source, key)))
            media_id = None if known is None else (yield from ask(Blocking(functools.partial(
                store.current_media_id, known.sha256, phone, self.ctx.min_valid_until(phone)))))
            if media_id is not None and declared is None and self._fresh(known):
                return Outcome(media_id, uploaded=False, sha256=known.sha256 if known else None)
            if self._urls_in_flight.claim(key):
                break
            yield from ask(Sleep(delay))
            delay = min(delay * 1.5, 0.25)
        try:
            return (yield from self._fetch_url(url, key, phone, declared, known if media_id else None))
        finally:
            self._urls_in_flight.release(key)

    def _fresh(self, known: UrlSource | None) -> bool:
        return known is not None and self.ctx.clock() < known.checked_at + self.ctx.settings.url_revalidate

    def _fetch_url(self, url: str, key: str, phone: str, declared: str | None,
                   known: UrlSource | None) -> Flow[Outcome]:
        """Fetch (conditionally when ``known`` has a valid ID), then serve or upload."""
        ctx = self.ctx
        validators = Validators(known.etag, known.last_modified) if known else None
        try:
            content = yield from ask(Fetch(url, validators))
        except SourceNotFound:
            yield from ask(Blocking(functools.partial(
                ctx.store.forget_url, key, ctx.clock(), "the URL answered 404/410")))
            raise
        if content is None and known is not None:  # 304: the same bytes, so the same ID
            yield from ask(Blocking(functools.partial(ctx.store.touch_url, key, ctx.clock())))
            media_id = yield from ask(Blocking(functools.partial(
                ctx.store.current_media_id, known.sha256, phone, ctx.min_valid_until(phone))))
            if media_id is not None:
                return Outcome(media_id, uploaded=False, sha256=known.sha256)
        if content is None:  # the ID went meanwhile: the bytes are needed
            content = yield from ask(Fetch(url, None))
        if content is None:
            raise SourceUnavailable(f"{key}: HTTP 304 to a request without validators; check the server")
        return (yield from closing_after(content, self._content_flow(content, phone, declared, url)))

    def refetch(self, sha256: str) -> Flow[Content | None]:
        """A URL source that still serves the content, fetched again; None if there is none."""
        known = yield from ask(Blocking(functools.partial(self.ctx.store.url_sources, sha256)))
        for mapping in known:
            if not mapping.refetchable:
                continue  # a signed URL: its signature was never stored
            try:
                content = yield from ask(Fetch(mapping.url, None))
            except MediaRegistryError:
                continue
            if content is not None and content.sha256 == sha256:
                return content
            if content is not None:
                content.close()
        return None

    def resolve(self, target: str | os.PathLike[str]) -> str | None:
        """The sha256 that ``target`` names, or None: a URL source the registry has fetched
        (by its key: ignored query parameters do not matter; UnsafeSourceURL for one with
        user:password@, which upload refuses too), else as a path the registry has seen, an
        exact media ID, an exact sha256, or a unique sha256 prefix of at least 8 hex digits,
        tried in that order. An ambiguous prefix raises InputError listing the candidates."""
        store = self.ctx.store
        if sources.is_url(target):
            key = self.key(str(target))
            sources.refuse_credentials(str(target), key)  # its key leaves them out: another URL's
            known = store.url_source(key)
            return None if known is None else known.sha256
        return listing.stored_name(store, target)

    def invalidate_flow(self, media_id: str, reason: str) -> Flow[None]:
        """Mark a media ID dead (never served again), with an event saying why."""
        graph_id(media_id, "media ID")
        found = yield from ask(Blocking(functools.partial(
            self.ctx.store.invalidate_media, media_id, self.ctx.clock(), reason)))
        if not found:
            raise NotInRegistry(f"media ID {media_id}: not in the registry; check the ID (see: ls)")


def _send(send: Callable[[str], Any], media_id: str) -> Flow[tuple[Any, bool]]:
    """What ``send(media_id)`` returned (or raised, if Meta refused the ID), and whether
    Meta refused the ID."""
    try:
        result = yield from ask(Send(send, media_id))
    except Exception as exc:
        if not media_id_refused(exc):
            raise
        return exc, True
    return result, media_id_refused(result)


def _wrong_sender(phone: str) -> ConfigError:
    # Meta refuses an ID sent from another number than the one that uploaded it; the registry
    # cannot see which number send() posts from.
    return ConfigError(
        f"phone number ID {phone}: Meta refused a media ID uploaded for it moments ago, so send() "
        f"posts from another phone number (a media ID works only for the number that uploaded "
        f"it); pass phone_number_id= with the sender's phone number ID"
    )


def is_path(source: object) -> TypeGuard[str | os.PathLike[str]]:
    """Whether a source names a file (any str but a URL, or a PathLike)."""
    # str first: the ABC check of PathLike costs a cache hit more than the rest of this
    return not sources.is_url(source) if isinstance(source, str) else isinstance(source, os.PathLike)


def read(source: object) -> Content:
    """The content of a bytes-like or file-object source, hashed (spooled if unseekable)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return sources.from_bytes(source)
    if callable(getattr(source, "read", None)):
        name = getattr(source, "name", None)
        label = "-" if name == "<stdin>" else name if isinstance(name, str) and not name.startswith("<") else "<stream>"
        # A named file keeps its suffix: an old Office file's type is told by its name.
        return sources.from_stream(source, label, os.path.splitext(label)[1])  # type: ignore[arg-type]
    raise TypeError(f"get_or_upload takes a path, bytes, a binary file object or an https:// URL, "
                    f"not {type(source).__name__}")


def hold(source: Source) -> Source:
    """A source that can be read twice: a file object is read once, into a Content."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, Content)):
        return source
    return read(source)


def closing_after(source: object, flow: Flow[T]) -> Flow[T]:
    """Run ``flow``, then remove a Content's temporary file (blocking work, as an effect)."""
    try:
        return (yield from flow)
    finally:
        if isinstance(source, Content):
            yield from ask(Blocking(source.close))


class _Claims:
    """Keys a thread or task of this process is working on (a URL being fetched)."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, key: str) -> bool:
        """Take ``key`` if nobody holds it."""
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def release(self, key: str) -> None:
        """Give ``key`` back."""
        with self._lock:
            self._held.discard(key)
