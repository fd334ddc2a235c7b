"""Sending: the cache hit, the get-or-upload flow, single flight and the lease keeper."""

from __future__ import annotations

import functools
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from . import hashing, media_types
from ._core import RegistryCore
from ._flows import Blocking, Flow, Hashing, Sleep, Upload
from ._legacy_store import LeaseOutcome, iso, new_owner
from .errors import ConfigError, MediaRegistryError


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
        self.store.remember_path(fp, sha256, media_type.mime_type, self._clock())
        return media_type, sha256

    def _single_flight(
        self, fp: hashing.Fingerprint, sha256: str, phone: str, mime_type: str,
        valid_for: timedelta | None = None, action: str = "upload",
    ) -> Flow[Outcome]:
        """Serve an ID valid for ``valid_for`` (default ``min_validity``) if one exists or
        appears while waiting; else take the lease and upload, exactly once across processes.
        A lease taken for a flow cancelled meanwhile is released (the effect's ``undo``)."""
        owner = new_owner()
        delay = 0.02
        valid_for = valid_for or self._windows(phone).min_validity

        def release_if_taken(outcome: LeaseOutcome) -> None:
            if outcome.acquired:
                self.store.release_lease(sha256, phone, owner)

        while True:
            now = self._clock()
            outcome: LeaseOutcome = yield Blocking(functools.partial(
                self.store.take_lease, sha256, phone, owner, now, iso(now + valid_for), self._lease_for
            ), undo=release_if_taken)
            if outcome.media_id is not None:
                return Outcome(outcome.media_id, uploaded=False)
            if outcome.acquired:
                media_id = yield from self._upload_holding_lease(fp, sha256, phone, mime_type, owner, action)
                return Outcome(media_id, uploaded=True)
            yield Sleep(delay)  # another thread, task or process is uploading these bytes
            delay = min(delay * 1.5, 0.25)

    def _upload_holding_lease(
        self, fp: hashing.Fingerprint, sha256: str, phone: str, mime_type: str, owner: str,
        action: str,
    ) -> Flow[str]:
        """Upload with the lease held (renewed meanwhile), check the bytes did not change,
        and record the new ID (which releases the lease); on any failure, release it."""
        keeper = _LeaseKeeper(self, sha256, phone, owner)
        windows = self._windows(phone)
        # Meta starts the TTL when it receives the file: counting from before sending errs on
        # the safe side.
        uploaded_at = self._clock()
        try:
            media_id: str = yield Upload(fp.path, mime_type, phone, windows.ttl_minutes)
            # Bytes that changed under the upload must not be recorded under the old hash.
            yield Blocking(functools.partial(hashing.ensure_unchanged, fp))
            yield Blocking(functools.partial(
                self.store.record_upload, sha256=sha256, phone_number_id=phone,
                media_id=media_id, uploaded_at=uploaded_at,
                expires_at=uploaded_at + windows.ttl, path=fp.path, owner=owner,
                action=action,
            ))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our lease
            keeper.stop()
            yield Blocking(functools.partial(self.store.release_lease, sha256, phone, owner))
            raise
        keeper.stop()
        return media_id


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
