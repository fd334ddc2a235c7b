"""The PostgreSQL registry, for a fleet of senders on many hosts: every SQL statement of the
PostgreSQL backend lives in this module, but those of ``migrate`` (:mod:`media_registry.migrate`)
(install with ``pip install 'media-registry[postgres]'``).

It implements the same :class:`~media_registry.store.Store` contract as SQLite, with these
fleet rules (DESIGN.md, section 3, "Fleets"):

- Paths belong to a host (``MEDIA_REGISTRY_HOST_ID``): a host reads, checks and refreshes
  only its own paths; contents, media IDs, events and inbound media are shared.
- Single flight across hosts: the uploader of (content, phone number) holds a session-level
  advisory lock on a connection of its own for the upload's duration, outside any
  transaction. PostgreSQL frees it the moment that session ends, so a killed process's
  claim passes to another host within a poll, not a lease period. A ``leases`` row names
  the holder and lets a delete revoke the upload in flight (deletion wins).
- Each owed DELETE is claimed by one host (``FOR UPDATE SKIP LOCKED``) before it is sent.
- Transactions are short (READ COMMITTED, row locks where two writers could meet) and never
  span a network call; the schema's constraints hold the rules whatever the timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from ._pg_connection import Connection, Connections, connection_lost
from .dburl import PostgresURL
from .defaults import BUSY_TIMEOUT as BUSY_TIMEOUT_SECONDS
from .defaults import HOST_RETENTION as DEFAULT_HOST_RETENTION
from .defaults import PG_POOL_SIZE as DEFAULT_POOL_SIZE
from .errors import RegistryCorrupt, RegistryError, RegistryLocked, SchemaTooNew
from .hashing import Fingerprint
from .store import (
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

# The first key of PostgreSQL's two-key advisory locks: which kind of lock it is.
LOCK_SCHEMA = 0x6D72_0001  # migrations, one opener at a time
LOCK_UPLOAD = 0x6D72_0002  # one uploader per (content, phone number)
LOCK_DAEMON = 0x6D72_0003  # one daemon per host


def _schema() -> str:
    return resources.files("media_registry").joinpath("schema_postgres.sql").read_text("utf-8")


_URL_SOURCES_AND_INVALIDATED = """
-- 'invalidated': Meta refused the ID at send time; never served or refreshed, dropped once expired.
ALTER TABLE media DROP CONSTRAINT media_state_check;
ALTER TABLE media ADD CONSTRAINT media_state_check
    CHECK (state IN ('current', 'superseded', 'deleting', 'invalidated'));
-- What each URL source served when last fetched, shared by every host of the fleet: the URL
-- in key form (no signature, no user:password), the validators for a conditional GET.
CREATE TABLE url_sources (
    url           text PRIMARY KEY,
    sha256        text NOT NULL REFERENCES contents (sha256),
    etag          text,
    last_modified text,
    checked_at    timestamptz NOT NULL,
    refetchable   boolean NOT NULL
);
CREATE INDEX url_sources_by_content ON url_sources (sha256);
"""

# Named schema changes, applied in order, each in its own transaction and recorded in the
# `migrations` table. Append new ones; never edit or reorder the ones released.
MIGRATIONS: list[tuple[str, Any]] = [
    ("create registry", _schema),
    ("url sources and invalidated", lambda: _URL_SOURCES_AND_INVALIDATED),
]
TABLES = ("contents", "media", "hosts", "paths", "leases", "events", "inbound", "url_sources")


# "Expiring", shared by refresh and stats: a current ID at or before its number's cutoff
# (%(cutoffs)s, a JSON object, for numbers with their own; %(before)s, the widest, for the others).
EXPIRING_SQL = """m.state = 'current' AND m.expires_at <= %(before)s AND m.expires_at <= coalesce(
    (%(cutoffs)s::jsonb ->> m.phone_number_id)::timestamptz, %(before)s)"""


def lock_key(*parts: str) -> int:
    """A signed 32-bit key for an advisory lock on ``parts`` (a collision only makes two
    unrelated uploads take turns, never breaks a rule)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresStore:
    """The registry in the PostgreSQL database at ``url``, as seen from host ``host_id``."""

    def __init__(
        self, url: str | PostgresURL, *, create: bool = True,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS, host_id: str, pool_size: int | None = None,
        host_retention: timedelta = DEFAULT_HOST_RETENTION, setting: str = "MEDIA_REGISTRY_DB",
    ) -> None:
        self.url = url if isinstance(url, PostgresURL) else PostgresURL(url)
        self.setting = setting  # where the URL came from, for messages
        self.location = str(self.url)
        self.host_id = host_id
        self.host_retention = host_retention
        self.db = Connections(self.url, size=pool_size or DEFAULT_POOL_SIZE, timeout=busy_timeout, setting=setting)
        # Each upload in flight keeps its claim's session for the upload's whole duration: from
        # a pool of their own, so uploads never starve cache hits of connections.
        self.claim_sessions = Connections(self.url, size=pool_size or DEFAULT_POOL_SIZE, timeout=busy_timeout,
                                          setting=setting)
        self._claims: dict[str, Connection] = {}  # lease owner -> the session holding its lock
        self._claims_lock = threading.Lock()
        self._daemon_session: Connection | None = None  # holds this host's daemon lock
        self._daemon_mutex = threading.Lock()
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_claims(reference))
        with self.db.direct() as con:
            self._ensure_schema(con, create)
        if create:  # a read-only open (ls, stats) writes nothing: a read-only role may inspect
            self._touch_host()

    # -- schema ---------------------------------------------------------------------------

    def _ensure_schema(self, con: Connection, create: bool) -> None:
        try:
            applied = self._applied_migrations(con)
            if applied is None and not create:
                raise RegistryError(
                    f"no media-registry registry in {self.location}; create it with: media-registry init"
                )
            pending = [m for m in MIGRATIONS if m[0] not in (applied or set())]
            if pending:
                self._migrate(con)
        except psycopg.Error as exc:
            raise self.db.explain(exc) from None

    def _applied_migrations(self, con: Connection) -> set[str] | None:
        """Names of the migrations applied; None for an empty database; refuses a foreign one."""
        tables = {row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )}
        foreign = RegistryCorrupt(
            f"{self.location} holds tables that are not a media-registry registry (left "
            f"untouched); point {self.setting} at a database of its own"
        )
        if "migrations" not in tables:
            if tables:  # another application's database: never add our tables to it
                raise foreign
            return None
        try:  # another application's migrations table (Laravel, TypeORM, ...) is not ours
            names = {row[0] for row in con.execute("SELECT name FROM migrations")}
        except psycopg.errors.UndefinedColumn:
            raise foreign from None
        if MIGRATIONS[0][0] not in names:
            raise foreign
        unknown = names - {name for name, _ in MIGRATIONS}
        if unknown:
            raise SchemaTooNew(
                f"registry {self.location} has schema changes this media-registry does not know "
                f"({', '.join(sorted(unknown))}); upgrade: pip install -U media-registry"
            )
        return names

    def _migrate(self, con: Connection) -> None:
        # Every host may open the registry at once: one applies what is missing, the others
        # wait here (however long it takes) and then find nothing left to do.
        con.execute("SET lock_timeout = 0")
        con.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_SCHEMA,))
        try:
            applied = self._applied_migrations(con) or set()
            for name, step in MIGRATIONS:
                if name in applied:
                    continue
                with con.transaction():
                    con.execute(step())
                    con.execute("INSERT INTO migrations (name) VALUES (%s)", (name,))
        finally:
            con.execute("SELECT pg_advisory_unlock(%s, 0)", (LOCK_SCHEMA,))

    def _touch_host(self) -> None:
        """Record that this host is alive (at open, at each purge, with each new path)."""
        self.db.run(lambda con: con.execute(
            "INSERT INTO hosts (host_id, first_seen_at, last_seen_at) VALUES (%s, now(), now()) "
            "ON CONFLICT (host_id) DO UPDATE SET last_seen_at = now()",
            (self.host_id,),
        ))

    # -- sending (the hot path) -------------------------------------------------------------

    def lookup_path(self, fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        """The content at an unchanged path of this host, with its current ID if valid long enough."""
        row = self.db.run(lambda con: con.execute(
            """
            SELECT p.sha256, (
                SELECT m.media_id FROM media AS m
                WHERE m.sha256 = p.sha256 AND m.phone_number_id = %s
                  AND m.state = 'current' AND m.expires_at > %s), p.seen_at
            FROM paths AS p
            WHERE p.host_id = %s AND p.path = %s AND p.size_bytes = %s AND p.mtime_ns = %s
              AND p.ctime_ns = %s AND p.inode = %s AND p.device = %s
            """,
            (phone_number_id, valid_until, self.host_id, fp.path, fp.size, fp.mtime_ns,
             fp.ctime_ns, _int64(fp.inode), _int64(fp.device)),
            prepare=True,
        ).fetchone(), transaction=False)
        return PathHit(*row) if row else None

    def remember_path(self, fp: Fingerprint, sha256: str, mime_type: str, recorded_at: datetime) -> None:
        """This host's ``fp.path`` holds ``sha256``; an explicit send clears a deletion mark."""

        def work(con: Connection) -> None:
            con.execute(
                "INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (sha256) DO UPDATE SET deleted_at = NULL",
                (sha256, mime_type, fp.size, recorded_at),
            )
            self._upsert_path(con, fp, sha256, recorded_at)

        self.db.run(work)

    def _upsert_path(self, con: Connection, fp: Fingerprint, sha256: str, at: datetime) -> None:
        con.execute(
            "INSERT INTO hosts (host_id, first_seen_at, last_seen_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (host_id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
            (self.host_id, at, at),
        )
        con.execute(
            """
            INSERT INTO paths (host_id, path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (host_id, path) DO UPDATE SET
                sha256 = excluded.sha256, size_bytes = excluded.size_bytes,
                mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,
                inode = excluded.inode, device = excluded.device, seen_at = excluded.seen_at
            """,
            (self.host_id, fp.path, sha256, fp.size, fp.mtime_ns, fp.ctime_ns,
             _int64(fp.inode), _int64(fp.device), at),
        )

    def refresh_fingerprint(self, fp: Fingerprint, sha256: str, recorded_at: datetime) -> None:
        """Re-record the fingerprint of this host's path if it still points at ``sha256``."""
        self.db.run(lambda con: con.execute(
            "UPDATE paths SET size_bytes = %s, mtime_ns = %s, ctime_ns = %s, inode = %s, "
            "device = %s, seen_at = %s WHERE host_id = %s AND path = %s AND sha256 = %s",
            (fp.size, fp.mtime_ns, fp.ctime_ns, _int64(fp.inode), _int64(fp.device), recorded_at,
             self.host_id, fp.path, sha256),
        ))

    # -- single flight ------------------------------------------------------------------------

    def take_lease(
        self, sha256: str, phone_number_id: str, owner: str, now: datetime, valid_until: datetime,
        lease_for: timedelta,
    ) -> LeaseOutcome:
        """SERVE, DELETED, ACQUIRED (this process now holds the advisory lock on a session of
        its own until record_upload or release_lease) or WAIT (another session holds it)."""

        # Served without the lock when possible: a refresh holding it must not make a sender
        # wait for an ID that is still valid for the sender's purpose.
        outcome = self.db.run(lambda con: _serve_or_deleted(con, sha256, phone_number_id, valid_until),
                              transaction=False)
        if outcome is not None:
            return outcome

        def work(con: Connection) -> LeaseOutcome:
            key = lock_key(sha256, phone_number_id)
            if not _one(con.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_UPLOAD, key))):
                return LeaseOutcome(LeaseStatus.WAIT)
            # Under the lock, the lease row goes in unless the holder before us recorded an
            # ID (or the content was deleted) meanwhile: one statement, its own transaction.
            if con.execute(
                """
                INSERT INTO leases (sha256, phone_number_id, owner, host_id, expires_at)
                SELECT %(sha256)s, %(phone)s, %(owner)s, %(host)s, %(expires)s
                WHERE EXISTS (SELECT 1 FROM contents WHERE sha256 = %(sha256)s AND deleted_at IS NULL)
                  AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = %(sha256)s AND phone_number_id = %(phone)s
                                  AND state = 'current' AND expires_at > %(until)s)
                ON CONFLICT (sha256, phone_number_id) DO UPDATE SET
                    owner = excluded.owner, host_id = excluded.host_id, expires_at = excluded.expires_at
                RETURNING 1
                """,
                {"sha256": sha256, "phone": phone_number_id, "owner": owner, "host": self.host_id,
                 "expires": now + lease_for, "until": valid_until},
                prepare=True,
            ).fetchone() is None:
                con.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_UPLOAD, key))
                return (_serve_or_deleted(con, sha256, phone_number_id, valid_until)
                        or LeaseOutcome(LeaseStatus.WAIT))  # changed again meanwhile: ask anew
            with self._claims_lock:
                self._claims[owner] = con
            return LeaseOutcome(LeaseStatus.ACQUIRED)

        # Every claim session busy with an upload: wait a turn as for another's claim, never
        # holding a thread on the pool meanwhile (the uploads in flight need one to record).
        return self.claim_sessions.run(work, transaction=False, keep=lambda o: o.status is LeaseStatus.ACQUIRED,
                                       busy=lambda: LeaseOutcome(LeaseStatus.WAIT))

    def renew_lease(self, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
        """Push the lease row's expiry forward (the lock itself lives as long as its session)."""
        self.db.run(lambda con: con.execute(
            "UPDATE leases SET expires_at = %s WHERE sha256 = %s AND phone_number_id = %s AND owner = %s",
            (expires_at, sha256, phone_number_id, owner),
        ))

    def release_lease(self, sha256: str, phone_number_id: str, owner: str) -> None:
        """Drop the lease row and the lock, if ``owner`` holds them (idempotent)."""
        con = self._pop_claim(owner)
        try:
            self.db.run(lambda c: c.execute(
                "DELETE FROM leases WHERE sha256 = %s AND phone_number_id = %s AND owner = %s",
                (sha256, phone_number_id, owner),
            ))
        except RegistryError:
            pass  # the server is out of reach: the lock died with the session, the row is inert
        finally:
            if con is not None:
                self._unlock(con, sha256, phone_number_id)

    def _pop_claim(self, owner: str) -> Connection | None:
        with self._claims_lock:
            return self._claims.pop(owner, None)

    def _unlock(self, con: Connection, sha256: str, phone_number_id: str) -> None:
        try:
            con.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_UPLOAD, lock_key(sha256, phone_number_id)))
        except psycopg.OperationalError as exc:
            if not connection_lost(exc):
                raise self.db.explain(exc) from None
            # A lost session took its lock with it.
        finally:
            self.claim_sessions.checkin(con)

    def record_upload(self, media: NewMedia, owner: str) -> Recorded:
        """Record a new ID as current (or as owing a DELETE if the content was deleted or the
        lease revoked), log it and release the lease; one transaction, then the lock goes."""
        con = self._pop_claim(owner)
        try:
            if con is not None and not con.closed:
                try:  # pipelined: the transaction's statements go in two round trips
                    with con.pipeline(), con.transaction():
                        return self._record(con, media, owner)
                except psycopg.OperationalError as exc:
                    if not connection_lost(exc):
                        raise self.db.explain(exc) from None
                except psycopg.Error as exc:
                    raise self.db.explain(exc) from None
            # The claim's session died (a restart): record on a fresh connection.
            return self.db.run(lambda c: self._record(c, media, owner))
        finally:
            if con is not None:
                self._unlock(con, media.sha256, media.phone_number_id)

    def _record(self, con: Connection, media: NewMedia, owner: str) -> Recorded:
        # Locking the content row orders this against a concurrent mark_deleted.
        con.execute(
            "INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at, deleted_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sha256) DO NOTHING",
            (media.sha256, media.mime_type, media.size_bytes, media.uploaded_at, media.uploaded_at),
        )
        content = con.execute(
            "SELECT deleted_at IS NOT NULL FROM contents WHERE sha256 = %s FOR UPDATE", (media.sha256,)
        )
        lease = con.execute(
            "DELETE FROM leases WHERE sha256 = %s AND phone_number_id = %s AND owner = %s RETURNING 1",
            (media.sha256, media.phone_number_id, owner),
        )
        deleted, held = _one(content), lease.fetchone()
        if deleted or held is None:
            # Deleted meanwhile, or the claim died with its session (a server restart) and
            # another uploader may have taken over: this ID is never served, only DELETEd.
            why = "content deleted meanwhile" if deleted else "upload claim lost with its session"
            self._insert_media(con, media, "deleting")
            _log(con, media.uploaded_at, media.action, self.host_id, sha256=media.sha256,
                 media_id=media.media_id, phone_number_id=media.phone_number_id, path=media.path,
                 detail=f"{why}: owes a remote DELETE")
            return Recorded.CONTENT_DELETED if deleted else Recorded.CLAIM_LOST
        con.execute(
            "UPDATE media SET state = 'superseded' "
            "WHERE sha256 = %s AND phone_number_id = %s AND state = 'current' AND media_id <> %s",
            (media.sha256, media.phone_number_id, media.media_id),
        )
        self._insert_media(con, media, "current")
        _log(con, media.uploaded_at, media.action, self.host_id, sha256=media.sha256,
             media_id=media.media_id, phone_number_id=media.phone_number_id, path=media.path)
        return Recorded.CURRENT

    def _insert_media(self, con: Connection, media: NewMedia, state: str) -> None:
        con.execute(
            "INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (media_id) DO NOTHING",
            (media.media_id, media.sha256, media.phone_number_id, state, media.uploaded_at,
             media.expires_at),
        )

    # -- lifecycle --------------------------------------------------------------------------

    def expiring_media(self, before: Cutoffs) -> list[MediaRow]:
        """Current IDs expiring by their number's cutoff, of contents not deleted that this
        host has a source of (or that no host has: bytes sent directly), soonest first."""
        self._keep_daemon_lock()
        return self._media_rows(
            EXPIRING_SQL + " AND c.deleted_at IS NULL AND ("
            " EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = m.sha256 AND p.host_id = %(host)s)"
            " OR NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = m.sha256))"
            " ORDER BY m.expires_at",
            {**_cutoffs(before), "host": self.host_id},
        )

    def source_paths(self, sha256: str) -> list[SourcePath]:
        """This host's recorded source files of a content, most recently seen first."""
        rows = self.db.run(lambda con: con.execute(
            "SELECT path, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at FROM paths "
            "WHERE host_id = %s AND sha256 = %s ORDER BY seen_at DESC",
            (self.host_id, sha256),
        ).fetchall(), transaction=False)
        return [
            SourcePath(Fingerprint(path, size, mtime, ctime, _uint64(inode), _uint64(device)), seen_at)
            for path, size, mtime, ctime, inode, device, seen_at in rows
        ]

    def sourced_contents(self) -> list[ContentRef]:
        """Contents not deleted with a source path on this host. Hosts unseen for the
        retention period are dropped first, with their paths."""
        self._keep_daemon_lock()
        self._touch_host()

        def work(con: Connection) -> list[Any]:
            con.execute("DELETE FROM hosts WHERE last_seen_at < now() - %s", (self.host_retention,))
            return con.execute(
                "SELECT DISTINCT c.sha256, c.mime_type FROM contents AS c JOIN paths AS p USING (sha256) "
                "WHERE c.deleted_at IS NULL AND p.host_id = %s ORDER BY c.sha256",
                (self.host_id,),
            ).fetchall()

        return [ContentRef(*row) for row in self.db.run(work)]

    def forget_vanished(self, sha256: str, paths: list[str], now: datetime) -> bool:
        """Forget this host's vanished paths of a content; delete it fleet-wide only when no
        live host has a path of it and no URL serves it. One transaction, holding the content
        row so that hosts purging it at once see each other's paths go."""

        def work(con: Connection) -> bool:
            if con.execute("SELECT 1 FROM contents WHERE sha256 = %s AND deleted_at IS NULL FOR UPDATE",
                           (sha256,)).fetchone() is None:
                return False
            for (path,) in con.execute(
                "DELETE FROM paths WHERE host_id = %s AND sha256 = %s AND path = ANY(%s) RETURNING path",
                (self.host_id, sha256, paths),
            ).fetchall():
                _log(con, now, "vanished", self.host_id, sha256=sha256, path=path)
            if _one(con.execute(
                "SELECT EXISTS (SELECT 1 FROM paths JOIN hosts USING (host_id) WHERE sha256 = %(sha256)s"
                " AND last_seen_at >= now() - %(retention)s)"
                " OR EXISTS (SELECT 1 FROM url_sources WHERE sha256 = %(sha256)s) OR " + SENT_WITHOUT_A_FILE,
                {"sha256": sha256, "retention": self.host_retention},
            )):
                return False
            self._mark_deleted(con, sha256, now, "sources vanished")
            return True

        return bool(self.db.run(work))

    def mark_deleted(self, sha256: str, now: datetime, reason: str) -> None:
        """Fleet-wide: mark the content deleted, its IDs owing a DELETE, forget every host's
        paths of it and revoke its leases; one transaction."""
        self.db.run(lambda con: self._mark_deleted(con, sha256, now, reason))

    def _mark_deleted(self, con: Connection, sha256: str, now: datetime, reason: str) -> None:
        con.execute("UPDATE contents SET deleted_at = %s WHERE sha256 = %s", (now, sha256))
        con.execute("UPDATE media SET state = 'deleting' WHERE sha256 = %s", (sha256,))
        con.execute("DELETE FROM paths WHERE sha256 = %s", (sha256,))
        con.execute("DELETE FROM url_sources WHERE sha256 = %s", (sha256,))
        con.execute("DELETE FROM leases WHERE sha256 = %s", (sha256,))
        _log(con, now, "delete", self.host_id, sha256=sha256, detail=reason)

    def pending_deletes(self, sha256: str | None = None) -> list[MediaRow]:
        """Media IDs owing a remote DELETE (of one content, or all)."""
        return self._media_rows(
            "m.state = 'deleting' AND (%s::text IS NULL OR m.sha256 = %s) ORDER BY m.sha256, m.media_id",
            (sha256, sha256),
        )

    def claim_deletes(self, sha256: str | None, claim_for: timedelta) -> list[MediaRow]:
        """Owed DELETEs this host may send now: claimed for ``claim_for`` with
        ``FOR UPDATE SKIP LOCKED``, so two hosts purging at once never both send one. A host
        takes back its own claims (a DELETE that failed is retried by its next purge); another
        host's pass to it once they lapse (that host died or lost the server)."""
        return self._rows(
            """
            WITH claimed AS (
                UPDATE media SET claimed_by = %s, claimed_until = now() + %s
                WHERE media_id IN (
                    SELECT media_id FROM media WHERE state = 'deleting'
                      AND (%s::text IS NULL OR sha256 = %s)
                      AND (claimed_until IS NULL OR claimed_until < now() OR claimed_by = %s)
                    FOR UPDATE SKIP LOCKED)
                RETURNING *)
            SELECT m.media_id, m.sha256, m.phone_number_id, m.state, c.mime_type, m.uploaded_at,
                   m.expires_at
            FROM claimed AS m JOIN contents AS c USING (sha256) ORDER BY m.sha256, m.media_id
            """,
            (self.host_id, claim_for, sha256, sha256, self.host_id),
        )

    def forget_media(self, media_id: str, now: datetime, action: str, detail: str | None = None) -> None:
        """Drop a media row and log why; a deleted content goes with its last media row."""

        def work(con: Connection) -> None:
            row = con.execute(
                "DELETE FROM media WHERE media_id = %s RETURNING sha256, phone_number_id", (media_id,)
            ).fetchone()
            if row is None:
                return
            _log(con, now, action, self.host_id, sha256=row[0], media_id=media_id,
                 phone_number_id=row[1], detail=detail)
            con.execute(
                "DELETE FROM contents WHERE sha256 = %s AND deleted_at IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = %s)",
                (row[0], row[0]),
            )

        self.db.run(work)

    def expired_media(self, now: datetime) -> list[MediaRow]:
        """Media rows whose ID expired at or before ``now``, whatever their state."""
        return self._media_rows("m.expires_at <= %s ORDER BY m.expires_at", (now,))

    def _media_rows(self, where: str, params: tuple[Any, ...] | dict[str, Any]) -> list[MediaRow]:
        return self._rows(
            "SELECT m.media_id, m.sha256, m.phone_number_id, m.state, c.mime_type, m.uploaded_at, "
            "m.expires_at FROM media AS m JOIN contents AS c USING (sha256) WHERE " + where,
            params,
        )

    def _rows(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[MediaRow]:
        rows = self.db.run(lambda con: con.execute(sql, params).fetchall())
        return [MediaRow(*row) for row in rows]

    # -- sources beyond paths (URL mappings are shared by every host) -------------------------

    def remember_content(self, sha256: str, mime_type: str, size_bytes: int, recorded_at: datetime) -> None:
        """See :meth:`Store.remember_content`."""
        def work(con: Connection) -> None:
            con.execute(
                "INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (sha256) DO UPDATE SET deleted_at = NULL",
                (sha256, mime_type, size_bytes, recorded_at),
            )
            con.execute(
                "INSERT INTO events (at, action, sha256, detail, host_id) SELECT %(at)s, 'sent', "
                "%(sha256)s, %(detail)s, %(host_id)s WHERE NOT " + SENT_WITHOUT_A_FILE,
                {"at": recorded_at, "sha256": sha256, "detail": SENT_DETAIL, "host_id": self.host_id},
            )

        self.db.run(work)

    def current_media_id(self, sha256: str, phone_number_id: str, valid_until: datetime) -> str | None:
        """See :meth:`Store.current_media_id`."""
        row = self.db.run(lambda con: con.execute(
            "SELECT media_id FROM media WHERE sha256 = %s AND phone_number_id = %s "
            "AND state = 'current' AND expires_at > %s",
            (sha256, phone_number_id, valid_until),
        ).fetchone(), transaction=False)
        return row[0] if row else None

    def url_hit(self, url: str, phone_number_id: str, valid_until: datetime,
                checked_after: datetime) -> str | None:
        """See :meth:`Store.url_hit`. The URL cache hit: one prepared, indexed query."""
        row = self.db.run(lambda con: con.execute(
            """
            SELECT m.media_id FROM url_sources AS u JOIN media AS m USING (sha256)
            WHERE u.url = %s AND u.checked_at > %s AND m.phone_number_id = %s
              AND m.state = 'current' AND m.expires_at > %s
            """,
            (url, checked_after, phone_number_id, valid_until),
            prepare=True,
        ).fetchone(), transaction=False)
        return row[0] if row else None

    def url_source(self, url: str) -> UrlSource | None:
        """See :meth:`Store.url_source`."""
        rows = self._url_rows("WHERE url = %s", (url,))
        return rows[0] if rows else None

    def url_sources(self, sha256: str) -> list[UrlSource]:
        """See :meth:`Store.url_sources`."""
        return self._url_rows("WHERE sha256 = %s ORDER BY checked_at DESC", (sha256,))

    def _url_rows(self, where: str, params: tuple[Any, ...]) -> list[UrlSource]:
        rows = self.db.run(lambda con: con.execute(
            "SELECT url, sha256, etag, last_modified, checked_at, refetchable FROM url_sources " + where,
            params,
        ).fetchall(), transaction=False)
        return [UrlSource._make(row) for row in rows]

    def remember_url(self, source: UrlSource) -> None:
        """See :meth:`Store.remember_url`."""
        self.db.run(lambda con: con.execute(
            """
            INSERT INTO url_sources (url, sha256, etag, last_modified, checked_at, refetchable)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (url) DO UPDATE SET
                sha256 = excluded.sha256, etag = excluded.etag, last_modified = excluded.last_modified,
                checked_at = excluded.checked_at, refetchable = excluded.refetchable
            """,
            tuple(source),
        ))

    def touch_url(self, url: str, checked_at: datetime) -> None:
        """See :meth:`Store.touch_url`."""
        self.db.run(lambda con: con.execute(
            "UPDATE url_sources SET checked_at = %s WHERE url = %s", (checked_at, url)
        ))

    def forget_url(self, url: str, now: datetime, reason: str) -> None:
        """See :meth:`Store.forget_url`."""

        def work(con: Connection) -> None:
            row = con.execute("DELETE FROM url_sources WHERE url = %s RETURNING sha256", (url,)).fetchone()
            if row is not None:
                _log(con, now, "forget url", self.host_id, sha256=row[0], path=url, detail=reason)

        self.db.run(work)

    def invalidate_media(self, media_id: str, now: datetime, reason: str) -> bool:
        """See :meth:`Store.invalidate_media`; an ID owing a DELETE keeps owing it."""

        def work(con: Connection) -> bool:
            row = con.execute(
                "SELECT sha256, phone_number_id FROM media WHERE media_id = %s FOR UPDATE", (media_id,)
            ).fetchone()
            if row is None:
                return False
            con.execute("UPDATE media SET state = 'invalidated' WHERE media_id = %s AND state <> 'deleting'",
                        (media_id,))
            _log(con, now, "invalidate", self.host_id, sha256=row[0], media_id=media_id,
                 phone_number_id=row[1], detail=reason)
            return True

        return self.db.run(work)

    # -- inbound media ------------------------------------------------------------------------

    def record_inbound(self, row: InboundRow, detail: str | None = None) -> None:
        """Record a verified download (replacing an earlier one of the same ID) and log it."""

        def work(con: Connection) -> None:
            con.execute(
                """
                INSERT INTO inbound (media_id, sha256, mime_type, size_bytes, path, downloaded_at)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (media_id) DO UPDATE SET sha256 = excluded.sha256,
                    mime_type = excluded.mime_type, size_bytes = excluded.size_bytes,
                    path = excluded.path, downloaded_at = excluded.downloaded_at
                """,
                tuple(row),
            )
            _log(con, row.downloaded_at, "download", self.host_id, sha256=row.sha256,
                 media_id=row.media_id, path=row.path, detail=detail)

        self.db.run(work)

    # -- reading for people -------------------------------------------------------------------

    def resolve(self, target: str) -> str | None:
        """The sha256 a path of this host, a media ID or a sha256 names, in that order."""
        row = self.db.run(lambda con: con.execute(
            """
            (SELECT sha256 FROM paths WHERE host_id = %s AND path = %s)
            UNION ALL (SELECT sha256 FROM media WHERE media_id = %s LIMIT 1)
            UNION ALL (SELECT sha256 FROM contents WHERE sha256 = lower(%s))
            LIMIT 1
            """,
            (self.host_id, os.path.abspath(target), target, target),
        ).fetchone(), transaction=False)
        return row[0] if row else None

    def sha256s_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` known sha256s starting with ``prefix``, in order (an index range)."""
        rows = self.db.run(lambda con: con.execute(
            "SELECT sha256 FROM contents WHERE sha256 >= %s AND sha256 < %s ORDER BY sha256 LIMIT %s",
            (prefix, prefix + "g", limit),  # "g" sorts after every hex digit
        ).fetchall(), transaction=False)
        return [row[0] for row in rows]

    def content_rows(
        self, *, sha256: str | None = None, expiring_before: datetime | None = None
    ) -> Iterator[ContentRow]:
        """Every content (or one) per phone number with this host's paths, streamed from a
        server-side cursor in one snapshot."""
        sql = """
            SELECT c.sha256, c.mime_type, c.size_bytes, c.first_seen_at, c.deleted_at,
                   m.phone_number_id, m.media_id, m.uploaded_at, m.expires_at,
                   ARRAY(SELECT p.path FROM paths AS p
                         WHERE p.sha256 = c.sha256 AND p.host_id = %(host)s ORDER BY p.path)
            FROM contents AS c
            LEFT JOIN media AS m ON m.sha256 = c.sha256 AND m.state = 'current'
            WHERE (%(sha256)s::text IS NULL OR c.sha256 = %(sha256)s)
              AND (%(before)s::timestamptz IS NULL
                   OR (m.media_id IS NOT NULL AND m.expires_at < %(before)s))
            ORDER BY m.phone_number_id, c.first_seen_at, c.sha256
        """
        params = {"host": self.host_id, "sha256": sha256, "before": expiring_before}
        con = self.db.checkout()
        try:
            with con.transaction(), con.cursor("content_rows", row_factory=tuple_row) as cursor:
                cursor.execute(sql, params)
                for *fields, paths in cursor:
                    yield ContentRow._make([*fields, tuple(paths)])
        except psycopg.Error as exc:
            raise self.db.explain(exc) from None
        finally:
            self.db.checkin(con)

    def events(self, sha256: str) -> list[EventRow]:
        """The history of one content, oldest first."""
        rows = self.db.run(lambda con: con.execute(
            "SELECT at, action, media_id, phone_number_id, path, detail FROM events "
            "WHERE sha256 = %s ORDER BY id",
            (sha256,),
        ).fetchall(), transaction=False)
        return [EventRow(*row) for row in rows]

    def stats(self, now: datetime, expiring_before: Cutoffs) -> StoreStats:
        """Counts, per phone number, and the server's facts (its URL without the password)."""

        def work(con: Connection) -> tuple[Any, list[Any], Any]:
            counts = con.execute(
                f"""
                SELECT
                  (SELECT count(*) FROM contents),
                  (SELECT count(*) FROM contents WHERE deleted_at IS NOT NULL),
                  (SELECT count(*) FROM paths WHERE host_id = %(host)s),
                  (SELECT count(*) FROM media WHERE state = 'current' AND expires_at > %(now)s),
                  (SELECT count(*) FROM media AS m WHERE m.expires_at > %(now)s AND {EXPIRING_SQL}),
                  (SELECT count(*) FROM media WHERE expires_at <= %(now)s),
                  (SELECT count(*) FROM media WHERE state = 'superseded'),
                  (SELECT count(*) FROM media WHERE state = 'deleting'),
                  (SELECT count(*) FROM events WHERE action IN ('upload', 'refresh')),
                  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND classid = %(upload)s AND database =
                       (SELECT oid FROM pg_database WHERE datname = current_database()))
                """,
                {"host": self.host_id, "now": now, **_cutoffs(expiring_before),
                 "upload": _oid(LOCK_UPLOAD)},
            ).fetchone()
            phones = con.execute(
                "SELECT phone_number_id, "
                "count(*) FILTER (WHERE state = 'current' AND expires_at > %(now)s), "
                f"count(*) FILTER (WHERE m.expires_at > %(now)s AND {EXPIRING_SQL}), "
                "count(*) FILTER (WHERE expires_at <= %(now)s) "
                "FROM media AS m GROUP BY phone_number_id ORDER BY 1",
                {"now": now, **_cutoffs(expiring_before)},
            ).fetchall()
            facts = con.execute(
                "SELECT current_setting('server_version'), pg_database_size(current_database()), "
                "(SELECT count(*) FROM hosts)"
            ).fetchone()
            return counts, phones, facts

        counts, phones, facts = self.db.run(work, transaction=True)
        backend: dict[str, str | int] = {
            "db": self.location, "db_bytes": facts[1], "server_version": facts[0],
            "host_id": self.host_id, "hosts": facts[2],
        }
        by_phone = {phone: PhoneStats(*numbers) for phone, *numbers in phones}
        return StoreStats._make([*counts, by_phone, backend])

    # -- daemon -------------------------------------------------------------------------------

    @contextmanager
    def daemon_lock(self) -> Iterator[None]:
        """Hold this host's daemon lock for the block, on a session of its own: a second
        daemon on the same host is refused (RegistryLocked); other hosts run their own. The
        lock goes with the session, so a killed daemon never blocks the next one."""
        with self._daemon_mutex:
            self._daemon_session = self._take_daemon_lock()
        try:
            yield
        finally:
            with self._daemon_mutex:
                session, self._daemon_session = self._daemon_session, None
            if session is not None:
                session.close()

    def _take_daemon_lock(self) -> Connection:
        con = self.db.direct()
        if not _one(con.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_DAEMON, lock_key(self.host_id)))):
            con.close()
            raise RegistryLocked(
                f"another media-registry daemon already serves host {self.host_id} on "
                f"{self.location}; stop it first, or give this one its own MEDIA_REGISTRY_HOST_ID"
            )
        return con

    def _keep_daemon_lock(self) -> None:
        """A daemon's pass first makes sure it still holds its host's lock: a server restart
        ends the session that held it, and another daemon of this host may have started since
        (then this one's passes fail with RegistryLocked until that one stops)."""
        with self._daemon_mutex:
            session = self._daemon_session
            if session is None:
                return
            try:
                session.execute("SELECT 1")
                return
            except psycopg.Error:
                session.close()
            self._daemon_session = self._take_daemon_lock()

    def close(self) -> None:
        """Release held claims and every connection."""
        with self._claims_lock:
            claims, self._claims = list(self._claims.values()), {}
        for con in claims:
            self.claim_sessions.checkin(con)
        self.claim_sessions.close()
        self.db.close()


def _serve_or_deleted(con: Connection, sha256: str, phone: str, valid_until: datetime) -> LeaseOutcome | None:
    row = con.execute(
        """
        SELECT c.deleted_at IS NOT NULL, (
            SELECT m.media_id FROM media AS m
            WHERE m.sha256 = c.sha256 AND m.phone_number_id = %s
              AND m.state = 'current' AND m.expires_at > %s)
        FROM contents AS c WHERE c.sha256 = %s
        """,
        (phone, valid_until, sha256),
    ).fetchone()
    if row is None or row[0]:
        return LeaseOutcome(LeaseStatus.DELETED)
    if row[1] is not None:
        return LeaseOutcome(LeaseStatus.SERVE, row[1])
    return None


def _cutoffs(cutoffs: Cutoffs) -> dict[str, Any]:
    return {"before": cutoffs.default,
            "cutoffs": json.dumps({phone: at.isoformat() for phone, at in cutoffs.by_phone})}


def _forget_claims(reference: weakref.ref[PostgresStore]) -> None:
    store = reference()
    if store is not None:  # the parent's sessions and locks stay the parent's
        store._claims, store._claims_lock = {}, threading.Lock()


def _one(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row a statement returns."""
    row = cursor.fetchone()
    assert row is not None, "the statement always returns one row"
    return row[0]


def _log(con: Connection, at: datetime, action: str, host_id: str, **fields: str | None) -> None:
    con.execute(
        "INSERT INTO events (at, action, sha256, media_id, phone_number_id, path, detail, host_id) "
        "VALUES (%(at)s, %(action)s, %(sha256)s, %(media_id)s, %(phone_number_id)s, %(path)s, "
        "%(detail)s, %(host_id)s)",
        {"sha256": None, "media_id": None, "phone_number_id": None, "path": None, "detail": None,
         **fields, "at": at, "action": action, "host_id": host_id},
    )


# Content sent as bytes, a stream or a URL (remember_content) since it was last deleted: an
# event says so, and such content never vanishes with a file of the same bytes.
SENT_DETAIL = "without a file: never purged as vanished"
SENT_WITHOUT_A_FILE = """EXISTS (
    SELECT 1 FROM events AS s WHERE s.sha256 = %(sha256)s AND s.action = 'sent' AND s.at >= COALESCE(
        (SELECT max(d.at) FROM events AS d WHERE d.sha256 = %(sha256)s AND d.action = 'delete'),
        '-infinity'::timestamptz))"""


def _int64(value: int) -> int:
    """An unsigned 64-bit stat field (inode, device) as the signed bigint PostgreSQL stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _uint64(value: int) -> int:
    return value & 0xFFFF_FFFF_FFFF_FFFF


def _oid(key: int) -> int:
    """pg_locks shows an advisory lock's first key as an unsigned oid."""
    return key & 0xFFFF_FFFF
