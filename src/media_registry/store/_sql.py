"""Every rule of the Store contract, written once in SQL both databases speak, over a small
backend port.

A backend subclasses :class:`SQLStore` and provides the few primitives that really differ
between databases (model: dogpile.cache's ``CacheBackend``): a read, a write transaction, a
stream, the upload mutex, the time adapter, the host scope of paths (as SQL fragments) and
its own facts for ``stats``. Optional capabilities (the daemon lock, a pass's bookkeeping,
importing another registry) have a default here, so no caller ever asks which backend it has.

SQL is written once with named parameters (``:name``), ``ON CONFLICT`` and ``RETURNING``;
``{fragments}`` are the dialect's words, filled in once per backend class.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Protocol, TypeVar

from ..hashing import Fingerprint
from . import (
    ContentRef,
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

T = TypeVar("T")
Params = Mapping[str, Any]


class Cursor(Protocol):
    """What a statement gives back, in both drivers."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Every row left."""
        ...


class Tx(Protocol):
    """A connection inside one transaction: statements with ``:named`` parameters."""

    def execute(self, sql: str, params: Params, /) -> Cursor:
        """Run one statement."""
        ...


@functools.lru_cache(maxsize=256)  # the cache hit converts the same few moments over and over
def utc_text(moment: datetime) -> str:
    """A moment as SQLite stores it: UTC ISO-8601 to the second, 'YYYY-MM-DDTHH:MM:SSZ'."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"


def int64(value: int) -> int:
    """An unsigned 64-bit stat field (inode, device) as the signed integer databases store."""
    return value - (1 << 64) if value >= 1 << 63 else value


def uint64(value: int) -> int:
    """A stored stat field back as the unsigned value ``os.stat`` gives."""
    return value & 0xFFFF_FFFF_FFFF_FFFF


_MEDIA = ("SELECT m.media_id, m.sha256, m.phone_number_id, m.state, c.mime_type, m.uploaded_at, "
          "m.expires_at FROM media AS m JOIN contents AS c USING (sha256) WHERE ")
_URLS = "SELECT url, sha256, etag, last_modified, checked_at, refetchable FROM url_sources "
_CURRENT = ("SELECT media_id FROM media WHERE sha256 = :sha256 AND phone_number_id = :phone "
            "AND state = 'current' AND expires_at > :until")
_NEW_CONTENT = ("INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                "VALUES (:sha256, :mime, :size, :at) ON CONFLICT (sha256) DO UPDATE SET deleted_at = NULL")
_FINGERPRINT = "size_bytes = :size, mtime_ns = :mtime, ctime_ns = :ctime, inode = :inode, device = :device"
_RELEASE = "DELETE FROM leases WHERE sha256 = :sha256 AND phone_number_id = :phone AND owner = :owner"


class SQLStore:
    """The Store contract over a backend port: subclasses fill in the primitives below."""

    location: str
    host_id: str  # who claims owed DELETEs (and, on a shared database, whose paths they are)
    scope: dict[str, Any]  # the parameters of the dialect's fragments: at least "host"
    # The dialect's words: `here`/`p_here` scope paths to this host ("... AND "), `host_col`/
    # `host_val` add the host to inserted paths and events, `for_update`/`skip_locked` lock
    # rows where two writers could meet, `db_now`/`claim_until` are the database's clock,
    # `live_path` keeps paths of live hosts, `cutoff` reads :cutoffs (JSON) for a number.
    dialect: ClassVar[dict[str, str]]

    # -- the port ---------------------------------------------------------------------------

    def _read(self, sql: str, params: Params) -> list[Any]:
        """Every row of one read, outside any write transaction."""
        raise NotImplementedError

    def _read_one(self, sql: str, params: Params) -> Any:
        """The first row of one read, or None (the cache hit: keep it lean)."""
        raise NotImplementedError

    def _write(self, work: Callable[[Tx], T]) -> T:
        """``work`` in one short write transaction (retried whole if the backend may)."""
        raise NotImplementedError

    def _stream(self, sql: str, params: Params) -> Iterator[Any]:
        """The rows of one read, one snapshot, in constant memory."""
        raise NotImplementedError

    def _acquire(self, sha256: str, phone: str, owner: str, now: datetime,
                 claim: Callable[[Tx], LeaseOutcome]) -> LeaseOutcome:
        """The upload mutex: WAIT if another live owner holds (sha256, phone), else ``claim``
        (which writes the lease row) while holding it."""
        raise NotImplementedError

    def _time(self, value: Any) -> datetime:
        """A stored time back as an aware datetime."""
        raise NotImplementedError

    def _when(self, moment: datetime) -> Any:
        """A time as a parameter."""
        raise NotImplementedError

    def _paths(self, value: Any) -> tuple[str, ...]:
        """The paths column of :meth:`content_rows`."""
        raise NotImplementedError

    def _facts(self) -> dict[str, str | int]:
        """The backend's own facts for :meth:`stats`."""
        raise NotImplementedError

    # -- optional capabilities, with their defaults -------------------------------------------

    def _on_claim(self, owner: str, sha256: str, phone: str, work: Callable[[Tx, bool], T]) -> T:
        """Run ``work`` where the upload mutex of ``owner`` lives (told whether it still held
        it), then let the mutex go."""
        return self._write(lambda tx: work(tx, True))

    def _let_go(self, owner: str, sha256: str, phone: str) -> None:
        """Let the upload mutex of ``owner`` go (its lease row is already dropped)."""

    def _pass_started(self) -> None:
        """A lifecycle pass (refresh, purge) begins: the backend's bookkeeping."""

    def daemon_lock(self) -> AbstractContextManager[None]:
        """Hold the lock that lets one daemon serve this registry (per host, where hosts
        share it) for the block; RegistryLocked if another holds it."""
        return nullcontext()

    def close(self) -> None:
        """Release every connection; the store is not used afterwards."""

    # -- helpers ----------------------------------------------------------------------------

    @classmethod
    @functools.cache
    def _sql(cls, template: str) -> str:
        return template.format(**cls.dialect)

    def _scope(self, **params: Any) -> dict[str, Any]:
        return {**self.scope, **params}

    def _log(self, tx: Tx, at: datetime, action: str, **fields: str | None) -> None:
        tx.execute(self._sql(
            "INSERT INTO events (at, action, sha256, media_id, phone_number_id, path, detail{host_cols}) "
            "VALUES (:at, :action, :sha256, :media_id, :phone_number_id, :path, :detail{host_vals})"),
            {"sha256": None, "media_id": None, "phone_number_id": None, "path": None, "detail": None,
             **fields, "at": self._when(at), "action": action, "host": self.host_id})

    def _media_rows(self, rows: list[Any]) -> list[MediaRow]:
        return [MediaRow._make((*row[:5], self._time(row[5]), self._time(row[6]))) for row in rows]

    def _url_source(self, row: Any) -> UrlSource:
        return UrlSource(row[0], row[1], row[2], row[3], self._time(row[4]), bool(row[5]))

    def _cutoffs(self, cutoffs: Cutoffs) -> dict[str, Any]:
        import json  # not on the cache hit's path

        return {"before": self._when(cutoffs.default),
                "cutoffs": json.dumps({phone: utc_text(at) for phone, at in cutoffs.by_phone})}

    def _fingerprint(self, fp: Fingerprint, sha256: str, at: datetime) -> dict[str, Any]:
        return self._scope(path=fp.path, sha256=sha256, size=fp.size, mtime=fp.mtime_ns, ctime=fp.ctime_ns,
                           inode=int64(fp.inode), device=int64(fp.device), at=self._when(at))

    # -- sending (the hot path) ---------------------------------------------------------------

    def lookup_path(self, fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        """See :meth:`Store.lookup_path`: one indexed read."""
        row = self._read_one(self._sql(
            """SELECT p.sha256, (
                   SELECT m.media_id FROM media AS m
                   WHERE m.sha256 = p.sha256 AND m.phone_number_id = :phone
                     AND m.state = 'current' AND m.expires_at > :until), p.seen_at
               FROM paths AS p
               WHERE {p_here}p.path = :path AND p.size_bytes = :size AND p.mtime_ns = :mtime
                 AND p.ctime_ns = :ctime AND p.inode = :inode AND p.device = :device"""),
            {"phone": phone_number_id, "until": self._when(valid_until), "host": self.host_id,
             "path": fp.path, "size": fp.size, "mtime": fp.mtime_ns, "ctime": fp.ctime_ns,
             "inode": int64(fp.inode), "device": int64(fp.device)})
        return None if row is None else PathHit(row[0], row[1], self._time(row[2]))

    def remember_path(self, fp: Fingerprint, sha256: str, mime_type: str, recorded_at: datetime) -> None:
        """See :meth:`Store.remember_path`."""
        params = {**self._fingerprint(fp, sha256, recorded_at), "mime": mime_type}

        def work(tx: Tx) -> None:
            tx.execute(_NEW_CONTENT, params)
            if self.dialect["touch_host"]:
                tx.execute(self.dialect["touch_host"], params)
            tx.execute(self._sql(
                """INSERT INTO paths ({host_col}path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at)
                   VALUES ({host_val}:path, :sha256, :size, :mtime, :ctime, :inode, :device, :at)
                   ON CONFLICT ({host_col}path) DO UPDATE SET sha256 = excluded.sha256,
                       size_bytes = excluded.size_bytes, mtime_ns = excluded.mtime_ns,
                       ctime_ns = excluded.ctime_ns, inode = excluded.inode, device = excluded.device,
                       seen_at = excluded.seen_at"""), params)

        self._write(work)

    def refresh_fingerprint(self, fp: Fingerprint, sha256: str, recorded_at: datetime) -> None:
        """See :meth:`Store.refresh_fingerprint`."""
        params = self._fingerprint(fp, sha256, recorded_at)
        self._write(lambda tx: tx.execute(self._sql(
            f"UPDATE paths SET {_FINGERPRINT}, seen_at = :at WHERE {{here}}path = :path AND sha256 = :sha256"),
            params))

    # -- single flight ------------------------------------------------------------------------

    def _serve_or_deleted(self, row: Any) -> LeaseOutcome | None:
        if row is None or row[0]:
            return LeaseOutcome(LeaseStatus.DELETED)
        return LeaseOutcome(LeaseStatus.SERVE, row[1]) if row[1] is not None else None

    _SERVE = ("SELECT c.deleted_at IS NOT NULL, (SELECT m.media_id FROM media AS m WHERE m.sha256 = c.sha256 "
              "AND m.phone_number_id = :phone AND m.state = 'current' AND m.expires_at > :until) "
              "FROM contents AS c WHERE c.sha256 = :sha256")

    def take_lease(
        self, sha256: str, phone_number_id: str, owner: str, now: datetime, valid_until: datetime,
        lease_for: timedelta,
    ) -> LeaseOutcome:
        """See :meth:`Store.take_lease`. Served without the mutex when possible: a refresh
        holding it must not make a sender wait for an ID still valid for the sender."""
        params = self._scope(sha256=sha256, phone=phone_number_id, owner=owner,
                             until=self._when(valid_until), expires=self._when(now + lease_for))
        outcome = self._serve_or_deleted(self._read_one(self._SERVE, params))
        if outcome is not None:
            return outcome

        def claim(tx: Tx) -> LeaseOutcome:
            # Under the mutex the lease row goes in unless the holder before us recorded an
            # ID (or the content was deleted) meanwhile.
            if tx.execute(self._sql(
                """INSERT INTO leases (sha256, phone_number_id, owner, expires_at{host_cols})
                   SELECT :sha256, :phone, :owner, :expires{host_vals}
                   WHERE EXISTS (SELECT 1 FROM contents WHERE sha256 = :sha256 AND deleted_at IS NULL)
                     AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = :sha256 AND phone_number_id = :phone
                                     AND state = 'current' AND expires_at > :until)
                   ON CONFLICT (sha256, phone_number_id) DO UPDATE SET
                       owner = excluded.owner, expires_at = excluded.expires_at{host_set}
                   RETURNING 1"""), params).fetchone() is not None:
                return LeaseOutcome(LeaseStatus.ACQUIRED)
            return (self._serve_or_deleted(tx.execute(self._SERVE, params).fetchone())
                    or LeaseOutcome(LeaseStatus.WAIT))  # changed again meanwhile: ask anew

        return self._acquire(sha256, phone_number_id, owner, now, claim)

    def renew_lease(self, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
        """See :meth:`Store.renew_lease`."""
        self._write(lambda tx: tx.execute(
            "UPDATE leases SET expires_at = :expires "
            "WHERE sha256 = :sha256 AND phone_number_id = :phone AND owner = :owner",
            {"expires": self._when(expires_at), "sha256": sha256, "phone": phone_number_id, "owner": owner}))

    def release_lease(self, sha256: str, phone_number_id: str, owner: str) -> None:
        """See :meth:`Store.release_lease`."""
        try:
            self._write(lambda tx: tx.execute(_RELEASE, {"sha256": sha256, "phone": phone_number_id,
                                                         "owner": owner}))
        finally:
            self._let_go(owner, sha256, phone_number_id)

    def record_upload(self, media: NewMedia, owner: str) -> Recorded:
        """See :meth:`Store.record_upload`."""
        return self._on_claim(owner, media.sha256, media.phone_number_id,
                              lambda tx, held: self._record(tx, media, owner, held))

    def _record(self, tx: Tx, media: NewMedia, owner: str, mutex_held: bool) -> Recorded:
        params = self._scope(media_id=media.media_id, sha256=media.sha256, phone=media.phone_number_id,
                             owner=owner, mime=media.mime_type, size=media.size_bytes,
                             at=self._when(media.uploaded_at), expires=self._when(media.expires_at))
        known = tx.execute("SELECT state FROM media WHERE media_id = :media_id", params).fetchone()
        if known is not None:  # recorded already (a retried call): nothing more to do
            tx.execute(_RELEASE, params)
            return Recorded.CONTENT_DELETED if known[0] == "deleting" else Recorded.CURRENT
        # A content deleted and already dropped comes back as deleted; locking its row orders
        # this against a concurrent mark_deleted.
        tx.execute("INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at, deleted_at) "
                   "VALUES (:sha256, :mime, :size, :at, :at) ON CONFLICT (sha256) DO NOTHING", params)
        deleted = tx.execute(self._sql("SELECT deleted_at IS NOT NULL FROM contents WHERE sha256 = :sha256"
                                       "{for_update}"), params).fetchone()[0]
        # Without its lease row, this upload began before a delete (which revokes leases; the
        # content may have been sent again since) unless the claim passed to another uploader:
        # the mutex was lost (a session that ended) or another owner holds the lease now.
        held = tx.execute(_RELEASE + " RETURNING 1", params).fetchone() is not None
        lost = not held and (not mutex_held or tx.execute(
            "SELECT 1 FROM leases WHERE sha256 = :sha256 AND phone_number_id = :phone", params).fetchone() is not None)
        state = "current" if held and not deleted else "deleting"
        if state == "current":
            tx.execute("UPDATE media SET state = 'superseded' "
                       "WHERE sha256 = :sha256 AND phone_number_id = :phone AND state = 'current'", params)
        tx.execute("INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at) "
                   "VALUES (:media_id, :sha256, :phone, :state, :at, :expires)", {**params, "state": state})
        why = "upload claim lost" if lost and not deleted else "content deleted meanwhile"
        self._log(tx, media.uploaded_at, media.action, sha256=media.sha256, media_id=media.media_id,
                  phone_number_id=media.phone_number_id, path=media.path,
                  detail=None if state == "current" else f"{why}: owes a remote DELETE")
        if state == "current":
            return Recorded.CURRENT
        return Recorded.CLAIM_LOST if lost and not deleted else Recorded.CONTENT_DELETED

    # -- lifecycle ----------------------------------------------------------------------------

    def expiring_media(self, before: Cutoffs) -> list[MediaRow]:
        """See :meth:`Store.expiring_media`: of contents not deleted that this host has a
        source of, or that no host has (bytes sent directly)."""
        self._pass_started()
        return self._media_rows(self._read(self._sql(
            _MEDIA + "{expiring} AND c.deleted_at IS NULL"
            " AND (EXISTS (SELECT 1 FROM paths AS p WHERE {p_here}p.sha256 = m.sha256)"
            " OR NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = m.sha256)) ORDER BY m.expires_at"),
            self._scope(**self._cutoffs(before))))

    def source_paths(self, sha256: str) -> list[SourcePath]:
        """See :meth:`Store.source_paths`."""
        rows = self._read(self._sql(
            "SELECT path, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at FROM paths "
            "WHERE {here}sha256 = :sha256 ORDER BY seen_at DESC"), self._scope(sha256=sha256))
        return [SourcePath(Fingerprint(path, size, mtime, ctime, uint64(inode), uint64(device)), self._time(seen))
                for path, size, mtime, ctime, inode, device, seen in rows]

    def sourced_contents(self) -> list[ContentRef]:
        """See :meth:`Store.sourced_contents`."""
        self._pass_started()
        rows = self._read(self._sql(
            "SELECT c.sha256, c.mime_type FROM contents AS c WHERE c.deleted_at IS NULL "
            "AND EXISTS (SELECT 1 FROM paths AS p WHERE {p_here}p.sha256 = c.sha256) ORDER BY c.sha256"),
            self._scope())
        return [ContentRef(*row) for row in rows]

    def forget_vanished(self, sha256: str, paths: list[str], now: datetime) -> bool:
        """See :meth:`Store.forget_vanished`: holding the content row, so that hosts purging
        it at once see each other's paths go."""

        def work(tx: Tx) -> bool:
            params = self._scope(sha256=sha256)
            if tx.execute(self._sql("SELECT 1 FROM contents WHERE sha256 = :sha256 AND deleted_at IS NULL"
                                    "{for_update}"), params).fetchone() is None:
                return False
            for path in paths:
                if tx.execute(self._sql("DELETE FROM paths WHERE {here}path = :path AND sha256 = :sha256"),
                              {**params, "path": path}).rowcount:
                    self._log(tx, now, "vanished", sha256=sha256, path=path)
            if tx.execute(self._sql(
                "SELECT EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = :sha256 AND {live_path})"
                " OR EXISTS (SELECT 1 FROM url_sources WHERE sha256 = :sha256)"), params).fetchone()[0]:
                return False
            self._mark_deleted(tx, sha256, now, "sources vanished")
            return True

        return self._write(work)

    def mark_deleted(self, sha256: str, now: datetime, reason: str) -> None:
        """See :meth:`Store.mark_deleted`."""
        self._write(lambda tx: self._mark_deleted(tx, sha256, now, reason))

    def _mark_deleted(self, tx: Tx, sha256: str, now: datetime, reason: str) -> None:
        params = {"sha256": sha256, "now": self._when(now)}
        tx.execute("UPDATE contents SET deleted_at = :now WHERE sha256 = :sha256", params)
        tx.execute("UPDATE media SET state = 'deleting' WHERE sha256 = :sha256", params)
        for table in ("paths", "url_sources", "leases"):
            tx.execute(f"DELETE FROM {table} WHERE sha256 = :sha256", params)
        self._log(tx, now, "delete", sha256=sha256, detail=reason)

    def pending_deletes(self, sha256: str | None = None) -> list[MediaRow]:
        """See :meth:`Store.pending_deletes`."""
        return self._media_rows(self._read(
            _MEDIA + "m.state = 'deleting' AND (CAST(:sha256 AS TEXT) IS NULL OR m.sha256 = :sha256) "
            "ORDER BY m.sha256, m.media_id", {"sha256": sha256}))

    def claim_deletes(self, sha256: str | None, claim_for: timedelta) -> list[MediaRow]:
        """See :meth:`Store.claim_deletes`: each owed DELETE is claimed for ``claim_for`` (rows
        another claimer holds locked are skipped). A host takes back its own claims (a DELETE
        that failed is retried by its next purge); another's pass to it once they lapse."""
        now = datetime.now(timezone.utc)
        params = self._scope(sha256=sha256, now=self._when(now), claim_for=claim_for,
                             claim_until=self._when(now + claim_for))
        rows = self._write(lambda tx: tx.execute(self._sql(
            """UPDATE media SET claimed_by = :host, claimed_until = {claim_until}
               WHERE media_id IN (
                   SELECT media_id FROM media WHERE state = 'deleting'
                     AND (CAST(:sha256 AS TEXT) IS NULL OR sha256 = :sha256)
                     AND (claimed_until IS NULL OR claimed_until < {db_now} OR claimed_by = :host){skip_locked})
               RETURNING media_id, sha256, phone_number_id, state,
                   (SELECT c.mime_type FROM contents AS c WHERE c.sha256 = media.sha256), uploaded_at, expires_at"""),
            params).fetchall())
        return sorted(self._media_rows(rows), key=lambda row: (row.sha256, row.media_id))

    def forget_media(self, media_id: str, now: datetime, action: str, detail: str | None = None) -> None:
        """See :meth:`Store.forget_media`."""

        def work(tx: Tx) -> None:
            row = tx.execute("DELETE FROM media WHERE media_id = :media_id RETURNING sha256, phone_number_id",
                             {"media_id": media_id}).fetchone()
            if row is None:
                return
            self._log(tx, now, action, sha256=row[0], media_id=media_id, phone_number_id=row[1], detail=detail)
            # A deleted content goes with its last media row; its events stay as history.
            tx.execute("DELETE FROM contents WHERE sha256 = :sha256 AND deleted_at IS NOT NULL "
                       "AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = :sha256)", {"sha256": row[0]})

        self._write(work)

    def expired_media(self, now: datetime) -> list[MediaRow]:
        """See :meth:`Store.expired_media`."""
        return self._media_rows(self._read(_MEDIA + "m.expires_at <= :now ORDER BY m.expires_at",
                                           {"now": self._when(now)}))

    # -- sources beyond paths ----------------------------------------------------------------

    def remember_content(self, sha256: str, mime_type: str, size_bytes: int, recorded_at: datetime) -> None:
        """See :meth:`Store.remember_content`."""
        self._write(lambda tx: tx.execute(_NEW_CONTENT, {"sha256": sha256, "mime": mime_type,
                                                         "size": size_bytes, "at": self._when(recorded_at)}))

    def current_media_id(self, sha256: str, phone_number_id: str, valid_until: datetime) -> str | None:
        """See :meth:`Store.current_media_id`."""
        row = self._read_one(_CURRENT, {"sha256": sha256, "phone": phone_number_id,
                                        "until": self._when(valid_until)})
        return None if row is None else str(row[0])

    def url_hit(self, url: str, phone_number_id: str, valid_until: datetime,
                checked_after: datetime) -> str | None:
        """See :meth:`Store.url_hit`: one indexed read."""
        row = self._read_one(
            "SELECT m.media_id FROM url_sources AS u JOIN media AS m USING (sha256) "
            "WHERE u.url = :url AND u.checked_at > :after AND m.phone_number_id = :phone "
            "AND m.state = 'current' AND m.expires_at > :until",
            {"url": url, "after": self._when(checked_after), "phone": phone_number_id,
             "until": self._when(valid_until)})
        return None if row is None else str(row[0])

    def url_source(self, url: str) -> UrlSource | None:
        """See :meth:`Store.url_source`."""
        row = self._read_one(_URLS + "WHERE url = :url", {"url": url})
        return None if row is None else self._url_source(row)

    def url_sources(self, sha256: str) -> list[UrlSource]:
        """See :meth:`Store.url_sources`."""
        return [self._url_source(row) for row in self._read(
            _URLS + "WHERE sha256 = :sha256 ORDER BY checked_at DESC", {"sha256": sha256})]

    def remember_url(self, source: UrlSource) -> None:
        """See :meth:`Store.remember_url`."""
        self._write(lambda tx: tx.execute(
            """INSERT INTO url_sources (url, sha256, etag, last_modified, checked_at, refetchable)
               VALUES (:url, :sha256, :etag, :last_modified, :checked_at, :refetchable)
               ON CONFLICT (url) DO UPDATE SET sha256 = excluded.sha256, etag = excluded.etag,
                   last_modified = excluded.last_modified, checked_at = excluded.checked_at,
                   refetchable = excluded.refetchable""",
            {**source._asdict(), "checked_at": self._when(source.checked_at)}))

    def touch_url(self, url: str, checked_at: datetime) -> None:
        """See :meth:`Store.touch_url`."""
        self._write(lambda tx: tx.execute("UPDATE url_sources SET checked_at = :at WHERE url = :url",
                                          {"at": self._when(checked_at), "url": url}))

    def forget_url(self, url: str, now: datetime, reason: str) -> None:
        """See :meth:`Store.forget_url`."""

        def work(tx: Tx) -> None:
            row = tx.execute("DELETE FROM url_sources WHERE url = :url RETURNING sha256", {"url": url}).fetchone()
            if row is not None:
                self._log(tx, now, "forget url", sha256=row[0], path=url, detail=reason)

        self._write(work)

    def invalidate_media(self, media_id: str, now: datetime, reason: str) -> bool:
        """See :meth:`Store.invalidate_media`."""

        def work(tx: Tx) -> bool:
            row = tx.execute("UPDATE media SET state = CASE WHEN state = 'deleting' THEN state "
                             "ELSE 'invalidated' END WHERE media_id = :media_id RETURNING sha256, phone_number_id",
                             {"media_id": media_id}).fetchone()
            if row is None:
                return False
            self._log(tx, now, "invalidate", sha256=row[0], media_id=media_id, phone_number_id=row[1],
                      detail=reason)
            return True

        return self._write(work)

    # -- inbound media ----------------------------------------------------------------------

    def record_inbound(self, row: InboundRow, detail: str | None = None) -> None:
        """See :meth:`Store.record_inbound`."""

        def work(tx: Tx) -> None:
            tx.execute(
                """INSERT INTO inbound (media_id, sha256, mime_type, size_bytes, path, downloaded_at)
                   VALUES (:media_id, :sha256, :mime_type, :size_bytes, :path, :downloaded_at)
                   ON CONFLICT (media_id) DO UPDATE SET sha256 = excluded.sha256,
                       mime_type = excluded.mime_type, size_bytes = excluded.size_bytes,
                       path = excluded.path, downloaded_at = excluded.downloaded_at""",
                {**row._asdict(), "downloaded_at": self._when(row.downloaded_at)})
            self._log(tx, row.downloaded_at, "download", sha256=row.sha256, media_id=row.media_id,
                      path=row.path, detail=detail)

        self._write(work)

    # -- reading for people ------------------------------------------------------------------

    def resolve(self, target: str) -> str | None:
        """See :meth:`Store.resolve`."""
        row = self._read_one(self._sql(
            "SELECT coalesce((SELECT sha256 FROM paths WHERE {here}path = :path),"
            " (SELECT sha256 FROM media WHERE media_id = :target LIMIT 1),"
            " (SELECT sha256 FROM contents WHERE sha256 = lower(:target)))"),
            self._scope(path=os.path.abspath(target), target=target))
        return None if row is None or row[0] is None else str(row[0])

    def sha256s_starting_with(self, prefix: str, limit: int) -> list[str]:
        """See :meth:`Store.sha256s_starting_with`; "g" sorts after every hex digit."""
        return [row[0] for row in self._read(
            "SELECT sha256 FROM contents WHERE sha256 >= :prefix AND sha256 < :end ORDER BY sha256 LIMIT :limit",
            {"prefix": prefix, "end": prefix + "g", "limit": limit})]

    def content_rows(
        self, *, sha256: str | None = None, expiring_before: datetime | None = None
    ) -> Iterator[ContentRow]:
        """See :meth:`Store.content_rows`: contents drive the plan, each looks up its current
        IDs (the one-current-ID index) and its paths: linear in the registry's size."""
        sql = self.listing_sql(one=sha256 is not None, expiring=expiring_before is not None)
        t = self._time
        params = self._scope(sha256=sha256, before=None if expiring_before is None else self._when(expiring_before))
        for row in self._stream(sql, params):
            yield ContentRow(row[0], row[1], row[2], t(row[3]), row[4] and t(row[4]), row[5], row[6],
                             row[7] and t(row[7]), row[8] and t(row[8]), self._paths(row[9]))

    @classmethod
    def listing_sql(cls, *, one: bool = False, expiring: bool = False) -> str:
        """The statement of :meth:`content_rows`: of one content (``:sha256``), of current
        IDs expiring before ``:before`` only."""
        return cls._sql(
            """SELECT c.sha256, c.mime_type, c.size_bytes, c.first_seen_at, c.deleted_at,
                      m.phone_number_id, m.media_id, m.uploaded_at, m.expires_at, {path_list}
               FROM contents AS c {join} media AS m ON m.sha256 = c.sha256 AND m.state = 'current' {until}
               {one} ORDER BY m.phone_number_id, c.first_seen_at, c.sha256""".replace(
                "{join}", "JOIN" if expiring else "LEFT JOIN").replace(
                "{until}", "AND m.expires_at < :before" if expiring else "").replace(
                "{one}", "WHERE c.sha256 = :sha256" if one else ""))

    def events(self, sha256: str) -> list[EventRow]:
        """See :meth:`Store.events`."""
        return [EventRow(self._time(row[0]), *row[1:]) for row in self._read(
            "SELECT at, action, media_id, phone_number_id, path, detail FROM events "
            "WHERE sha256 = :sha256 ORDER BY id", {"sha256": sha256})]

    def stats(self, now: datetime, expiring_before: Cutoffs) -> StoreStats:
        """See :meth:`Store.stats`. ``leases`` counts the uploads in flight: unexpired leases."""
        params = self._scope(now=self._when(now), **self._cutoffs(expiring_before))
        counts = self._read(self._sql(
            """SELECT
                 (SELECT count(*) FROM contents),
                 (SELECT count(*) FROM contents WHERE deleted_at IS NOT NULL),
                 (SELECT count(*) FROM paths WHERE {here}TRUE),
                 (SELECT count(*) FROM media WHERE state = 'current' AND expires_at > :now),
                 (SELECT count(*) FROM media AS m WHERE m.expires_at > :now AND {expiring}),
                 (SELECT count(*) FROM media WHERE expires_at <= :now),
                 (SELECT count(*) FROM media WHERE state = 'superseded'),
                 (SELECT count(*) FROM media WHERE state = 'deleting'),
                 (SELECT count(*) FROM events WHERE action IN ('upload', 'refresh')),
                 (SELECT count(*) FROM leases WHERE expires_at > :now)"""), params)[0]
        phones = self._read(self._sql(
            "SELECT phone_number_id, count(*) FILTER (WHERE state = 'current' AND expires_at > :now), "
            "count(*) FILTER (WHERE m.expires_at > :now AND {expiring}), "
            "count(*) FILTER (WHERE expires_at <= :now) FROM media AS m GROUP BY phone_number_id ORDER BY 1"),
            params)
        by_phone = {phone: PhoneStats(*numbers) for phone, *numbers in phones}
        return StoreStats._make((*counts, by_phone, self._facts()))


# "Expiring", shared by refresh and stats: a current ID at or before its number's cutoff
# (:cutoffs, a JSON object, for numbers with their own; :before, the widest, for the others).
EXPIRING = ("m.state = 'current' AND m.expires_at <= :before AND m.expires_at <= "
            "coalesce({cutoff}, :before)")
