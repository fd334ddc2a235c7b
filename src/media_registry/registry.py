"""MediaRegistry and AsyncMediaRegistry: what senders use.

The rules live once, in :class:`_RegistryCore`, as generator "flows" that yield the I/O
they need (a Graph API call, blocking local work, a pause) and receive its result. Each
registry is only a driver for those flows: :class:`MediaRegistry` performs them inline with
the sync Graph client; :class:`AsyncMediaRegistry` awaits the async client and runs blocking
work (hashing, SQLite writes that may wait for a lock) in threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import httpx

from . import blobs, hashing, media_types, sources
from .config import Settings, Windows, load_settings
from .errors import (
    ConfigError,
    DownloadURLExpired,
    GraphAPIError,
    IntegrityError,
    MediaNotFound,
    MediaRegistryError,
    NotInRegistry,
    SourceNotFound,
    SourceUnavailable,
)
from .graph import AsyncGraphClient, GraphClient
from .models import DownloadedMedia, LifecycleAction, MediaEvent, MediaRecord, Report
from .pacing import shared_pacer
from .refusal import media_id_refused
from .sources import AsyncSourceFetcher, Content, SourceFetcher, Validators
from .store import Store, UrlSource, iso, new_owner, parse_iso
from .webhooks import media_in_webhook

T = TypeVar("T")
R = TypeVar("R", bound="_RegistryCore")
Clock = Callable[[], datetime]
OnAction = Callable[[LifecycleAction], None]
# What get_or_upload takes: a path, bytes, a binary file object, or an https:// URL string.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
Upload = hashing.Fingerprint | Content  # where the bytes to upload are
REFUSED = "Meta refused it at send time"


class Effect(NamedTuple):
    """One piece of I/O a flow asks its driver for: ``graph`` (a Graph client method by
    name), ``blocking`` (a local function that may wait, e.g. for the registry's lock),
    ``hashing`` (blocking work that may read a whole file) or ``sleep``."""

    kind: str
    target: Any
    args: tuple[Any, ...] = ()


Flow = Generator[Effect, Any, T]


def _graph(method: str, *args: Any) -> Effect:
    return Effect("graph", method, args)


def _blocking(function: Callable[..., Any], *args: Any) -> Effect:
    return Effect("blocking", function, args)


def _hashing(function: Callable[..., Any], *args: Any) -> Effect:
    """Blocking work that may hash a whole file."""
    return Effect("hashing", function, args)


def _sleep(seconds: float) -> Effect:
    return Effect("sleep", seconds)


def _fetch(url: str, known: Validators | None) -> Effect:
    """Download a URL source (None: HTTP 304, ``known`` still holds)."""
    return Effect("fetch", url, (known,))


class _Miss(NamedTuple):
    """What the fast path learned when it could not answer alone."""

    fp: hashing.Fingerprint
    sha256: str | None  # known from an unchanged fingerprint: no need to hash
    media_id: str | None  # a valid ID, held back only to check a declared MIME type
    phone: str


class Outcome(NamedTuple):
    """A media ID and whether the call that produced it uploaded the file."""

    media_id: str
    uploaded: bool


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(timezone.utc)


class _RegistryCore:
    """Settings, store and every rule of the registry; subclasses name their Graph client
    (``_client``) and drive the flows."""

    _client: Callable[..., Any]
    _fetcher: Callable[..., Any]

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        phone_number_id: str | None = None,
        settings: Settings | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        clock: Clock = utc_now,
        **overrides: Any,
    ) -> None:
        self.settings = settings or load_settings(
            db=db, token=token, phone_number_id=phone_number_id, **overrides
        )
        self._clock = clock
        self.store = Store(self.settings.db, busy_timeout=self.settings.busy_timeout)
        self._lease_for = timedelta(seconds=self.settings.lease_seconds)
        self._stopping = threading.Event()
        self._windows_by_phone: dict[str, Windows] = {}
        self._valid_until_cache: dict[timedelta, tuple[int, str]] = {}
        self.graph = self._client(transport=transport, **self._graph_options())
        # URL sources have a client of their own, without the token.
        self.sources = self._fetcher(ignore_query=self.settings.url_ignore_query,
                                     timeout=self.settings.timeout, user_agent=self.settings.user_agent)
        self._pacer = shared_pacer(self.settings.uploads_per_second)
        self._urls_in_flight = _Claims()

    @classmethod
    def from_env(cls: type[R], **overrides: Any) -> R:
        """A registry configured from the environment; keyword arguments override it."""
        return cls(**overrides)

    def _graph_options(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "token": settings.token.get_secret_value() if settings.token else None,
            "api_base": settings.api_base,
            "user_agent": settings.user_agent,
            "timeout": settings.timeout,
            "max_retries": settings.max_retries,
            "backoff": settings.retry_backoff,
            "media_host_suffixes": settings.media_hosts,
        }

    def stop(self) -> None:
        """Ask a running refresh to finish its current uploads and start no new ones."""
        self._stopping.set()

    # -- sending ------------------------------------------------------------------------

    def _fast_path(
        self, path: str | os.PathLike[str], phone_number_id: str | None, mime_type: str | None
    ) -> Outcome | _Miss:
        """The cache hit, done inline by both drivers: one stat and one indexed query."""
        phone = self._phone(phone_number_id)
        fp = hashing.fingerprint(path)
        row = self.store.fast_lookup(fp, phone, self._valid_until(self._windows(phone).min_validity))
        if row is None:
            return _Miss(fp, None, None, phone)
        if row[1] is not None and mime_type is None:
            return Outcome(row[1], uploaded=False)
        return _Miss(fp, row[0], row[1], phone)

    def _phone(self, phone_number_id: str | None) -> str:
        phone = phone_number_id or self.settings.phone_number_id
        if not phone:
            raise ConfigError(
                "no phone number ID: set WHATSAPP_PHONE_NUMBER_ID or pass phone_number_id="
            )
        return phone

    def _url_fast_path(self, url: str, phone_number_id: str | None, declared: str | None) -> Outcome | None:
        """The URL cache hit, inline in both drivers: checked within ``url_revalidate``, with
        a valid ID; no network, one indexed query."""
        if declared is not None:  # a declared type is checked against the bytes
            return None
        phone = self._phone(phone_number_id)
        media_id = self.store.url_hit(self.sources.key(url), phone,
                                      self._valid_until(self._windows(phone).min_validity),
                                      self._valid_until(-self.settings.url_revalidate))
        return None if media_id is None else Outcome(media_id, uploaded=False)

    def _windows(self, phone: str) -> Windows:
        """The TTL and validity windows of one number, worked out once."""
        windows = self._windows_by_phone.get(phone)
        if windows is None:
            windows = self._windows_by_phone[phone] = self.settings.windows(phone)
        return windows

    def _valid_until(self, validity: timedelta) -> str:
        """``iso(now + validity)``, computed once per second: this is on every cache hit."""
        now = self._clock()
        second = int(now.timestamp())
        cached = self._valid_until_cache.get(validity)
        if cached is not None and cached[0] == second:
            return cached[1]
        # The end of the current second: never less strict than the exact time would be.
        text = iso(datetime.fromtimestamp(second + 1, timezone.utc) + validity)
        self._valid_until_cache[validity] = (second, text)
        return text

    def _get_or_upload_flow(self, path: str | os.PathLike[str], miss: _Miss,
                            mime_type: str | None) -> Flow[Outcome]:
        media_type, sha256 = yield _hashing(self._examine, Path(path), miss, mime_type)
        if miss.media_id is not None:  # a declared type was checked against a cached ID
            return Outcome(miss.media_id, uploaded=False)
        return (yield from self._single_flight(miss.fp, sha256, miss.phone, media_type.mime_type))

    def _examine(self, path: Path, miss: _Miss, declared: str | None) -> tuple[media_types.MediaType, str]:
        """Sniff and check the file against WhatsApp's limits; hash and record it if new."""
        fp = miss.fp
        with hashing.open_source(fp.path) as file:
            head = file.read(media_types.SNIFF_BYTES)
            media_type = media_types.check(path, head, fp.size, declared)
            if miss.sha256 is not None:
                return media_type, miss.sha256
            file.seek(0)
            sha256 = hashing.sha256_file(file)
        hashing.ensure_unchanged(fp)
        self.store.remember_path(fp, sha256, media_type.mime_type, self._clock())
        return media_type, sha256

    def _single_flight(
        self, source: Upload, sha256: str, phone: str, mime_type: str,
        valid_for: timedelta | None = None, action: str = "upload",
    ) -> Flow[Outcome]:
        """Serve an ID valid for ``valid_for`` (default ``min_validity``) if one exists or
        appears while waiting; else take the lease and upload, exactly once across processes."""
        owner = new_owner()
        delay = 0.02
        valid_for = valid_for or self._windows(phone).min_validity
        while True:
            now = self._clock()
            valid_until = iso(now + valid_for)
            outcome = yield _blocking(
                self.store.take_lease, sha256, phone, owner, now, valid_until, self._lease_for
            )
            if outcome.media_id is not None:
                return Outcome(outcome.media_id, uploaded=False)
            if outcome.acquired:
                media_id = yield from self._upload_holding_lease(source, sha256, phone, mime_type, owner, action)
                return Outcome(media_id, uploaded=True)
            yield _sleep(delay)  # another thread, task or process is uploading these bytes
            delay = min(delay * 1.5, 0.25)

    def _upload_holding_lease(
        self, source: Upload, sha256: str, phone: str, mime_type: str, owner: str,
        action: str,
    ) -> Flow[str]:
        keeper = _LeaseKeeper(self, sha256, phone, owner)
        windows = self._windows(phone)
        try:
            wait = self._pacer.reserve(phone)
            if wait:
                yield _sleep(wait)
            # Meta starts the TTL when it receives the file: counting from before sending errs
            # on the safe side.
            uploaded_at = self._clock()
            if isinstance(source, Content):
                with source.file() as path:
                    media_id = yield _graph("upload", path, mime_type, phone, windows.ttl_minutes)
                named = source.label
            else:
                media_id = yield _graph("upload", source.path, mime_type, phone, windows.ttl_minutes)
                # Bytes that changed under the upload must not be recorded under the old hash.
                yield _blocking(hashing.ensure_unchanged, source)
                named = source.path
            yield _blocking(functools.partial(
                self.store.record_upload, sha256=sha256, phone_number_id=phone,
                media_id=media_id, uploaded_at=uploaded_at,
                expires_at=uploaded_at + windows.ttl, path=named, owner=owner,
                action=action,
            ))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our lease
            keeper.stop()
            self.store.release_lease(sha256, phone, owner)
            raise
        keeper.stop()
        return media_id

    # -- sources beyond paths ------------------------------------------------------------

    def _source_flow(self, source: Source | Content, phone_number_id: str | None,
                     declared: str | None) -> Flow[Outcome]:
        """get_or_upload of a URL, bytes or a file object (a path takes :meth:`_fast_path`)."""
        phone = self._phone(phone_number_id)
        if isinstance(source, str):
            return (yield from self._url_flow(source, phone, declared))
        if isinstance(source, Content):  # read once already (send_with_media)
            return (yield from self._content_flow(source, phone, declared))
        content = yield _hashing(_read, source)
        with content:
            return (yield from self._content_flow(content, phone, declared))

    def _content_flow(self, content: Content, phone: str, declared: str | None,
                      url: str | None = None) -> Flow[Outcome]:
        media_type = yield _hashing(content.media_type, declared)
        now = self._clock()
        yield _blocking(self.store.remember_content, content.sha256, media_type.mime_type, content.size, now)
        if url is not None:
            key = self.sources.key(url)
            yield _blocking(self.store.remember_url, UrlSource(
                key, content.sha256, content.validators.etag, content.validators.last_modified, now,
                sources.refetchable(url, key)))
        return (yield from self._single_flight(content, content.sha256, phone, media_type.mime_type))

    def _url_flow(self, url: str, phone: str, declared: str | None) -> Flow[Outcome]:
        """A URL's ID with no network within ``url_revalidate``; else one conditional GET.
        One thread or task of this process fetches a URL at a time; the others wait for it."""
        key = self.sources.key(url)
        delay = 0.02
        while True:
            known = yield _blocking(self.store.url_source, key)
            media_id = None if known is None else (yield _blocking(
                self.store.current_media_id, known.sha256, phone,
                self._valid_until(self._windows(phone).min_validity)))
            if media_id is not None and declared is None and self._fresh(known):
                return Outcome(media_id, uploaded=False)
            if self._urls_in_flight.claim(key):
                break
            yield _sleep(delay)
            delay = min(delay * 1.5, 0.25)
        try:
            return (yield from self._fetch_url(url, key, phone, declared, known if media_id else None))
        finally:
            self._urls_in_flight.release(key)

    def _fresh(self, known: UrlSource | None) -> bool:
        return known is not None and self._clock() < known.checked_at + self.settings.url_revalidate

    def _fetch_url(self, url: str, key: str, phone: str, declared: str | None,
                   known: UrlSource | None) -> Flow[Outcome]:
        """Fetch (conditionally when ``known`` has a valid ID), then serve or upload."""
        validators = Validators(known.etag, known.last_modified) if known else None
        try:
            content = yield _fetch(url, validators)
        except SourceNotFound:
            yield _blocking(self.store.forget_url, key, self._clock(), "the URL answered 404/410")
            raise
        if content is None and known is not None:  # 304: the same bytes, so the same ID
            yield _blocking(self.store.touch_url, key, self._clock())
            media_id = yield _blocking(self.store.current_media_id, known.sha256, phone,
                                       self._valid_until(self._windows(phone).min_validity))
            if media_id is not None:
                return Outcome(media_id, uploaded=False)
        if content is None:  # the ID went meanwhile: the bytes are needed
            content = yield _fetch(url, None)
        if content is None:
            raise SourceUnavailable(f"{key}: HTTP 304 to a request without validators; check the server")
        with content:
            return (yield from self._content_flow(content, phone, declared, url))

    def _refetch(self, sha256: str) -> Flow[Content | None]:
        """A URL source that still serves the content, fetched again; None if there is none."""
        for known in (yield _blocking(self.store.url_sources, sha256)):
            if not known.refetchable:
                continue  # a signed URL: its signature was never stored
            try:
                content = yield _fetch(known.url, None)
            except MediaRegistryError:
                continue
            if content is not None and content.sha256 == sha256:
                return content
            if content is not None:
                content.close()
        return None

    def _invalidate_flow(self, media_id: str, reason: str) -> Flow[None]:
        if not (yield _blocking(self.store.invalidate_media, media_id, self._clock(), reason)):
            raise NotInRegistry(f"media ID {media_id}: not in the registry; check the ID (see: ls)")

    # -- lifecycle ----------------------------------------------------------------------

    def _expiring_rows(self) -> list[dict[str, Any]]:
        # The global window is the widest; numbers with a shorter TTL narrow theirs.
        now = self._clock()
        rows = self.store.expiring_media(iso(now + self.settings.refresh_before))
        return [row for row in rows
                if row["expires_at"] <= iso(now + self._windows(row["phone_number_id"]).refresh_before)]

    def _refresh_one(self, row: dict[str, Any], dry_run: bool) -> Flow[LifecycleAction]:
        found = _ids(row)
        source: Upload | None = yield _hashing(self._find_source, row["sha256"], row["mime_type"])
        if source is None and not self._stopping.is_set():
            source = yield from self._refetch(row["sha256"])
        if source is None:
            return LifecycleAction(action="skipped", detail="no source file or URL left", **found)
        with _closing(source):
            return (yield from self._refresh_from(source, row, dry_run))

    def _refresh_from(self, source: Upload, row: dict[str, Any], dry_run: bool) -> Flow[LifecycleAction]:
        found = _ids(row)
        if dry_run:
            return LifecycleAction(action="refreshed", detail=f"would upload {_name(source)}", **found)
        if self._stopping.is_set():
            return LifecycleAction(action="skipped", detail="stopping", **found)
        try:
            outcome = yield from self._single_flight(
                source, row["sha256"], row["phone_number_id"], row["mime_type"],
                self._windows(row["phone_number_id"]).refresh_before, action="refresh",
            )
        except MediaRegistryError as exc:
            return LifecycleAction(action="failed", detail=str(exc), **found)
        if not outcome.uploaded:
            return LifecycleAction(action="skipped", detail="already refreshed", **found)
        return LifecycleAction(action="refreshed", new_media_id=outcome.media_id, **found)

    def _delete_flow(self, target: str | os.PathLike[str]) -> Flow[Report]:
        sha256 = yield _blocking(self.store.resolve, os.fspath(target))
        if sha256 is None:
            raise NotInRegistry(
                f"{target}: not in the registry; check the path, sha256 or media ID (see: ls)"
            )
        yield _blocking(self.store.mark_deleted, sha256, self._clock(), f"delete {target}")
        pending = yield _blocking(self.store.pending_deletes)
        report = Report()
        for row in pending:
            if row["sha256"] == sha256:
                report.actions.append((yield from self._delete_remotely(row)))
        return report

    def _purge_flow(self, dry_run: bool, on_action: OnAction | None) -> Flow[Report]:
        report = Report(dry_run=dry_run)
        for sha256, mime_type in (yield _blocking(self.store.sourced_contents)):
            if (yield _hashing(self._find_source, sha256, mime_type)) is None:
                vanished = LifecycleAction(action="vanished", sha256=sha256,
                                           detail="all source files vanished")
                _add(report, vanished, on_action)
                if not dry_run:
                    yield _blocking(self.store.mark_deleted, sha256, self._clock(), "sources vanished")
        for row in (yield _blocking(self.store.expired_media, iso(self._clock()))):
            _add(report, LifecycleAction(action="expired", **_ids(row)), on_action)
            if not dry_run:
                yield _blocking(self.store.forget_media, row["media_id"], self._clock(), "expired")
        for row in (yield _blocking(self.store.pending_deletes)):
            if dry_run:
                action = LifecycleAction(action="deleted", detail="would DELETE", **_ids(row))
            else:
                action = yield from self._delete_remotely(row)
            _add(report, action, on_action)
        return report

    def _delete_remotely(self, row: dict[str, Any]) -> Flow[LifecycleAction]:
        found = _ids(row)
        try:
            yield _graph("delete", row["media_id"], row["phone_number_id"])
            detail = None
        except MediaNotFound:
            detail = "already gone from the API"
        except GraphAPIError as exc:
            return LifecycleAction(action="pending", detail=str(exc), **found)
        yield _blocking(self.store.forget_media, row["media_id"], self._clock(), "deleted", detail)
        return LifecycleAction(action="deleted", detail=detail, **found)

    def _find_source(self, sha256: str, mime_type: str) -> hashing.Fingerprint | None:
        """A recorded source file that still holds the content, or None."""
        for recorded in self.store.source_paths(sha256):
            try:
                current = hashing.fingerprint(recorded.path)
                if current == recorded:
                    return current
                # Touched or copied over: only the bytes can say whether it still holds them.
                with hashing.open_source(current.path) as file:
                    if hashing.sha256_file(file) == sha256:
                        self.store.remember_path(current, sha256, mime_type, self._clock())
                        return current
            except SourceNotFound:
                continue
        return None

    # -- inbound media ------------------------------------------------------------------

    def _download_flow(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None, phone_number_id: str | None
    ) -> Flow[DownloadedMedia]:
        folder = Path(dest_dir) if dest_dir is not None else self.settings.blob_dir
        attempt = 0
        while True:
            attempt += 1
            try:
                return (yield from self._download_once(media_id, folder, phone_number_id))
            except (IntegrityError, DownloadURLExpired) as exc:
                if attempt > self.settings.max_retries:
                    if isinstance(exc, DownloadURLExpired):
                        raise DownloadURLExpired(
                            f"media {media_id}: every download URL had expired before it was "
                            "fetched; check the clock of this machine, then try again"
                        ) from None
                    raise
            cap = min(30.0, self.settings.retry_backoff * 2**attempt)
            yield _sleep(random.uniform(0, cap))  # full jitter, as for API calls

    def _download_once(
        self, media_id: str, folder: Path, phone_number_id: str | None
    ) -> Flow[DownloadedMedia]:
        metadata = yield _graph("get_media", media_id, phone_number_id)
        mime_type = metadata.mime_type.split(";")[0].strip()
        destination = folder / blobs.file_name(metadata.sha256, mime_type)
        fetched = not (destination.is_file() and destination.stat().st_size == metadata.file_size)
        if fetched:
            with blobs.VerifiedFile(destination, metadata.file_size, metadata.sha256) as file:
                yield _graph("download_to", metadata.url, file)
        yield _blocking(
            self.store.record_inbound, media_id, metadata.sha256, mime_type, metadata.file_size,
            str(destination.resolve()), self._clock(), None if fetched else "already on disk",
        )
        return DownloadedMedia(media_id=media_id, sha256=metadata.sha256, mime_type=mime_type,
                               size_bytes=metadata.file_size, path=destination, fetched=fetched)

    def _download_webhook_flow(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None
    ) -> Flow[list[DownloadedMedia]]:
        downloaded = []
        for item in media_in_webhook(payload):
            result = yield from self._download_flow(item.media_id, dest_dir, item.phone_number_id)
            if item.sha256 and item.sha256 != result.sha256:
                raise IntegrityError(
                    f"media {item.media_id}: the webhook's sha256 differs from the API's; "
                    f"kept {result.path} as the API describes it, check the webhook's source"
                )
            downloaded.append(result)
        return downloaded

    # -- reading ------------------------------------------------------------------------

    def lookup(self, target: str | os.PathLike[str], *, phone_number_id: str | None = None) -> MediaRecord | None:
        """The record for a path, sha256 or media ID, with its paths and history, or None.

        Only a path the registry has seen is found; a new file is not hashed here.
        """
        sha256 = self.store.resolve(os.fspath(target))
        if sha256 is None:
            return None
        rows = self.store.content_rows(sha256)
        wanted = phone_number_id or self.settings.phone_number_id
        row = next((r for r in rows if r["phone_number_id"] == wanted), rows[0])
        history = tuple(MediaEvent(**event) for event in self.store.events(sha256))
        return _record(row, history)

    def records(self, *, expiring_within: timedelta | None = None) -> list[MediaRecord]:
        """Every content with its current media ID per phone number (one record each).

        ``expiring_within`` keeps only IDs that expire within that time from now.
        """
        before = iso(self._clock() + expiring_within) if expiring_within is not None else None
        return [_record(row) for row in self.store.content_rows(expiring_before=before)]

    def stats(self) -> dict[str, Any]:
        """Counts of contents, paths and media IDs by state, for health checks."""
        now, before = iso(self._clock()), iso(self._clock() + self.settings.refresh_before)
        counts: dict[str, Any] = self.store.stats(now, before)
        counts["by_phone_number"] = self.store.stats_by_phone_number(now, before)
        counts["db"] = str(self.settings.db)
        counts["db_bytes"] = sum(
            p.stat().st_size for p in self.settings.db.parent.glob(self.settings.db.name + "*")
        )
        return counts


class MediaRegistry(_RegistryCore):
    """Media IDs that are valid now, uploading each content only once.

    Build it from the environment with :meth:`from_env`, or pass settings as arguments
    (``db``, ``token``, ``phone_number_id``, ``api_base``, ``ttl``, ``min_validity``, ...,
    the names of :class:`~media_registry.config.Settings`). Thread-safe; use one per process.
    ``transport`` swaps the HTTP transport (an ``httpx.BaseTransport``, for tests); ``clock``
    swaps the time source.
    """

    _client = GraphClient
    _fetcher = SourceFetcher
    graph: GraphClient
    sources: SourceFetcher

    def __enter__(self) -> MediaRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry's database connections and HTTP connection pools."""
        self.graph.close()
        self.sources.close()
        self.store.close()

    def _drive(self, flow: Flow[T]) -> T:
        """Run a flow, performing its effects inline."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value, error = self._perform(effect), None
            except BaseException as exc:  # handed to the flow, which decides
                value, error = None, exc

    def _perform(self, effect: Effect) -> Any:
        if effect.kind == "graph":
            return getattr(self.graph, effect.target)(*effect.args)
        if effect.kind == "fetch":
            return self.sources.fetch(effect.target, *effect.args)
        if effect.kind == "sleep":
            return time.sleep(effect.target)
        return effect.target(*effect.args)

    def get_or_upload(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> str:
        """A media ID for the source's content that stays valid for at least ``min_validity``.

        ``source`` is a path (str or PathLike), bytes-like content, a binary file object
        (read once, in blocks), or a URL string starting with ``https://`` (``http://`` only
        to this machine). Served from the registry when possible (an unchanged file costs one
        ``stat`` and one query; a URL checked within ``url_revalidate`` makes no request);
        otherwise the content is sniffed, checked against WhatsApp's limits, hashed and
        uploaded once, however many threads and processes ask at the same moment. The same
        bytes named as a file, as bytes or by a URL share one media ID.
        """
        return self.get_or_upload_with_status(
            source, phone_number_id=phone_number_id, mime_type=mime_type).media_id

    def get_or_upload_with_status(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> Outcome:
        """Like :meth:`get_or_upload`, also telling whether this call uploaded the content."""
        if _is_path(source):
            found = self._fast_path(source, phone_number_id, mime_type)  # type: ignore[arg-type]
            if isinstance(found, Outcome):
                return found
            return self._drive(self._get_or_upload_flow(source, found, mime_type))  # type: ignore[arg-type]
        if isinstance(source, str) and (hit := self._url_fast_path(source, phone_number_id, mime_type)):
            return hit
        return self._drive(self._source_flow(source, phone_number_id, mime_type))

    def invalidate(self, media_id: str, *, reason: str = REFUSED) -> None:
        """Never serve ``media_id`` again (Meta refused it at send time: it died early); the
        next :meth:`get_or_upload` of its content uploads anew. The event log records why."""
        self._drive(self._invalidate_flow(media_id, reason))

    def send_with_media(self, source: Source, send: Callable[[str], T], *,
                        phone_number_id: str | None = None) -> T:
        """``send(media_id)`` with the source's media ID, and what it returns.

        When Meta refuses the ID as no longer valid (Graph error code 100, "... is not a
        valid whatsapp business account media attachment ID", raised or returned as an
        ``httpx.Response``; see :func:`~media_registry.media_id_refused`), the ID is
        invalidated, the content uploaded again and ``send`` called once more. Any other
        error reaches the caller untouched.
        """
        held = _hold(source)
        with _closing(held):
            media_id = self.get_or_upload(held, phone_number_id=phone_number_id)
            try:
                result = send(media_id)
            except Exception as exc:
                if not media_id_refused(exc):
                    raise
            else:
                if not media_id_refused(result):
                    return result
            self.invalidate(media_id)
            return send(self.get_or_upload(held, phone_number_id=phone_number_id))

    def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Upload again every current ID with less than ``refresh_before`` left whose content
        still sits in a known source file; the new ID is recorded (and served) before the old
        one is retired. Content whose sources all vanished is skipped: purge deletes it.
        Runs ``refresh_concurrency`` uploads at a time; stops early after :meth:`stop`.
        ``on_action`` is called with each action as it completes (progress, logs).
        """
        report = Report(dry_run=dry_run)
        with ThreadPoolExecutor(max_workers=self.settings.refresh_concurrency) as pool:
            flows = (self._refresh_one(row, dry_run) for row in self._expiring_rows())
            for action in pool.map(self._drive, flows):
                _add(report, action, on_action)
        return report

    def delete(self, target: str | os.PathLike[str]) -> Report:
        """Forget a content (named by path, sha256 or media ID): its IDs are no longer served
        or refreshed, and each is DELETEd remotely now; any the API could not delete stay
        marked, and :meth:`purge` retries them."""
        return self._drive(self._delete_flow(target))

    def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Clean up: contents whose source files all vanished are deleted (remotely too);
        rows of expired IDs are dropped; remote DELETEs still owed are retried.
        ``on_action`` is called with each action as it completes."""
        return self._drive(self._purge_flow(dry_run, on_action))

    def download(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None = None, *,
        phone_number_id: str | None = None,
    ) -> DownloadedMedia:
        """Fetch inbound media: fresh metadata, then the bytes, streamed into a temporary file
        while hashing, checked against the API's size and sha256, and renamed into place as
        ``<sha256>.<ext>`` in ``dest_dir`` (default: ``blob_dir``). Content already on disk is
        not fetched again. An expired URL or a bad transfer is retried with backoff (fresh
        metadata each time), then ends in one clear error with no partial file left.
        """
        return self._drive(self._download_flow(media_id, dest_dir, phone_number_id))

    def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None
    ) -> list[DownloadedMedia]:
        """Download every media item a webhook payload carries (see
        :func:`~media_registry.webhooks.media_in_webhook`); a webhook's own sha256 must agree
        with what was fetched."""
        return self._drive(self._download_webhook_flow(payload, dest_dir))


class AsyncMediaRegistry(_RegistryCore):
    """:class:`MediaRegistry` for asyncio senders, with the same verbs as coroutines.

    Cache hits run inline (one stat, one short query); hashing and SQLite writes run in
    threads so the event loop never waits on a lock or a large file; HTTP goes through
    ``httpx.AsyncClient``. Single flight holds across tasks, threads and processes alike.
    Arguments as for :class:`MediaRegistry` (``transport`` is an ``httpx.AsyncBaseTransport``).
    """

    _client = AsyncGraphClient
    _fetcher = AsyncSourceFetcher
    graph: AsyncGraphClient
    sources: AsyncSourceFetcher

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._one_hash_at_a_time = asyncio.Semaphore(1)

    async def __aenter__(self) -> AsyncMediaRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pools and the database connections."""
        await self.graph.aclose()
        await self.sources.aclose()
        self.store.close()

    async def _drive(self, flow: Flow[T]) -> T:
        """Run a flow, awaiting its effects."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value, error = await self._perform(effect), None
            except BaseException as exc:  # cancellation too: the flow releases its lease
                value, error = None, exc

    async def _perform(self, effect: Effect) -> Any:
        if effect.kind == "graph":
            return await getattr(self.graph, effect.target)(*effect.args)
        if effect.kind == "fetch":
            return await self.sources.fetch(effect.target, *effect.args)
        if effect.kind == "sleep":
            return await asyncio.sleep(effect.target)
        if effect.kind == "hashing":
            # Hashing threads contend with the event loop for the GIL: one at a time keeps the
            # loop responsive (8 new 10 MB files at once: 38 ms stalls become 8 ms).
            async with self._one_hash_at_a_time:
                return await asyncio.to_thread(effect.target, *effect.args)
        return await asyncio.to_thread(effect.target, *effect.args)

    async def get_or_upload(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> str:
        """See :meth:`MediaRegistry.get_or_upload`."""
        outcome = await self.get_or_upload_with_status(
            source, phone_number_id=phone_number_id, mime_type=mime_type
        )
        return outcome.media_id

    async def get_or_upload_with_status(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> Outcome:
        """See :meth:`MediaRegistry.get_or_upload_with_status`."""
        if _is_path(source):
            found = self._fast_path(source, phone_number_id, mime_type)  # type: ignore[arg-type]
            if isinstance(found, Outcome):
                return found
            return await self._drive(self._get_or_upload_flow(source, found, mime_type))  # type: ignore[arg-type]
        if isinstance(source, str) and (hit := self._url_fast_path(source, phone_number_id, mime_type)):
            return hit
        return await self._drive(self._source_flow(source, phone_number_id, mime_type))

    async def invalidate(self, media_id: str, *, reason: str = REFUSED) -> None:
        """See :meth:`MediaRegistry.invalidate`."""
        await self._drive(self._invalidate_flow(media_id, reason))

    async def send_with_media(self, source: Source, send: Callable[[str], Awaitable[T] | T], *,
                              phone_number_id: str | None = None) -> T:
        """See :meth:`MediaRegistry.send_with_media`; ``send`` may be a coroutine function."""
        held = await asyncio.to_thread(_hold, source)
        with _closing(held):
            media_id = await self.get_or_upload(held, phone_number_id=phone_number_id)
            try:
                result = await _call(send, media_id)
            except Exception as exc:
                if not media_id_refused(exc):
                    raise
            else:
                if not media_id_refused(result):
                    return result
            await self.invalidate(media_id)
            return await _call(send, await self.get_or_upload(held, phone_number_id=phone_number_id))

    async def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """See :meth:`MediaRegistry.refresh_expiring`; ``refresh_concurrency`` tasks at a time."""
        limit = asyncio.Semaphore(self.settings.refresh_concurrency)

        async def refresh(row: dict[str, Any]) -> LifecycleAction:
            async with limit:
                return await self._drive(self._refresh_one(row, dry_run))

        rows = await asyncio.to_thread(self._expiring_rows)
        report = Report(dry_run=dry_run)
        for action in await asyncio.gather(*(refresh(row) for row in rows)):
            _add(report, action, on_action)
        return report

    async def delete(self, target: str | os.PathLike[str]) -> Report:
        """See :meth:`MediaRegistry.delete`."""
        return await self._drive(self._delete_flow(target))

    async def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """See :meth:`MediaRegistry.purge`."""
        return await self._drive(self._purge_flow(dry_run, on_action))

    async def download(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None = None, *,
        phone_number_id: str | None = None,
    ) -> DownloadedMedia:
        """See :meth:`MediaRegistry.download`."""
        return await self._drive(self._download_flow(media_id, dest_dir, phone_number_id))

    async def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None
    ) -> list[DownloadedMedia]:
        """See :meth:`MediaRegistry.download_webhook`."""
        return await self._drive(self._download_webhook_flow(payload, dest_dir))


def _is_path(source: object) -> bool:
    return isinstance(source, os.PathLike) or (isinstance(source, str) and not sources.is_url(source))


def _read(source: object) -> Content:
    """The content of a bytes-like or file-object source, hashed (spooled if unseekable)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return sources.from_bytes(source)
    if callable(getattr(source, "read", None)):
        name = getattr(source, "name", None)
        label = "-" if name == "<stdin>" else name if isinstance(name, str) and not name.startswith("<") else "<stream>"
        return sources.from_stream(source, label)  # type: ignore[arg-type]
    raise TypeError(f"get_or_upload takes a path, bytes, a binary file object or an https:// URL, "
                    f"not {type(source).__name__}")


def _hold(source: Source) -> Source | Content:
    """A source that can be read twice: a file object is read once, into a Content."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        return source
    return _read(source)


@contextmanager
def _closing(source: object) -> Iterator[None]:
    """Remove a Content's temporary file when the block ends."""
    try:
        yield
    finally:
        if isinstance(source, Content):
            source.close()


def _name(source: Upload) -> str:
    return source.label if isinstance(source, Content) else source.path


async def _call(send: Callable[[str], Any], media_id: str) -> Any:
    result = send(media_id)
    return await result if inspect.isawaitable(result) else result


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


def _ids(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("sha256", "phone_number_id", "media_id")}


def _add(report: Report, action: LifecycleAction, on_action: OnAction | None) -> None:
    report.actions.append(action)
    if on_action is not None:
        on_action(action)


def _record(row: dict[str, Any], history: tuple[MediaEvent, ...] = ()) -> MediaRecord:
    return MediaRecord(
        sha256=row["sha256"],
        mime_type=row["mime_type"],
        size_bytes=row["size_bytes"],
        phone_number_id=row["phone_number_id"],
        media_id=row["media_id"],
        uploaded_at=parse_iso(row["uploaded_at"]),
        expires_at=parse_iso(row["expires_at"]),
        deleted_at=parse_iso(row["deleted_at"]),
        paths=tuple(row["paths"].split("\n")) if row["paths"] else (),
        history=history,
    )


class _LeaseKeeper:
    """Renews an upload lease from a background thread while the (slow) upload runs, so a
    live owner keeps it and a killed one loses it within ``lease_seconds``."""

    def __init__(self, registry: _RegistryCore, sha256: str, phone: str, owner: str) -> None:
        self._registry = registry
        self._key = (sha256, phone, owner)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="media-registry-lease")
        self._thread.start()

    def _run(self) -> None:
        interval = self._registry.settings.lease_seconds / 3
        while not self._stopped.wait(interval):
            expires_at = self._registry._clock() + self._registry._lease_for
            try:
                self._registry.store.renew_lease(*self._key, expires_at)
            except MediaRegistryError:
                pass  # a busy registry: the next beat tries again, well before expiry

    def stop(self) -> None:
        """Stop renewing (returns at once; the thread ends at its next wake-up)."""
        self._stopped.set()
