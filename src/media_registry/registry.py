"""MediaRegistry: the one object senders use. It orchestrates the store and the Graph client."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import httpx

import tenacity

from . import blobs, hashing, media_types
from .config import Settings, load_settings
from .errors import (
    ConfigError,
    DownloadURLExpired,
    IntegrityError,
    GraphAPIError,
    MediaNotFound,
    MediaRegistryError,
    NotInRegistry,
    SourceNotFound,
)
from .graph import GraphClient
from .models import DownloadedMedia, LifecycleAction, MediaEvent, MediaRecord, Report
from .webhooks import media_in_webhook
from .store import Store, iso, new_owner, parse_iso

Clock = Callable[[], datetime]
OnAction = Callable[[LifecycleAction], None]


class Outcome(NamedTuple):
    """A media ID and whether the call that produced it uploaded the file."""

    media_id: str
    uploaded: bool


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(timezone.utc)


class MediaRegistry:
    """Media IDs that are valid now, uploading each content only once.

    Build it from the environment with :meth:`from_env`, or pass settings as arguments
    (``db``, ``token``, ``phone_number_id``, ``api_base``, ``ttl``, ``min_validity``, ...,
    the names of :class:`~media_registry.config.Settings`). Thread-safe; use one per process.
    ``transport`` swaps the HTTP transport (tests); ``clock`` swaps the time source.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        phone_number_id: str | None = None,
        settings: Settings | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = utc_now,
        **overrides: Any,
    ) -> None:
        self.settings = settings or load_settings(
            db=db, token=token, phone_number_id=phone_number_id, **overrides
        )
        self._clock = clock
        self.store = Store(self.settings.db, busy_timeout=self.settings.busy_timeout)
        token_value = self.settings.token.get_secret_value() if self.settings.token else None
        self.graph = GraphClient(
            token=token_value,
            api_base=self.settings.api_base,
            user_agent=self.settings.user_agent,
            timeout=self.settings.timeout,
            max_retries=self.settings.max_retries,
            backoff=self.settings.retry_backoff,
            media_host_suffixes=self.settings.media_hosts,
            transport=transport,
        )
        self._lease_for = timedelta(seconds=self.settings.lease_seconds)
        self._stopping = threading.Event()

    @classmethod
    def from_env(cls, **overrides: Any) -> MediaRegistry:
        """A registry configured from the environment; keyword arguments override it."""
        return cls(**overrides)

    def __enter__(self) -> MediaRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry's database connections and HTTP connection pool."""
        self.graph.close()
        self.store.close()

    # -- sending ------------------------------------------------------------------------

    def get_or_upload(
        self, path: str | os.PathLike[str], *, phone_number_id: str | None = None,
        mime_type: str | None = None,
    ) -> str:
        """A media ID for the file's content that stays valid for at least ``min_validity``.

        Served from the registry when possible (an unchanged file costs one ``stat`` and one
        query); otherwise the file is sniffed, checked against WhatsApp's limits, hashed and
        uploaded once, however many threads and processes ask at the same moment.
        """
        return self.get_or_upload_with_status(
            path, phone_number_id=phone_number_id, mime_type=mime_type
        ).media_id

    def get_or_upload_with_status(
        self, path: str | os.PathLike[str], *, phone_number_id: str | None = None,
        mime_type: str | None = None,
    ) -> Outcome:
        """Like :meth:`get_or_upload`, also telling whether this call uploaded the file."""
        phone = self._phone(phone_number_id)
        fp = hashing.fingerprint(path)
        valid_until = iso(self._clock() + self.settings.min_validity)
        hit = self.store.fast_lookup(fp, phone, valid_until)
        if hit is not None and hit.media_id is not None and mime_type is None:
            return Outcome(hit.media_id, uploaded=False)
        with hashing.open_source(fp.path) as file:
            head = file.read(media_types.SNIFF_BYTES)
            media_type = media_types.check(Path(path), head, fp.size, mime_type)
            if hit is not None:
                sha256 = hit.sha256
            else:
                file.seek(0)
                sha256 = hashing.sha256_file(file)
                hashing.ensure_unchanged(fp)
                self.store.remember_path(fp, sha256, media_type.mime_type, self._clock())
        if hit is not None and hit.media_id is not None:
            return Outcome(hit.media_id, uploaded=False)
        return self._single_flight(fp, sha256, phone, media_type.mime_type)

    def _single_flight(
        self, fp: hashing.Fingerprint, sha256: str, phone: str, mime_type: str,
        valid_for: timedelta | None = None, action: str = "upload",
    ) -> Outcome:
        """Serve an ID valid for ``valid_for`` (default ``min_validity``) if one exists or
        appears while waiting; else take the lease and upload, exactly once across processes."""
        owner = new_owner()
        delay = 0.02
        while True:
            now = self._clock()
            valid_until = iso(now + (valid_for or self.settings.min_validity))
            outcome = self.store.take_lease(sha256, phone, owner, now, valid_until, self._lease_for)
            if outcome.media_id is not None:
                return Outcome(outcome.media_id, uploaded=False)
            if outcome.acquired:
                media_id = self._upload_holding_lease(fp, sha256, phone, mime_type, owner, action)
                return Outcome(media_id, uploaded=True)
            time.sleep(delay)  # another thread or process is uploading these bytes
            delay = min(delay * 1.5, 0.25)

    def _upload_holding_lease(
        self, fp: hashing.Fingerprint, sha256: str, phone: str, mime_type: str, owner: str,
        action: str,
    ) -> str:
        with _LeaseKeeper(self, sha256, phone, owner):
            try:
                media_id = self.graph.upload(fp.path, mime_type, phone)
                # Bytes that changed under the upload must not be recorded under the old hash.
                hashing.ensure_unchanged(fp)
            except BaseException:
                self.store.release_lease(sha256, phone, owner)
                raise
            uploaded_at = self._clock()
            self.store.record_upload(
                sha256=sha256, phone_number_id=phone, media_id=media_id,
                uploaded_at=uploaded_at, expires_at=uploaded_at + self.settings.ttl,
                path=fp.path, owner=owner, action=action,
            )
        return media_id

    def _phone(self, phone_number_id: str | None) -> str:
        phone = phone_number_id or self.settings.phone_number_id
        if not phone:
            raise ConfigError(
                "no phone number ID: set WHATSAPP_PHONE_NUMBER_ID or pass phone_number_id="
            )
        return phone

    # -- lifecycle ----------------------------------------------------------------------

    def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Upload again every current ID with less than ``refresh_before`` left whose content
        still sits in a known source file; the new ID is recorded (and served) before the old
        one is retired. Content whose sources all vanished is skipped: purge deletes it.
        Runs ``refresh_concurrency`` uploads at a time; stops early after :meth:`stop`.
        ``on_action`` is called with each action as it completes (progress, logs).
        """
        now = self._clock()
        rows = self.store.expiring_media(iso(now + self.settings.refresh_before))

        def refresh_one(row: dict[str, Any]) -> LifecycleAction:
            found = _ids(row)
            source = self._find_source(row["sha256"], row["mime_type"])
            if source is None:
                return LifecycleAction(action="skipped", detail="no source file left", **found)
            if dry_run or self._stopping.is_set():
                why = f"would upload {source.path}" if dry_run else "stopping"
                return LifecycleAction(action="refreshed" if dry_run else "skipped", detail=why, **found)
            try:
                outcome = self._single_flight(
                    source, row["sha256"], row["phone_number_id"], row["mime_type"],
                    self.settings.refresh_before, action="refresh",
                )
            except MediaRegistryError as exc:
                return LifecycleAction(action="failed", detail=str(exc), **found)
            if not outcome.uploaded:
                return LifecycleAction(action="skipped", detail="already refreshed", **found)
            return LifecycleAction(action="refreshed", new_media_id=outcome.media_id, **found)

        report = Report(dry_run=dry_run)
        with ThreadPoolExecutor(max_workers=self.settings.refresh_concurrency) as pool:
            for action in pool.map(refresh_one, rows):
                _add(report, action, on_action)
        return report

    def delete(self, target: str | os.PathLike[str]) -> Report:
        """Forget a content (named by path, sha256 or media ID): its IDs are no longer served
        or refreshed, and each is DELETEd remotely now; any the API could not delete stay
        marked, and :meth:`purge` retries them."""
        sha256 = self.store.resolve(os.fspath(target))
        if sha256 is None:
            raise NotInRegistry(
                f"{target}: not in the registry; check the path, sha256 or media ID (see: ls)"
            )
        self.store.mark_deleted(sha256, self._clock(), reason=f"delete {target}")
        pending = [row for row in self.store.pending_deletes() if row["sha256"] == sha256]
        return Report(actions=[self._delete_remotely(row) for row in pending])

    def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Clean up: contents whose source files all vanished are deleted (remotely too);
        rows of expired IDs are dropped; remote DELETEs still owed are retried.
        ``on_action`` is called with each action as it completes."""
        report = Report(dry_run=dry_run)
        for sha256, mime_type in self.store.sourced_contents():
            if self._find_source(sha256, mime_type) is None:
                vanished = LifecycleAction(action="vanished", sha256=sha256,
                                           detail="all source files vanished")
                _add(report, vanished, on_action)
                if not dry_run:
                    self.store.mark_deleted(sha256, self._clock(), reason="sources vanished")
        for row in self.store.expired_media(iso(self._clock())):
            _add(report, LifecycleAction(action="expired", **_ids(row)), on_action)
            if not dry_run:
                self.store.forget_media(row["media_id"], self._clock(), "expired")
        for row in self.store.pending_deletes():
            if dry_run:
                action = LifecycleAction(action="deleted", detail="would DELETE", **_ids(row))
            else:
                action = self._delete_remotely(row)
            _add(report, action, on_action)
        return report

    def stop(self) -> None:
        """Ask a running refresh to finish its current uploads and start no new ones."""
        self._stopping.set()

    def _delete_remotely(self, row: dict[str, Any]) -> LifecycleAction:
        found = _ids(row)
        try:
            self.graph.delete(row["media_id"], row["phone_number_id"])
            detail = None
        except MediaNotFound:
            detail = "already gone from the API"
        except GraphAPIError as exc:
            return LifecycleAction(action="pending", detail=str(exc), **found)
        self.store.forget_media(row["media_id"], self._clock(), "deleted", detail)
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
        folder = Path(dest_dir) if dest_dir is not None else self.settings.blob_dir
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.max_retries + 1),
            wait=tenacity.wait_random_exponential(multiplier=self.settings.retry_backoff, max=30),
            retry=tenacity.retry_if_exception_type((IntegrityError, DownloadURLExpired)),
            reraise=True,
        )
        try:
            return retrying(self._download_once, media_id, folder, phone_number_id)
        except DownloadURLExpired:
            raise DownloadURLExpired(
                f"media {media_id}: every download URL had expired before it was fetched; "
                "check the clock of this machine, then try again"
            ) from None

    def _download_once(self, media_id: str, folder: Path, phone_number_id: str | None) -> DownloadedMedia:
        metadata = self.graph.get_media(media_id, phone_number_id)
        mime_type = metadata.mime_type.split(";")[0].strip()
        destination = folder / blobs.file_name(metadata.sha256, mime_type)
        fetched = not (destination.is_file() and destination.stat().st_size == metadata.file_size)
        if fetched:
            with self.graph.open_download(metadata.url) as chunks:
                blobs.write_verified(chunks, destination, metadata.file_size, metadata.sha256)
        self.store.record_inbound(media_id, metadata.sha256, mime_type, metadata.file_size,
                                  str(destination.resolve()), self._clock(),
                                  None if fetched else "already on disk")
        return DownloadedMedia(media_id=media_id, sha256=metadata.sha256, mime_type=mime_type,
                               size_bytes=metadata.file_size, path=destination, fetched=fetched)

    def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None
    ) -> list[DownloadedMedia]:
        """Download every media item a webhook payload carries (see :func:`media_in_webhook`);
        a webhook's own sha256 must agree with what was fetched."""
        downloaded = []
        for item in media_in_webhook(payload):
            result = self.download(item.media_id, dest_dir, phone_number_id=item.phone_number_id)
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
        now = self._clock()
        counts: dict[str, Any] = self.store.stats(iso(now), iso(now + self.settings.refresh_before))
        counts["db"] = str(self.settings.db)
        counts["db_bytes"] = sum(
            p.stat().st_size for p in self.settings.db.parent.glob(self.settings.db.name + "*")
        )
        return counts


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

    def __init__(self, registry: MediaRegistry, sha256: str, phone: str, owner: str) -> None:
        self._registry = registry
        self._key = (sha256, phone, owner)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="media-registry-lease")

    def _run(self) -> None:
        interval = self._registry.settings.lease_seconds / 3
        while not self._stop.wait(interval):
            expires_at = self._registry._clock() + self._registry._lease_for
            try:
                self._registry.store.renew_lease(*self._key, expires_at)
            except MediaRegistryError:
                pass  # a busy registry: the next beat tries again, well before expiry

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
