"""The SQLite registry: every SQL statement of media-registry lives in this module.

Connections are per thread and per process (re-opened after a fork), in autocommit mode;
writes go through :meth:`Store.transaction` (``BEGIN IMMEDIATE``), kept short and never
around a network call. WAL lets readers run while one writer commits.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ._processes import alive
from ._sqlite_migrations import SCHEMA_VERSION, ensure_schema
from .errors import RegistryCorrupt, RegistryError, RegistryLocked, SchemaTooNew
from .hashing import Fingerprint

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_SECONDS = 10.0
T = TypeVar("T")


def iso(moment: datetime) -> str:
    """A datetime as the registry writes it: UTC ISO-8601 to the second, e.g. 2026-11-25T06:18:52Z."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"


def parse_iso(text: str | None) -> datetime | None:
    """The inverse of :func:`iso`; None stays None."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if text else None


class LeaseOutcome(NamedTuple):
    """Result of asking for the upload lease: a media ID to serve, the lease, or neither (wait)."""

    media_id: str | None
    acquired: bool


def _mapped(method: Callable[..., T]) -> Callable[..., T]:
    """Turn sqlite3 errors raised by a Store method into RegistryError subclasses."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    return wrapper


class Store:
    """The registry database at ``path``, created with ``schema.sql`` on first use."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_SECONDS):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._check_file()
        # A connection must not cross a fork: the child starts with none and opens its own.
        # (Registered here rather than checked per call: os.getpid() is a syscall on the hot path.)
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_connections(reference))
        self._connection()  # open now so that a bad file fails at construction

    # -- connection ---------------------------------------------------------------------

    def _check_file(self) -> None:
        # Read the header ourselves: sqlite3 would happily write WAL files next to, or a
        # schema into, something that is not ours.
        if self.path.is_dir():
            raise RegistryCorrupt(
                f"registry {self.path} is a directory; point MEDIA_REGISTRY_DB (or --db) at a file"
            )
        if not self.path.parent.is_dir():
            raise RegistryError(
                f"registry {self.path}: folder {self.path.parent} does not exist; create it first"
            )
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RegistryError(f"registry {self.path}: cannot read it ({exc.strerror})") from None
        if header and header != SQLITE_HEADER:
            raise RegistryCorrupt(
                f"registry {self.path} is not an SQLite database (left untouched); "
                "move it away or point MEDIA_REGISTRY_DB (or --db) elsewhere"
            )

    def _connection(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        return con if con is not None else self._open()

    @_mapped
    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            con.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against a killed process in WAL mode; only power loss can undo
            # the last commits, never corrupt the file.
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema(con)
        except BaseException:
            con.close()  # a connection is kept only once the schema is known good
            raise
        self._local.con = con
        with self._lock:
            self._connections.append(con)
        return con

    def _ensure_schema(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"registry {self.path} has schema version {version}, newer than this "
                f"media-registry knows ({SCHEMA_VERSION}); upgrade: pip install -U media-registry"
            )
        ensure_schema(con)

    def close(self) -> None:
        """Close every connection this Store opened."""
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def _transact(self, con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        try:
            with self._transact(self._connection()) as con:
                yield con
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def _explain(self, exc: sqlite3.Error) -> RegistryError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return RegistryLocked(
                f"registry {self.path} stayed locked by another writer for over "
                f"{self.busy_timeout:g} s; retry, or find the process holding it"
            )
        if "not a database" in text or "malformed" in text:
            return RegistryCorrupt(
                f"registry {self.path} is damaged ({text}); restore it from a backup "
                "or move it away to start afresh"
            )
        if "readonly" in text or "unable to open" in text:
            return RegistryError(
                f"registry {self.path} cannot be written ({text}); check the permissions "
                "of the file and its folder"
            )
        return RegistryError(f"registry {self.path}: {text}")

    # -- the hot path -------------------------------------------------------------------

    def fast_lookup(self, fp: Fingerprint, phone_number_id: str, valid_until: str
                    ) -> tuple[str, str | None] | None:
        """(sha256, media ID or None): the content at an unchanged path, with its current ID
        if that is valid past ``valid_until``. The cache hit: keep it lean."""
        try:
            return self._connection().execute(  # type: ignore[no-any-return]
                """
                SELECT p.sha256, (
                    SELECT m.media_id FROM media AS m
                    WHERE m.sha256 = p.sha256 AND m.phone_number_id = ?
                      AND m.state = 'current' AND m.expires_at > ?
                    ORDER BY m.expires_at DESC LIMIT 1)
                FROM paths AS p
                WHERE p.path = ? AND p.size_bytes = ? AND p.mtime_ns = ? AND p.ctime_ns = ? AND p.inode = ?
                  AND p.device = ?
                """,
                (phone_number_id, valid_until, fp.path, fp.size, fp.mtime_ns, fp.ctime_ns, fp.inode, fp.device),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    # -- writes -------------------------------------------------------------------------

    def remember_path(self, fp: Fingerprint, sha256: str, mime_type: str, now: datetime) -> None:
        """Record that ``fp.path`` holds ``sha256`` (creating the content row if new)."""
        with self.transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                "VALUES (?, ?, ?, ?)",
                (sha256, mime_type, fp.size, iso(now)),
            )
            con.execute(
                "INSERT OR REPLACE INTO paths "
                "(path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (fp.path, sha256, fp.size, fp.mtime_ns, fp.ctime_ns, fp.inode, fp.device, iso(now)),
            )

    def take_lease(
        self, sha256: str, phone_number_id: str, owner: str, now: datetime, valid_until: str,
        lease_for: timedelta,
    ) -> LeaseOutcome:
        """In one transaction: serve a valid ID if one appeared, else take the upload lease if
        it is free (absent, expired, or held by a process that died), else say to wait."""
        with self.transaction() as con:
            media_id = _current_media_id(con, sha256, phone_number_id, valid_until)
            if media_id is not None:
                return LeaseOutcome(media_id, acquired=False)
            row = con.execute(
                "SELECT owner, expires_at FROM leases WHERE sha256 = ? AND phone_number_id = ?",
                (sha256, phone_number_id),
            ).fetchone()
            if row and row[1] > iso(now) and owner_alive(row[0]):
                return LeaseOutcome(None, acquired=False)
            con.execute(
                "INSERT OR REPLACE INTO leases (sha256, phone_number_id, owner, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (sha256, phone_number_id, owner, iso(now + lease_for)),
            )
            return LeaseOutcome(None, acquired=True)

    def renew_lease(self, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
        """Push the lease's expiry forward, if ``owner`` still holds it."""
        with self.transaction() as con:
            con.execute(
                "UPDATE leases SET expires_at = ? "
                "WHERE sha256 = ? AND phone_number_id = ? AND owner = ?",
                (iso(expires_at), sha256, phone_number_id, owner),
            )

    def release_lease(self, sha256: str, phone_number_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it."""
        with self.transaction() as con:
            _release(con, sha256, phone_number_id, owner)

    def record_upload(
        self, *, sha256: str, phone_number_id: str, media_id: str, uploaded_at: datetime,
        expires_at: datetime, path: str | None, owner: str, action: str = "upload",
    ) -> None:
        """Record a new media ID as the content's current one, retire the previous current ID
        (superseded, never served again), log the event and release the lease, atomically."""
        with self.transaction() as con:
            con.execute(
                "UPDATE media SET state = 'superseded' "
                "WHERE sha256 = ? AND phone_number_id = ? AND state = 'current'",
                (sha256, phone_number_id),
            )
            con.execute(
                "INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at) "
                "VALUES (?, ?, ?, 'current', ?, ?)",
                (media_id, sha256, phone_number_id, iso(uploaded_at), iso(expires_at)),
            )
            con.execute("UPDATE contents SET deleted_at = NULL WHERE sha256 = ?", (sha256,))
            _log(con, uploaded_at, action, sha256=sha256, media_id=media_id,
                 phone_number_id=phone_number_id, path=path)
            _release(con, sha256, phone_number_id, owner)

    # -- lifecycle ----------------------------------------------------------------------

    @_mapped
    def expiring_media(self, before: str) -> list[dict[str, Any]]:
        """Current media IDs expiring before ``before`` whose content is not deleted."""
        cursor = self._connection().execute(
            "SELECT m.media_id, m.sha256, m.phone_number_id, m.expires_at, c.mime_type "
            "FROM media AS m JOIN contents AS c USING (sha256) "
            "WHERE m.state = 'current' AND m.expires_at <= ? AND c.deleted_at IS NULL "
            "ORDER BY m.expires_at",
            (before,),
        )
        return _dicts(cursor)

    @_mapped
    def source_paths(self, sha256: str) -> list[Fingerprint]:
        """The recorded source files of a content, with the fingerprints last seen."""
        rows = self._connection().execute(
            "SELECT path, size_bytes, mtime_ns, ctime_ns, inode, device FROM paths WHERE sha256 = ? "
            "ORDER BY seen_at DESC",
            (sha256,),
        ).fetchall()
        return [Fingerprint(*row) for row in rows]

    @_mapped
    def sourced_contents(self) -> list[tuple[str, str]]:
        """(sha256, mime type) of contents not deleted that have a recorded source path."""
        rows = self._connection().execute(
            "SELECT DISTINCT c.sha256, c.mime_type FROM contents AS c JOIN paths AS p USING (sha256) "
            "WHERE c.deleted_at IS NULL"
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def mark_deleted(self, sha256: str, now: datetime, reason: str) -> None:
        """Forget a content's paths, stop serving and refreshing its IDs, and mark them as
        owing a remote DELETE; one transaction."""
        with self.transaction() as con:
            con.execute("UPDATE contents SET deleted_at = ? WHERE sha256 = ?", (iso(now), sha256))
            con.execute("UPDATE media SET state = 'deleting' WHERE sha256 = ?", (sha256,))
            con.execute("DELETE FROM paths WHERE sha256 = ?", (sha256,))
            _log(con, now, "delete", sha256=sha256, detail=reason)

    @_mapped
    def pending_deletes(self) -> list[dict[str, Any]]:
        """Media IDs owing a remote DELETE."""
        cursor = self._connection().execute(
            "SELECT media_id, sha256, phone_number_id, expires_at FROM media "
            "WHERE state = 'deleting' ORDER BY sha256"
        )
        return _dicts(cursor)

    def forget_media(self, media_id: str, now: datetime, action: str, detail: str | None = None) -> None:
        """Drop a media row (deleted remotely, or expired), and its content once nothing of
        it is left that the registry needs; record why."""
        with self.transaction() as con:
            row = con.execute(
                "SELECT sha256, phone_number_id FROM media WHERE media_id = ?", (media_id,)
            ).fetchone()
            if row is None:
                return
            con.execute("DELETE FROM media WHERE media_id = ?", (media_id,))
            _log(con, now, action, sha256=row[0], media_id=media_id, phone_number_id=row[1],
                 detail=detail)
            _drop_if_orphaned(con, row[0])

    @_mapped
    def expired_media(self, now: str) -> list[dict[str, Any]]:
        """Media rows whose ID has expired (whatever their state)."""
        cursor = self._connection().execute(
            "SELECT media_id, sha256, phone_number_id, expires_at FROM media WHERE expires_at <= ?",
            (now,),
        )
        return _dicts(cursor)

    # -- inbound media ------------------------------------------------------------------

    def record_inbound(self, media_id: str, sha256: str, mime_type: str, size: int, path: str,
                       now: datetime, detail: str | None = None) -> None:
        """Record a verified download (or one found already on disk) and log it."""
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO inbound "
                "(media_id, sha256, mime_type, size_bytes, path, downloaded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (media_id, sha256, mime_type, size, path, iso(now)),
            )
            _log(con, now, "download", sha256=sha256, media_id=media_id, path=path, detail=detail)

    # -- reading for people -------------------------------------------------------------

    @_mapped
    def resolve(self, target: str) -> str | None:
        """The sha256 that a path, a sha256 or a media ID names, if the registry knows it."""
        con = self._connection()
        row = (
            con.execute("SELECT sha256 FROM contents WHERE sha256 = ?", (target.lower(),)).fetchone()
            or con.execute("SELECT sha256 FROM media WHERE media_id = ?", (target,)).fetchone()
            or con.execute(
                "SELECT sha256 FROM paths WHERE path = ?", (os.path.abspath(target),)
            ).fetchone()
        )
        return row[0] if row else None

    @_mapped
    def content_rows(self, sha256: str | None = None, expiring_before: str | None = None) -> list[dict[str, Any]]:
        """One row per content and phone number, with the current media ID (if any) and paths.

        ``expiring_before`` keeps only current IDs expiring before that time.
        """
        sql = """
            SELECT c.sha256, c.mime_type, c.size_bytes, c.deleted_at,
                   m.phone_number_id, m.media_id, m.uploaded_at, m.expires_at,
                   (SELECT group_concat(p.path, char(10)) FROM paths AS p
                    WHERE p.sha256 = c.sha256) AS paths
            FROM contents AS c
            LEFT JOIN media AS m ON m.sha256 = c.sha256 AND m.state = 'current'
            WHERE (:sha256 IS NULL OR c.sha256 = :sha256)
              AND (:before IS NULL OR (m.media_id IS NOT NULL AND m.expires_at < :before))
            ORDER BY m.phone_number_id, c.first_seen_at, c.sha256
        """
        cursor = self._connection().execute(sql, {"sha256": sha256, "before": expiring_before})
        return _dicts(cursor)

    @_mapped
    def events(self, sha256: str) -> list[dict[str, Any]]:
        """The history of one content, oldest first."""
        cursor = self._connection().execute(
            "SELECT at, action, media_id, phone_number_id, path, detail FROM events "
            "WHERE sha256 = ? ORDER BY id",
            (sha256,),
        )
        return _dicts(cursor)

    @_mapped
    def stats_by_phone_number(self, now: str, expiring_before: str) -> dict[str, dict[str, int]]:
        """Live and expiring media IDs per phone number."""
        rows = self._connection().execute(
            "SELECT phone_number_id, count(*), sum(expires_at <= :before) FROM media "
            "WHERE state = 'current' AND expires_at > :now GROUP BY phone_number_id ORDER BY 1",
            {"now": now, "before": expiring_before},
        ).fetchall()
        return {phone: {"live_ids": live, "expiring_ids": expiring} for phone, live, expiring in rows}

    @_mapped
    def stats(self, now: str, expiring_before: str) -> dict[str, int]:
        """Counts for the ``stats`` command."""
        row = self._connection().execute(
            """
            SELECT
              (SELECT count(*) FROM contents),
              (SELECT count(*) FROM contents WHERE deleted_at IS NOT NULL),
              (SELECT count(*) FROM paths),
              (SELECT count(*) FROM media WHERE state = 'current' AND expires_at > :now),
              (SELECT count(*) FROM media
               WHERE state = 'current' AND expires_at > :now AND expires_at <= :before),
              (SELECT count(*) FROM media WHERE expires_at <= :now),
              (SELECT count(*) FROM media WHERE state = 'superseded'),
              (SELECT count(*) FROM media WHERE state = 'deleting'),
              (SELECT count(*) FROM events WHERE action IN ('upload', 'refresh')),
              (SELECT count(*) FROM leases)
            """,
            {"now": now, "before": expiring_before},
        ).fetchone()
        names = ("contents", "deleted_contents", "paths", "live_ids", "expiring_ids",
                 "expired_ids", "superseded_ids", "pending_deletes", "uploads", "leases")
        return dict(zip(names, row))


def _forget_connections(reference: weakref.ref[Store]) -> None:
    store = reference()
    if store is not None:
        store._local = threading.local()
        store._connections = []  # the parent's; closing them here would disturb the parent


def _current_media_id(
    con: sqlite3.Connection, sha256: str, phone_number_id: str, valid_until: str
) -> str | None:
    row = con.execute(
        "SELECT media_id FROM media WHERE sha256 = ? AND phone_number_id = ? "
        "AND state = 'current' AND expires_at > ? ORDER BY expires_at DESC LIMIT 1",
        (sha256, phone_number_id, valid_until),
    ).fetchone()
    return row[0] if row else None


def _drop_if_orphaned(con: sqlite3.Connection, sha256: str) -> None:
    # A deleted content goes once its last media row is gone; its events stay as history.
    con.execute(
        "DELETE FROM contents WHERE sha256 = ? AND deleted_at IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = ?)",
        (sha256, sha256),
    )


def _release(con: sqlite3.Connection, sha256: str, phone_number_id: str, owner: str) -> None:
    con.execute(
        "DELETE FROM leases WHERE sha256 = ? AND phone_number_id = ? AND owner = ?",
        (sha256, phone_number_id, owner),
    )


def _log(con: sqlite3.Connection, at: datetime, action: str, **fields: str | None) -> None:
    con.execute(
        "INSERT INTO events (at, action, sha256, media_id, phone_number_id, path, detail) "
        "VALUES (:at, :action, :sha256, :media_id, :phone_number_id, :path, :detail)",
        {"sha256": None, "media_id": None, "phone_number_id": None, "path": None,
         "detail": None, **fields, "at": iso(at), "action": action},
    )


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


HOST = socket.gethostname()


def new_owner() -> str:
    """A lease owner name unique to this host, process, thread and call."""
    return f"{HOST}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """False only when the owner ran on this host in a process that has since died."""
    host, pid, *_ = owner.split(":")
    if host != HOST or not pid.isdigit():
        return True  # another host: only the lease expiry can tell
    return alive(int(pid))
