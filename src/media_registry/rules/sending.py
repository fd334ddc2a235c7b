"""Sending: the cache hit, the get-or-upload flow, single flight and the lease keeper.

Deletion wins: an upload whose content is deleted before it records (or when it asks for the
lease) records nothing as current; the ID it just got is DELETEd at the API at once, or left
owed to purge when the API cannot be reached.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, NamedTuple

from ..content import hashing, media_types
from ..content.sources import Content
from ..errors import ConfigError, ContentDeleted, GraphAPIError, MediaNotFound, MediaRegistryError
from ..models import LifecycleAction
from ..store import LeaseOutcome, LeaseStatus, MediaRow, NewMedia, Recorded, new_owner
from .context import Context, wall_clock
from .effects import Blocking, DeleteMedia, Flow, Hashing, Sleep, Upload, ask

# Where the bytes to upload are: a source file (fingerprinted) or a hashed Content.
UploadSource = hashing.Fingerprint | Content


class _Answer(NamedTuple):
    media_id: str
    uploaded: bool


class Outcome(_Answer):
    """A media ID and whether the call that produced it uploaded the file (the pair it
    compares and unpacks as), with what the call learned of the content on the way: its
    ``sha256``, ``mime_type`` and the ID's ``expires_at`` (None where a cache hit did not
    need to know)."""

    # Class-level defaults: the cache hit builds its answer with only the sha256 set.
    sha256: str | None = None
    mime_type: str | None = None
    expires_at: datetime | None = None

    def __new__(cls, media_id: str, uploaded: bool, sha256: str | None = None,
                mime_type: str | None = None, expires_at: datetime | None = None) -> Outcome:
        outcome = tuple.__new__(cls, (media_id, uploaded))
        outcome.sha256, outcome.mime_type, outcome.expires_at = sha256, mime_type, expires_at
        return outcome

    @property
    def status(self) -> Literal["cached", "uploaded"]:
        """``uploaded`` or ``cached``."""
        return "uploaded" if self.uploaded else "cached"


class Miss(NamedTuple):
    """What the fast path learned when it could not answer alone."""

    fp: hashing.Fingerprint
    sha256: str | None  # known from an unchanged fingerprint: no need to hash
    media_id: str | None  # a valid ID, held back only to check a declared MIME type
    phone: str


class Sending:
    """The rules of ``get_or_upload``: serve a valid ID, else upload once across processes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def fast_path(
        self, path: str | os.PathLike[str], phone_number_id: str | None, mime_type: str | None
    ) -> tuple[str, str] | Miss:
        """The cache hit, done inline by both drivers: one stat and one indexed query. A hit is
        its (sha256, media ID); each caller builds only what it returns."""
        ctx = self.ctx
        phone = phone_number_id or ctx.settings.phone_number_id or ctx.phone(None)  # ctx.phone, inline
        fp = hashing.fingerprint(path)
        hit = ctx.store.lookup_path(fp, phone, ctx.min_valid_until(phone))
        if hit is None or hashing.racily_clean(fp, hit[2]):
            return Miss(fp, None, None, phone)  # new, changed, or not to be trusted: hash it
        media_id = hit[1]
        if media_id is not None and mime_type is None:
            return hit[0], media_id
        return Miss(fp, hit.sha256, hit.media_id, phone)

    def get_or_upload_flow(self, path: str | os.PathLike[str], miss: Miss,
                            mime_type: str | None) -> Flow[Outcome]:
        """After a cache miss: examine the file (sniff, check, hash if new), then serve the
        ID checked against a declared type, or go through single flight."""
        media_type, sha256 = yield from ask(Hashing(
            functools.partial(self._examine, Path(path), miss, mime_type)
        ))
        if miss.media_id is not None:  # a declared type was checked against a cached ID
            return Outcome(miss.media_id, uploaded=False, sha256=sha256, mime_type=media_type.mime_type)
        return (yield from self.single_flight(miss.fp, sha256, miss.phone, media_type.mime_type))

    def _examine(self, path: Path, miss: Miss, declared: str | None) -> tuple[media_types.MediaType, str]:
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
        self.ctx.store.remember_path(fp, sha256, media_type.mime_type, wall_clock())
        return media_type, sha256

    def single_flight(
        self, source: UploadSource, sha256: str, phone: str, mime_type: str,
        valid_for: timedelta | None = None, action: str = "upload",
    ) -> Flow[Outcome]:
        """Serve an ID valid for ``valid_for`` (default ``min_validity``) if one exists or
        appears while waiting; else take the lease and upload, exactly once across processes.
        A lease taken for a flow cancelled meanwhile is released (the effect's ``undo``).
        Raises ContentDeleted when the content is (or gets) deleted before its ID is recorded."""
        ctx = self.ctx
        owner = new_owner()
        delay = 0.02
        valid_for = valid_for or ctx.windows(phone).min_validity

        def release_if_taken(outcome: LeaseOutcome) -> None:
            if outcome.status is LeaseStatus.ACQUIRED:
                ctx.store.release_lease(sha256, phone, owner)

        while True:
            now = ctx.clock()
            outcome = yield from ask(Blocking(functools.partial(
                ctx.store.take_lease, sha256, phone, owner, now, now + valid_for, ctx.lease_for
            ), undo=release_if_taken))
            if outcome.status is LeaseStatus.SERVE and outcome.media_id is not None:
                return Outcome(outcome.media_id, uploaded=False, sha256=sha256, mime_type=mime_type)
            if outcome.status is LeaseStatus.DELETED:
                raise _deleted(source_name(source))
            if outcome.status is LeaseStatus.ACQUIRED:
                media = yield from self._upload_holding_lease(source, sha256, phone, mime_type, owner, action)
                if media is not None:
                    return Outcome(media.media_id, uploaded=True, sha256=sha256, mime_type=mime_type,
                                   expires_at=media.expires_at)
                continue  # the claim passed to another uploader: serve its ID, or claim anew
            yield from ask(Sleep(delay))  # another thread, task or process is uploading these bytes
            delay = min(delay * 1.5, 0.25)

    def _upload_holding_lease(
        self, source: UploadSource, sha256: str, phone: str, mime_type: str, owner: str,
        action: str,
    ) -> Flow[NewMedia | None]:
        """Upload with the lease held (renewed meanwhile) when the pacer allows, check the
        bytes did not change, and record the new ID (which releases the lease); on any
        failure, release it. The new media as recorded; if the content was deleted meanwhile,
        DELETE the new ID and raise ContentDeleted; if the claim passed to another uploader
        meanwhile, DELETE it and return None."""
        ctx = self.ctx
        keeper = LeaseKeeper(ctx, functools.partial(ctx.store.renew_lease, sha256, phone, owner))
        windows = ctx.windows(phone)
        try:
            wait = yield from ask(Blocking(functools.partial(ctx.pacer.reserve, phone)))  # shared: may be I/O
            if wait:
                yield from ask(Sleep(wait))
            # Meta starts the TTL when it receives the file: counting from before sending
            # errs on the safe side.
            uploaded_at = ctx.clock()
            try:
                media_id = yield from self._upload(source, mime_type, phone, windows.ttl_minutes)
            except MediaNotFound as exc:  # code 100/33 on an upload: the number is unknown, not the media
                raise _unknown_number(phone, exc) from None
            media = NewMedia(media_id, sha256, phone, mime_type, source.size, uploaded_at,
                             uploaded_at + windows.ttl, source_name(source), action)
            recorded = yield from ask(Blocking(functools.partial(ctx.store.record_upload, media, owner)))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our lease
            keeper.stop()
            yield from ask(Blocking(functools.partial(ctx.store.release_lease, sha256, phone, owner)))
            raise
        keeper.stop()
        if recorded is Recorded.CURRENT:
            return media
        owed = MediaRow(media_id, sha256, phone, "deleting", mime_type, uploaded_at, media.expires_at)
        yield from self.delete_remotely(owed)
        if recorded is Recorded.CONTENT_DELETED:
            raise _deleted(source_name(source))
        return None

    def _upload(self, source: UploadSource, mime_type: str, phone: str, ttl_minutes: int | None) -> Flow[str]:
        if isinstance(source, Content):  # a file of its bytes, made and removed off the loop
            files = source.file()
            path = yield from ask(Hashing(files.__enter__))
            try:
                return (yield from ask(Upload(path, mime_type, phone, ttl_minutes)))
            finally:
                yield from ask(Blocking(functools.partial(files.__exit__, None, None, None)))
        media_id = yield from ask(Upload(source.path, mime_type, phone, ttl_minutes))
        # Bytes that changed under the upload must not be recorded under the old hash.
        yield from ask(Blocking(functools.partial(hashing.ensure_unchanged, source)))
        return media_id

    def delete_remotely(self, row: MediaRow) -> Flow[LifecycleAction]:
        """DELETE one ID at the API and forget it; an API failure leaves it owed to purge."""
        found = ids_of(row)
        try:
            yield from ask(DeleteMedia(row.media_id, row.phone_number_id))
            detail = None
        except MediaNotFound:
            detail = "already gone from the API"
        except GraphAPIError as exc:
            return LifecycleAction(action="pending", detail=str(exc), **found)
        yield from ask(Blocking(functools.partial(
            self.ctx.store.forget_media, row.media_id, self.ctx.clock(), "deleted", detail)))
        return LifecycleAction(action="deleted", detail=detail, **found)


def ids_of(row: MediaRow) -> dict[str, str]:
    """The names of a media row, as a LifecycleAction takes them."""
    return {"sha256": row.sha256, "phone_number_id": row.phone_number_id, "media_id": row.media_id}


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


class LeaseKeeper:
    """Renews an upload lease (``renew(expires_at)``) from a background thread while the
    (slow) upload runs, so a live owner keeps it and a killed one loses it within
    ``lease_seconds``."""

    def __init__(self, ctx: Context, renew: Callable[[datetime], None]) -> None:
        self._ctx = ctx
        self._renew = renew
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="media-registry-lease")
        self._thread.start()

    def _run(self) -> None:
        interval = self._ctx.settings.lease_seconds / 3
        while not self._stopped.wait(interval):
            expires_at = self._ctx.clock() + self._ctx.lease_for
            try:
                self._renew(expires_at)
            except MediaRegistryError:
                pass  # a busy registry: the next beat tries again, well before expiry

    def stop(self) -> None:
        """Stop renewing (returns at once; the thread ends at its next wake-up)."""
        self._stopped.set()
