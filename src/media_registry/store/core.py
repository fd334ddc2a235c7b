"""The Store: every operation the registry asks of its database, each written once over a
:class:`~media_registry.store.backend.Backend` (the SQL is in :mod:`media_registry.store._sql`).

Unless said otherwise, a writing operation is one atomic transaction: all of it or none of
it is visible to others, and it never spans a network call. Reads see committed data only.
Errors are :class:`~media_registry.errors.RegistryError` subclasses whose message names the
database (never a password) and what to do.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

from ..content.hashing import Fingerprint
from . import _sql as q
from .backend import SIGNED, Backend, Tx, int64, uint64, utc_text
from .rows import (
    ContentRow,
    Cutoffs,
    EventRow,
    InboundRow,
    LeaseOutcome,
    LeaseStatus,
    MediaRow,
    NewMedia,
    PathHit,
    PhoneStats,
    Recorded,
    SourcePath,
    StoreStats,
    UrlSource,
)

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any

_new_tuple = tuple.__new__


class Store:
    """The registry's database: the rules of the contract over ``backend``'s primitives."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Bound once: the cache hits take no attribute hop through the backend.
        self._read_one, self._read, self._write = backend.read_one, backend.read, backend.write
        self._when, self._time = backend.when, backend.time
        self._sql: Callable[[str], str] = functools.cache(lambda template: template.format_map(backend.dialect))
        self._lookup = backend.positional(self._sql(q.LOOKUP))
        self._url_hit, self._current = backend.positional(q.URL_HIT), backend.positional(q.CURRENT)
        self._here = (backend.host_id,) if backend.dialect["and_p_here"] else ()

    def lookup_path(self, fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        """The content recorded at a path whose fingerprint matches ``fp`` in every field, with its
        current media ID if that expires after ``valid_until``. One indexed read: every cache hit."""
        # fp is the statement's last parameters (inode, device stored signed); the answer is built
        # without PathHit's __new__ (a Python call).
        if fp[4] | fp[5] >= SIGNED:
            fp = fp._replace(inode=int64(fp.inode), device=int64(fp.device))
        row = self._read_one(self._lookup, (phone_number_id, self._when(valid_until)) + fp + self._here)
        return None if row is None else _new_tuple(PathHit, (row[0], row[1], self._time(row[2])))

    def remember_path(self, fp: Fingerprint, sha256: str, mime_type: str, recorded_at: datetime) -> None:
        """An explicit send: ``fp.path`` holds ``sha256`` (the content row is created if new,
        and a deletion mark is cleared: the user sends it again). Atomic."""
        params = {**self._fingerprint(fp, sha256, recorded_at), "mime": mime_type}
        self._write(lambda tx: self._run(tx, params, q.NEW_CONTENT, "{touch_host}", q.REMEMBER_PATH))

    def refresh_fingerprint(self, fp: Fingerprint, sha256: str, recorded_at: datetime) -> None:
        """Re-record the fingerprint of a path already known to hold ``sha256`` (touched, or
        hashed again under the racily-clean rule). Never revives a deleted content: a path
        that no longer points at ``sha256`` is left alone."""
        params = self._fingerprint(fp, sha256, recorded_at)
        self._write(lambda tx: self._run(tx, params, q.REFRESH_PATH))

    def take_lease(self, sha256: str, phone_number_id: str, owner: str, now: datetime, valid_until: datetime,
                   lease_for: timedelta) -> LeaseOutcome:
        """Atomically: SERVE a current ID valid past ``valid_until`` if there is one (without the
        mutex: a refresh holding it must not make a sender wait); else DELETED if the content is
        deleted or unknown; else take the lease (ACQUIRED) if it is free (absent, expired, or its
        holder died); else WAIT. At most one owner holds a lease at a time, fleet-wide."""
        params = {**self.backend.scope, "sha256": sha256, "phone": phone_number_id, "owner": owner,
                  "until": self._when(valid_until), "expires": self._when(now + lease_for)}
        outcome = _serve_or_deleted(self._read_one(q.SERVE, params))
        if outcome is not None:
            return outcome

        def claim(tx: Tx) -> LeaseOutcome:
            # Under the mutex the lease row goes in unless the holder before us recorded an
            # ID (or the content was deleted) meanwhile.
            if tx.execute(self._sql(q.TAKE_LEASE), params).fetchone() is not None:
                return LeaseOutcome(LeaseStatus.ACQUIRED)
            return _serve_or_deleted(tx.execute(q.SERVE, params).fetchone()) or LeaseOutcome(LeaseStatus.WAIT)

        return self.backend.acquire(sha256, phone_number_id, owner, now, claim)

    def renew_lease(self, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
        """Keep the lease alive until ``expires_at`` if ``owner`` still holds it."""
        params = {"expires": self._when(expires_at), "sha256": sha256, "phone": phone_number_id, "owner": owner}
        self._write(lambda tx: tx.execute(q.RENEW, params))

    def release_lease(self, sha256: str, phone_number_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` still holds it (idempotent)."""
        params = {"sha256": sha256, "phone": phone_number_id, "owner": owner}
        self.backend.release(owner, sha256, phone_number_id,
                             lambda: self._write(lambda tx: tx.execute(q.RELEASE, params)))

    def record_upload(self, media: NewMedia, owner: str) -> Recorded:
        """Atomically record a media ID just issued, log it and release ``owner``'s lease.

        Deletion wins: if the content was deleted after this owner took its lease (the
        delete revoked the lease) or is gone, the ID is recorded as owing a remote DELETE
        ('deleting') and CONTENT_DELETED is returned. If the claim passed to another uploader
        (PostgreSQL: a server restart ended the session holding it), the ID owes a remote
        DELETE too and CLAIM_LOST is returned. Otherwise it becomes the current ID and the
        previous current one is superseded (the one-current-ID invariant holds at every
        commit), and a deletion mark is cleared. Recording the same media ID twice records
        it once."""
        return self.backend.on_claim(owner, media.sha256, media.phone_number_id,
                                     lambda tx, held: self._record(tx, media, owner, held))

    def _record(self, tx: Tx, media: NewMedia, owner: str, mutex_held: bool) -> Recorded:
        params = {**self.backend.scope, "media_id": media.media_id, "sha256": media.sha256,
                  "phone": media.phone_number_id, "owner": owner, "mime": media.mime_type,
                  "size": media.size_bytes, "at": self._when(media.uploaded_at),
                  "expires": self._when(media.expires_at)}
        known = tx.execute("SELECT state FROM media WHERE media_id = :media_id", params).fetchone()
        if known is not None:  # recorded already (a retried call): nothing more to do
            tx.execute(q.RELEASE, params)
            return Recorded.CONTENT_DELETED if known[0] == "deleting" else Recorded.CURRENT
        # A content deleted and already dropped comes back as deleted; locking its row orders
        # this against a concurrent mark_deleted.
        tx.execute(q.GONE_CONTENT, params)
        deleted = tx.execute(self._sql(q.IS_DELETED), params).fetchone()[0]
        # Without its lease row, this upload began before a delete (which revokes leases) unless
        # the claim passed to another uploader: the mutex was lost, or another owner holds it.
        held = tx.execute(q.RELEASE + " RETURNING 1", params).fetchone() is not None
        lost = not held and not deleted and (
            not mutex_held or tx.execute(q.LEASED, params).fetchone() is not None)
        state = "current" if held and not deleted else "deleting"
        if state == "current":
            tx.execute(q.SUPERSEDE, params)
        tx.execute(q.NEW_MEDIA, {**params, "state": state})
        why = "upload claim lost" if lost else "content deleted meanwhile"
        self._log(tx, media.uploaded_at, media.action, sha256=media.sha256, media_id=media.media_id,
                  phone_number_id=media.phone_number_id, path=media.path,
                  detail=None if state == "current" else f"{why}: owes a remote DELETE")
        if state == "current":
            return Recorded.CURRENT
        return Recorded.CLAIM_LOST if lost else Recorded.CONTENT_DELETED

    def expiring_media(self, before: Cutoffs) -> list[MediaRow]:
        """Current media IDs expiring at or before their number's cutoff whose content is not
        deleted and that this host has a source of (or no host has: bytes sent), soonest first."""
        self.backend.pass_started()
        return self._media(self._sql(q.EXPIRING_MEDIA), self._cutoffs(before))

    def source_paths(self, sha256: str) -> list[SourcePath]:
        """The recorded source files of a content (this host's, for a shared database),
        most recently seen first."""
        rows = self._read(self._sql(q.SOURCE_PATHS), {**self.backend.scope, "sha256": sha256})
        return [SourcePath(Fingerprint(path, size, mtime, ctime, uint64(inode), uint64(device)), self._time(seen))
                for path, size, mtime, ctime, inode, device, seen in rows]

    def sourced_contents(self) -> list[str]:
        """The sha256s of contents not deleted that have at least one recorded source path (this host's)."""
        self.backend.pass_started()
        return [row[0] for row in self._read(self._sql(q.SOURCED), self.backend.scope)]

    def forget_vanished(self, sha256: str, paths: list[str], now: datetime) -> bool:
        """Atomically forget these source paths of a content (this host's: they vanished) and,
        when no path of a live host (seen within the host retention) is left and no URL serves
        it, mark it deleted as :meth:`mark_deleted` does. True when it was deleted. The
        content row is held, so that hosts purging it at once see each other's paths go."""
        params = {**self.backend.scope, "sha256": sha256}

        def work(tx: Tx) -> bool:
            if tx.execute(self._sql(q.LIVE_CONTENT), params).fetchone() is None:
                return False
            for path in paths:
                if tx.execute(self._sql(q.FORGET_PATH), {**params, "path": path}).rowcount:
                    self._log(tx, now, "vanished", sha256=sha256, path=path)
            if tx.execute(self._sql(q.STILL_SOURCED), params).fetchone()[0]:
                return False
            self._mark_deleted(tx, sha256, now, "sources vanished")
            return True

        return self._write(work)

    def mark_deleted(self, sha256: str, now: datetime, reason: str) -> None:
        """Atomically: mark the content deleted, every media ID of it as owing a remote
        DELETE, forget its paths, revoke its upload leases (an upload in flight then records
        nothing as current) and log it."""
        self._write(lambda tx: self._mark_deleted(tx, sha256, now, reason))

    def _mark_deleted(self, tx: Tx, sha256: str, now: datetime, reason: str) -> None:
        self._run(tx, {"sha256": sha256, "now": self._when(now)}, *q.MARK_DELETED)
        self._log(tx, now, "delete", sha256=sha256, detail=reason)

    def pending_deletes(self, sha256: str | None = None) -> list[MediaRow]:
        """Media IDs owing a remote DELETE (of one content, or all)."""
        return self._media(q.PENDING, {"sha256": sha256})

    def claim_deletes(self, sha256: str | None, claim_for: timedelta) -> list[MediaRow]:
        """The owed DELETEs (of one content, or all) this process is to send now, each claimed
        for ``claim_for`` (or until the ID is forgotten): a database shared by many hosts hands
        each to one claimer at a time, so each DELETE is sent once fleet-wide. A host takes
        back its own claims (a DELETE that failed is retried by its next purge)."""
        now = datetime.now(timezone.utc)
        params = {**self.backend.scope, "sha256": sha256, "now": self._when(now), "claim_for": claim_for,
                  "claim_until": self._when(now + claim_for)}
        rows = self._write(lambda tx: tx.execute(self._sql(q.CLAIM_DELETES), params).fetchall())
        return sorted(self._media_rows(rows), key=lambda row: (row.sha256, row.media_id))

    def forget_media(self, media_id: str, now: datetime, action: str, detail: str | None = None) -> None:
        """Atomically drop a media row (deleted remotely, or expired) and log why; a deleted
        content goes with its last media row (its events stay). Unknown IDs are ignored."""
        self._change_and_log(q.DROP_MEDIA, media_id, now, action, detail, q.DROP_DELETED_CONTENT)

    def expired_media(self, now: datetime) -> list[MediaRow]:
        """Media rows whose ID expired at or before ``now``, whatever their state."""
        return self._media(q.MEDIA + "m.expires_at <= :now ORDER BY m.expires_at", {"now": self._when(now)})

    def remember_content(self, sha256: str, mime_type: str, size_bytes: int, recorded_at: datetime) -> None:
        """An explicit send of content that has no path (bytes, a stream, a URL): the content
        row is created if new and a deletion mark is cleared; logged once per delete, as
        content that never vanishes with a file. Atomic."""
        params = {**self.backend.scope, "sha256": sha256, "mime": mime_type, "size": size_bytes,
                  "at": self._when(recorded_at), "detail": q.SENT_DETAIL}
        self._write(lambda tx: self._run(tx, params, q.NEW_CONTENT, q.SENT))

    def current_media_id(self, sha256: str, phone_number_id: str, valid_until: datetime) -> str | None:
        """The content's current media ID for that number, if it expires after ``valid_until``."""
        return (self.current_media(sha256, phone_number_id, valid_until) or (None,))[0]

    def current_media(self, sha256: str, phone: str, valid_until: datetime) -> tuple[str, str, datetime] | None:
        """As :meth:`current_media_id`, with the content's MIME type and the ID's expiry (a lookup's answer)."""
        row = self._read_one(self._current, (sha256, phone, self._when(valid_until)))
        return None if row is None else (str(row[0]), row[1], self._time(row[2]))

    def url_hit(self, url: str, phone_number_id: str, valid_until: datetime, checked_after: datetime) -> str | None:
        """The current media ID of what ``url`` (key form) served, if the URL was checked
        after ``checked_after`` and the ID expires after ``valid_until``. One indexed read:
        this is every URL cache hit."""
        row = self._read_one(self._url_hit, (url, self._when(checked_after), phone_number_id, self._when(valid_until)))
        return None if row is None else str(row[0])

    def url_source(self, url: str) -> UrlSource | None:
        """What ``url`` (key form) served when last fetched, if ever. Mappings are shared by
        every host of a fleet."""
        row = self._read_one(q.URLS + "WHERE url = :url", {"url": url})
        return None if row is None else self._url_source(row)

    def url_sources(self, sha256: str) -> list[UrlSource]:
        """The URLs known to serve a content, most recently checked first."""
        rows = self._read(q.URLS + "WHERE sha256 = :sha256 ORDER BY checked_at DESC", {"sha256": sha256})
        return [self._url_source(row) for row in rows]

    def remember_url(self, source: UrlSource) -> None:
        """Record (or replace) what a URL served, with its validators. Atomic."""
        params = {**source._asdict(), "checked_at": self._when(source.checked_at)}
        self._write(lambda tx: tx.execute(q.REMEMBER_URL, params))

    def touch_url(self, url: str, checked_at: datetime) -> None:
        """The URL still serves what it served (HTTP 304): trust it again from ``checked_at``."""
        params = {"at": self._when(checked_at), "url": url}
        self._write(lambda tx: tx.execute("UPDATE url_sources SET checked_at = :at WHERE url = :url", params))

    def forget_url(self, url: str, now: datetime, reason: str) -> None:
        """Drop a URL's mapping and log why; the content and its IDs stay. Atomic."""
        self._change_and_log(q.FORGET_URL, url, now, "forget url", reason)

    def invalidate_media(self, media_id: str, now: datetime, reason: str) -> bool:
        """Mark a media ID 'invalidated' (Meta refused it at send time): never served or
        refreshed again, dropped once expired; an ID owing a remote DELETE keeps owing it.
        Logs why. False if the ID is unknown. Atomic."""
        return self._change_and_log(q.INVALIDATE, media_id, now, "invalidate", reason)

    def record_inbound(self, row: InboundRow, detail: str | None = None) -> None:
        """Record a verified download (replacing an earlier one of the same ID) and log it."""

        def work(tx: Tx) -> None:
            tx.execute(q.INBOUND, {**row._asdict(), "downloaded_at": self._when(row.downloaded_at)})
            self._log(tx, row.downloaded_at, "download", sha256=row.sha256, media_id=row.media_id,
                      path=row.path, detail=detail)

        self._write(work)

    def resolve(self, target: str) -> str | None:
        """The sha256 that a path (made absolute; this host's), a media ID or a sha256 names,
        tried in that order, if the registry knows it."""
        row = self._read_one(self._sql(q.RESOLVE), {**self.backend.scope, "path": os.path.abspath(target),
                                                    "target": target})
        return None if row is None or row[0] is None else str(row[0])

    def sha256s_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` sha256s of known contents that start with ``prefix`` (lower-case
        hex), in order (one indexed range read; "g" sorts after every hex digit)."""
        return [row[0] for row in self._read(q.PREFIX, {"prefix": prefix, "end": prefix + "g", "limit": limit})]

    def content_rows(self, *, sha256: str | None = None,
                     expiring_before: datetime | None = None) -> Iterator[ContentRow]:
        """Every content (or one) per phone number, streamed in constant memory with a plan
        linear in the registry's size, ordered by phone number, first seen, sha256.
        ``expiring_before`` keeps only current IDs expiring before it. The iterator reads
        one consistent snapshot; close it (or exhaust it) promptly."""
        t, paths = self._time, self.backend.paths
        params = {**self.backend.scope, "sha256": sha256,
                  "before": None if expiring_before is None else self._when(expiring_before)}
        sql = self.listing_sql(one=sha256 is not None, expiring=expiring_before is not None)
        for row in self.backend.stream(sql, params):
            yield ContentRow(row[0], row[1], row[2], t(row[3]), row[4] and t(row[4]), row[5], row[6],
                             row[7] and t(row[7]), row[8] and t(row[8]), paths(row[9]))

    def listing_sql(self, *, one: bool = False, expiring: bool = False) -> str:
        """The statement of :meth:`content_rows`: of one content (``:sha256``), of current
        IDs expiring before ``:before`` only."""
        return self._sql(q.listing(one=one, expiring=expiring))

    def events(self, sha256: str) -> list[EventRow]:
        """The history of one content, oldest first."""
        return [EventRow(self._time(row[0]), *row[1:]) for row in self._read(q.EVENTS, {"sha256": sha256})]

    def stats(self, now: datetime, expiring_before: Cutoffs) -> StoreStats:
        """Counts of contents, paths and media IDs by state, per phone number (expiring: live
        and at or before its number's cutoff, as :meth:`expiring_media`; leases: unexpired
        ones, the uploads in flight), and the backend's own facts."""
        params = {**self._cutoffs(expiring_before), "now": self._when(now)}
        counts = self._read(self._sql(q.COUNTS), params)[0]
        by_phone = {phone: PhoneStats(*numbers) for phone, *numbers in self._read(self._sql(q.BY_PHONE), params)}
        return StoreStats._make((*counts, by_phone, self.backend.facts()))

    def close(self) -> None:
        """Release every connection; the store is not used afterwards."""
        self.backend.close()

    def _run(self, tx: Tx, params: dict[str, Any], *statements: str) -> None:
        for statement in statements:
            if sql := self._sql(statement):
                tx.execute(sql, params)

    def _change_and_log(self, sql: str, key: str, now: datetime, action: str, detail: str | None,
                        *then: str) -> bool:
        """Run ``sql`` (RETURNING the row's sha256 and phone number, or NULL) on ``key``; log the
        change and run ``then`` (on ``:sha256``) if there was a row: whether there was."""

        def work(tx: Tx) -> bool:
            row = tx.execute(sql, {"key": key}).fetchone()
            if row is not None:
                fields = {"path": key} if row[1] is None else {"media_id": key, "phone_number_id": row[1]}
                self._log(tx, now, action, sha256=row[0], detail=detail, **fields)
                self._run(tx, {"sha256": row[0]}, *then)
            return row is not None

        return self._write(work)

    def _log(self, tx: Tx, at: datetime, action: str, **fields: str | None) -> None:
        self.backend.changed(f"s:{fields.get('sha256')}")  # what a logged change touched leaves memory
        tx.execute(self._sql(q.LOG), {**q.NO_FIELDS, **fields, "at": self._when(at), "action": action,
                                      "host": self.backend.host_id})

    def _media(self, sql: str, params: dict[str, Any]) -> list[MediaRow]:
        return self._media_rows(self._read(sql, {**self.backend.scope, **params}))

    def _media_rows(self, rows: list[Any]) -> list[MediaRow]:
        return [MediaRow._make((*row[:5], self._time(row[5]), self._time(row[6]))) for row in rows]

    def _url_source(self, row: Any) -> UrlSource:
        return UrlSource(row[0], row[1], row[2], row[3], self._time(row[4]), bool(row[5]))

    def _cutoffs(self, cutoffs: Cutoffs) -> dict[str, Any]:
        import json  # not on the cache hit's path

        return {**self.backend.scope, "before": self._when(cutoffs.default),
                "cutoffs": json.dumps({phone: utc_text(at) for phone, at in cutoffs.by_phone})}

    def _fingerprint(self, fp: Fingerprint, sha256: str, at: datetime) -> dict[str, Any]:
        return {**self.backend.scope, "path": fp.path, "sha256": sha256, "size": fp.size, "mtime": fp.mtime_ns,
                "ctime": fp.ctime_ns, "inode": int64(fp.inode), "device": int64(fp.device), "at": self._when(at)}


def _serve_or_deleted(row: Any) -> LeaseOutcome | None:
    if row is None or row[0]:
        return LeaseOutcome(LeaseStatus.DELETED)
    return LeaseOutcome(LeaseStatus.SERVE, row[1]) if row[1] is not None else None
