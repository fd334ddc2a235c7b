"""Every rule of the Store contract written once, in SQL both databases speak, over the backend
port (:mod:`media_registry.store._port`): a backend is a subclass filling in the port."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ..hashing import Fingerprint
from ._port import _FINGERPRINT, _MEDIA, _NEW_CONTENT, _RELEASE, SENT_WITHOUT_A_FILE, Tx, int64, uint64
from ._reading import Reading
from .rows import ContentRef, Cutoffs, LeaseOutcome, LeaseStatus, MediaRow, NewMedia, PathHit, Recorded, SourcePath

T = TypeVar("T")


class SQLStore(Reading):
    """The Store contract over a backend port: subclasses fill in the port's primitives."""

    # -- sending (the hot path) ---------------------------------------------------------------

    @functools.cached_property
    def _lookup(self) -> str:
        return self._positional(self._sql(
            """SELECT p.sha256, (
                   SELECT m.media_id FROM media AS m
                   WHERE m.sha256 = p.sha256 AND m.phone_number_id = :phone
                     AND m.state = 'current' AND m.expires_at > :until), p.seen_at
               FROM paths AS p
               WHERE p.path = :path AND p.size_bytes = :size AND p.mtime_ns = :mtime
                 AND p.ctime_ns = :ctime AND p.inode = :inode AND p.device = :device{and_p_here}"""))

    def lookup_path(self, fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        """See :meth:`Store.lookup_path`: one indexed read, every cache hit: keep it lean."""
        inode, device = fp.inode, fp.device
        row = self._read_one(self._lookup, (
            phone_number_id, self._when(valid_until), fp.path, fp.size, fp.mtime_ns, fp.ctime_ns,
            inode if inode < 1 << 63 else int64(inode), device if device < 1 << 63 else int64(device)) + self._here)
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
                " OR EXISTS (SELECT 1 FROM url_sources WHERE sha256 = :sha256) OR " + SENT_WITHOUT_A_FILE),
                    params).fetchone()[0]:
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
