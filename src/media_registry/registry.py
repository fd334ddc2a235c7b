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
import os
import random
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import httpx

from . import blobs, hashing, media_types
from ._legacy_store import Store, iso, new_owner, parse_iso
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
)
from .graph import AsyncGraphClient, GraphClient
from .models import DownloadedMedia, LifecycleAction, MediaEvent, MediaRecord, Report
from .webhooks import media_in_webhook

T = TypeVar("T")
R = TypeVar("R", bound="_RegistryCore")
Clock = Callable[[], datetime]
OnAction = Callable[[LifecycleAction], None]


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
        self._valid_until_cache: tuple[int, timedelta, str] = (0, timedelta(), "")
        self.graph = self._client(transport=transport, **self._graph_options())

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
        phone = phone_number_id or self.settings.phone_number_id
        if not phone:
            raise ConfigError(
                "no phone number ID: set WHATSAPP_PHONE_NUMBER_ID or pass phone_number_id="
            )
        fp = hashing.fingerprint(path)
        row = self.store.fast_lookup(fp, phone, self._valid_until(self._windows(phone).min_validity))
        if row is None:
            return _Miss(fp, None, None, phone)
        if row[1] is not None and mime_type is None:
            return Outcome(row[1], uploaded=False)
        return _Miss(fp, row[0], row[1], phone)

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
        cached = self._valid_until_cache
        if cached[0] == second and cached[1] == validity:
            return cached[2]
        # The end of the current second: never less strict than the exact time would be.
        text = iso(datetime.fromtimestamp(second + 1, timezone.utc) + validity)
        self._valid_until_cache = (second, validity, text)
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
        self, fp: hashing.Fingerprint, sha256: str, phone: str, mime_type: str,
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
                media_id = yield from self._upload_holding_lease(fp, sha256, phone, mime_type, owner, action)
                return Outcome(media_id, uploaded=True)
            yield _sleep(delay)  # another thread, task or process is uploading these bytes
            delay = min(delay * 1.5, 0.25)

    def _upload_holding_lease(
        self, fp: hashing.Fingerprint, sha256: str, phone: str, mime_type: str, owner: str,
        action: str,
    ) -> Flow[str]:
        keeper = _LeaseKeeper(self, sha256, phone, owner)
        windows = self._windows(phone)
        # Meta starts the TTL when it receives the file: counting from before sending errs on
        # the safe side.
        uploaded_at = self._clock()
        try:
            media_id = yield _graph("upload", fp.path, mime_type, phone, windows.ttl_minutes)
            # Bytes that changed under the upload must not be recorded under the old hash.
            yield _blocking(hashing.ensure_unchanged, fp)
            yield _blocking(functools.partial(
                self.store.record_upload, sha256=sha256, phone_number_id=phone,
                media_id=media_id, uploaded_at=uploaded_at,
                expires_at=uploaded_at + windows.ttl, path=fp.path, owner=owner,
                action=action,
            ))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our lease
            keeper.stop()
            self.store.release_lease(sha256, phone, owner)
            raise
        keeper.stop()
        return media_id

    # -- lifecycle ----------------------------------------------------------------------

    def _expiring_rows(self) -> list[dict[str, Any]]:
        # The global window is the widest; numbers with a shorter TTL narrow theirs.
        now = self._clock()
        rows = self.store.expiring_media(iso(now + self.settings.refresh_before))
        return [row for row in rows
                if row["expires_at"] <= iso(now + self._windows(row["phone_number_id"]).refresh_before)]

    def _refresh_one(self, row: dict[str, Any], dry_run: bool) -> Flow[LifecycleAction]:
        found = _ids(row)
        source = yield _hashing(self._find_source, row["sha256"], row["mime_type"])
        if source is None:
            return LifecycleAction(action="skipped", detail="no source file left", **found)
        if dry_run:
            return LifecycleAction(action="refreshed", detail=f"would upload {source.path}", **found)
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
    graph: GraphClient

    def __enter__(self) -> MediaRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry's database connections and HTTP connection pool."""
        self.graph.close()
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
        if effect.kind == "sleep":
            return time.sleep(effect.target)
        return effect.target(*effect.args)

    def get_or_upload(
        self, path: str | os.PathLike[str], *, phone_number_id: str | None = None,
        mime_type: str | None = None,
    ) -> str:
        """A media ID for the file's content that stays valid for at least ``min_validity``.

        Served from the registry when possible (an unchanged file costs one ``stat`` and one
        query); otherwise the file is sniffed, checked against WhatsApp's limits, hashed and
        uploaded once, however many threads and processes ask at the same moment.
        """
        found = self._fast_path(path, phone_number_id, mime_type)
        if isinstance(found, Outcome):
            return found.media_id
        return self._drive(self._get_or_upload_flow(path, found, mime_type)).media_id

    def get_or_upload_with_status(
        self, path: str | os.PathLike[str], *, phone_number_id: str | None = None,
        mime_type: str | None = None,
    ) -> Outcome:
        """Like :meth:`get_or_upload`, also telling whether this call uploaded the file."""
        found = self._fast_path(path, phone_number_id, mime_type)
        if isinstance(found, Outcome):
            return found
        return self._drive(self._get_or_upload_flow(path, found, mime_type))

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
    graph: AsyncGraphClient

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._one_hash_at_a_time = asyncio.Semaphore(1)

    async def __aenter__(self) -> AsyncMediaRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool and the database connections."""
        await self.graph.aclose()
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
        if effect.kind == "sleep":
            return await asyncio.sleep(effect.target)
        if effect.kind == "hashing":
            # Hashing threads contend with the event loop for the GIL: one at a time keeps the
            # loop responsive (8 new 10 MB files at once: 38 ms stalls become 8 ms).
            async with self._one_hash_at_a_time:
                return await asyncio.to_thread(effect.target, *effect.args)
        return await asyncio.to_thread(effect.target, *effect.args)

    async def get_or_upload(
        self, path: str | os.PathLike[str], *, phone_number_id: str | None = None,
        mime_type: str | None = None,
    ) -> str:
        """See :meth:`MediaRegistry.get_or_upload`."""
        outcome = await self.get_or_upload_with_status(
            path, phone_number_id=phone_number_id, mime_type=mime_type
        )
        return outcome.media_id

    async def get_or_upload_with_status(
        self, path: str | os.PathLike[str], *, phone_number_id: str | None = None,
        mime_type: str | None = None,
    ) -> Outcome:
        """See :meth:`MediaRegistry.get_or_upload_with_status`."""
        found = self._fast_path(path, phone_number_id, mime_type)
        if isinstance(found, Outcome):
            return found
        return await self._drive(self._get_or_upload_flow(path, found, mime_type))

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
