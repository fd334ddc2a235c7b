"""Sending: the cache hit, the get-or-upload flow, single flight and the lease keeper.

Deletion wins: an upload whose content is deleted before it records (or when it asks for the
lease) records nothing as current; the ID it just got is DELETEd at the API at once, or left
owed to purge when the API cannot be reached.
"""

from __future__ import annotations

import functools
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from . import hashing, media_types
from ._core import RegistryCore
from ._flows import Blocking, DeleteMedia, Flow, Hashing, Sleep, Upload
from .errors import ConfigError, ContentDeleted, GraphAPIError, MediaNotFound, MediaRegistryError
from .models import LifecycleAction
from .sources import Content
from .store import LeaseOutcome, LeaseStatus, MediaRow, NewMedia, Recorded, new_owner

# Where the bytes to upload are: a source file (fingerprinted) or a hashed Content.
UploadSource = hashing.Fingerprint | Content


class Outcome(NamedTuple):
    """A media ID and whether the call that produced it uploaded the file."""

    media_id: str
    uploaded: bool


class _Miss(NamedTuple):
    """What the fast path learned when it could not answer alone."""

    fp: hashing.Fingerprint
    sha256: str | None  # known from an unchanged fingerprint: no need to hash
    media_id: str | None  # a valid ID, held back only to check a declared MIME type
    phone: str


class Sending(RegistryCore):
    """The rules of ``get_or_upload``: serve a valid ID, else upload once across processes."""

    def _fast_path(
        self, path: str | os.PathLike[str], phone_number_id: str | None, mime_type: str | None
    ) -> Outcome | _Miss:
        """The cache hit, done inline by both drivers: one stat and one indexed query."""
        phone = self._phone(phone_number_id)
        fp = hashing.fingerprint(path)
        hit = self.store.lookup_path(fp, phone, self._valid_until(self._windows(phone).min_validity))
        if hit is None or hashing.racily_clean(fp, hit.recorded_at):
            return _Miss(fp, None, None, phone)  # new, changed, or not to be trusted: hash it
        if hit.media_id is not None and mime_type is None:
            return Outcome(hit.media_id, uploaded=False)
        return _Miss(fp, hit.sha256, hit.media_id, phone)

    def _get_or_upload_flow(self, path: str | os.PathLike[str], miss: _Miss,
                            mime_type: str | None) -> Flow[Outcome]:
        """After a cache miss: examine the file (sniff, check, hash if new), then serve the
        ID checked against a declared type, or go through single flight."""
        examined: tuple[media_types.MediaType, str] = yield Hashing(
            functools.partial(self._examine, Path(path), miss, mime_type)
        )
        media_type, sha256 = examined
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
        self.store.remember_path(fp, sha256, media_type.mime_type, wall_clock())
        return media_type, sha256

    def _single_flight(
        self, source: UploadSource, sha256: str, phone: str, mime_type: str,
        valid_for: timedelta | None = None, action: str = "upload",
    ) -> Flow[Outcome]:
        """Serve an ID valid for ``valid_for`` (default ``min_validity``) if one exists or
        appears while waiting; else take the lease and upload, exactly once across processes.
        A lease taken for a flow cancelled meanwhile is released (the effect's ``undo``).
        Raises ContentDeleted when the content is (or gets) deleted before its ID is recorded."""
        owner = new_owner()
        delay = 0.02
        valid_for = valid_for or self._windows(phone).min_validity

        def release_if_taken(outcome: LeaseOutcome) -> None:
            if outcome.status is LeaseStatus.ACQUIRED:
                self.store.release_lease(sha256, phone, owner)

        while True:
            now = self._clock()
            outcome: LeaseOutcome = yield Blocking(functools.partial(
                self.store.take_lease, sha256, phone, owner, now, now + valid_for, self._lease_for
            ), undo=release_if_taken)
            if outcome.status is LeaseStatus.SERVE and outcome.media_id is not None:
                return Outcome(outcome.media_id, uploaded=False)
            if outcome.status is LeaseStatus.DELETED:
                raise _deleted(source_name(source))
            if outcome.status is LeaseStatus.ACQUIRED:
                media_id = yield from self._upload_holding_lease(source, sha256, phone, mime_type, owner, action)
                if media_id is not None:
                    return Outcome(media_id, uploaded=True)
                continue  # the claim passed to another uploader: serve its ID, or claim anew
            yield Sleep(delay)  # another thread, task or process is uploading these bytes
            delay = min(delay * 1.5, 0.25)

    def _upload_holding_lease(
        self, source: UploadSource, sha256: str, phone: str, mime_type: str, owner: str,
        action: str,
    ) -> Flow[str | None]:
        """Upload with the lease held (renewed meanwhile) when the pacer allows, check the
        bytes did not change, and record the new ID (which releases the lease); on any
        failure, release it. If the content was deleted meanwhile, DELETE the new ID and
        raise ContentDeleted; if the claim passed to another uploader meanwhile, DELETE it
        and return None."""
        keeper = _LeaseKeeper(self, sha256, phone, owner)
        windows = self._windows(phone)
        try:
            wait = self._pacer.reserve(phone)
            if wait:
                yield Sleep(wait)
            # Meta starts the TTL when it receives the file: counting from before sending
            # errs on the safe side.
            uploaded_at = self._clock()
            try:
                media_id = yield from self._upload(source, mime_type, phone, windows.ttl_minutes)
            except MediaNotFound as exc:  # code 100/33 on an upload: the number is unknown, not the media
                raise _unknown_number(phone, exc) from None
            media = NewMedia(media_id, sha256, phone, mime_type, source.size, uploaded_at,
                             uploaded_at + windows.ttl, source_name(source), action)
            recorded: Recorded = yield Blocking(functools.partial(self.store.record_upload, media, owner))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our lease
            keeper.stop()
            yield Blocking(functools.partial(self.store.release_lease, sha256, phone, owner))
            raise
        keeper.stop()
        if recorded is Recorded.CURRENT:
            return media_id
        owed = MediaRow(media_id, sha256, phone, "deleting", mime_type, uploaded_at, media.expires_at)
        yield from self._delete_remotely(owed)
        if recorded is Recorded.CONTENT_DELETED:
            raise _deleted(source_name(source))
        return None

    def _upload(self, source: UploadSource, mime_type: str, phone: str, ttl_minutes: int | None) -> Flow[str]:
        if isinstance(source, Content):
            with source.file() as path:
                uploaded: str = yield Upload(path, mime_type, phone, ttl_minutes)
                return uploaded
        media_id: str = yield Upload(source.path, mime_type, phone, ttl_minutes)
        # Bytes that changed under the upload must not be recorded under the old hash.
        yield Blocking(functools.partial(hashing.ensure_unchanged, source))
        return media_id

    def _delete_remotely(self, row: MediaRow) -> Flow[LifecycleAction]:
        """DELETE one ID at the API and forget it; an API failure leaves it owed to purge."""
        found = ids_of(row)
        try:
            yield DeleteMedia(row.media_id, row.phone_number_id)
            detail = None
        except MediaNotFound:
            detail = "already gone from the API"
        except GraphAPIError as exc:
            return LifecycleAction(action="pending", detail=str(exc), **found)
        yield Blocking(functools.partial(
            self.store.forget_media, row.media_id, self._clock(), "deleted", detail))
        return LifecycleAction(action="deleted", detail=detail, **found)


def ids_of(row: MediaRow) -> dict[str, str]:
    """The names of a media row, as a LifecycleAction takes them."""
    return {"sha256": row.sha256, "phone_number_id": row.phone_number_id, "media_id": row.media_id}


def wall_clock() -> datetime:
    """The real time, whatever clock the registry runs on: a fingerprint's recording time is
    compared with the file's own timestamps (the racily-clean rule)."""
    return datetime.now(timezone.utc)


def _unknown_number(phone: str, exc: MediaNotFound) -> ConfigError:
    # On an upload, the object the Graph API does not know is the phone number: a setting to fix.
    return ConfigError(
        f"phone number ID {phone}: the Graph API does not know it (code {exc.code}, subcode "
        f"{exc.subcode}); check WHATSAPP_PHONE_NUMBER_ID or pass phone_number_id="
    )


def _deleted(path: str) -> ContentDeleted:
    return ContentDeleted(
        f"{path}: its content was deleted from the registry while this call uploaded it; "
        "nothing is served (the new ID is deleted too); send it again to upload it anew"
    )


def source_name(source: UploadSource) -> str:
    """How a source is named in the event log: its path, or its label (a URL's key form)."""
    return source.label if isinstance(source, Content) else source.path


class _LeaseKeeper:
    """Renews an upload lease from a background thread while the (slow) upload runs, so a
    live owner keeps it and a killed one loses it within ``lease_seconds``."""

    def __init__(self, registry: RegistryCore, sha256: str, phone: str, owner: str) -> None:
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
