"""The SQLite backend of the Store contract (:mod:`media_registry.store`).

Connections are per thread and per process (re-opened after a fork), in autocommit mode;
writes go through :meth:`SQLiteStore._transaction` (``BEGIN IMMEDIATE``), kept short and
never around a network call. WAL lets readers run while one writer commits. Times are
stored as UTC ISO-8601 text, so people reading the file with ``sqlite3`` see dates.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from . import sqlite_migrations as migrations
from .defaults import BUSY_TIMEOUT
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
    owner_alive,
)

T = TypeVar("T")

# The listing: contents drive the plan and each looks up its current IDs (through the
# one-current-ID index) and its paths (paths_by_content): linear in the registry's size, where
# a plan scanning media_by_expiry per content went quadratic. The paths come as a JSON array:
# a file name may hold any character, a newline included. {join} is "JOIN" when only current
# IDs expiring before the first parameter are wanted.
CONTENT_ROWS_SQL = """
    SELECT c.sha256, c.mime_type, c.size_bytes, c.first_seen_at, c.deleted_at,
           m.phone_number_id, m.media_id, m.uploaded_at, m.expires_at,
           (SELECT json_group_array(p.path) FROM paths AS p WHERE p.sha256 = c.sha256)
    FROM contents AS c
    {join} media AS m
        ON m.sha256 = c.sha256 AND m.state = 'current' AND (? IS NULL OR m.expires_at < ?)
    WHERE (? IS NULL OR c.sha256 = ?)
    ORDER BY m.phone_number_id, c.first_seen_at, c.sha256
"""


# "Expiring", shared by refresh and stats: a current ID at or before its number's cutoff
# (:cutoffs, a JSON object, for numbers with their own; :before, the widest, for the others).
EXPIRING_SQL = """m.state = 'current' AND m.expires_at <= :before AND m.expires_at <= coalesce(
    (SELECT value FROM json_each(:cutoffs) WHERE key = m.phone_number_id), :before)"""


# Content sent as bytes, a stream or a URL (remember_content) since it was last deleted: an
# event says so, and such content never vanishes with a file of the same bytes.
SENT_DETAIL = "without a file: never purged as vanished"
SENT_WITHOUT_A_FILE = """EXISTS (
    SELECT 1 FROM events AS s WHERE s.sha256 = :sha256 AND s.action = 'sent' AND s.at >= COALESCE(
        (SELECT max(d.at) FROM events AS d WHERE d.sha256 = :sha256 AND d.action = 'delete'), ''))"""


@functools.lru_cache(maxsize=256)  # the cache hit converts the same few moments over and over
def _text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"


@functools.lru_cache(maxsize=4096)
def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _maybe_time(text: str | None) -> datetime | None:
    return _time(text) if text else None


def _mapped(method: Callable[..., T]) -> Callable[..., T]:
    """Turn sqlite3 errors raised by a method into RegistryError subclasses."""

    @functools.wraps(method)
    def wrapper(self: SQLiteStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    return wrapper


class SQLiteStore:
    """The registry in the SQLite file at ``path``.

    ``create=False`` refuses a missing file instead of creating a registry. A file that is
    not a media-registry registry (not SQLite, someone else's tables, a FIFO) is refused in
    either mode without a byte of it changed; an older registry of ours is upgraded.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.busy_timeout = busy_timeout
        self._create = create
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._check_file()
        # A connection must not cross a fork: the child starts with none and opens its own.
        # (Registered here rather than checked per call: os.getpid() is a syscall on the hot path.)
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_connections(reference))
        self._connection()  # open now so that a bad file fails at construction

    # -- opening ------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Refuse, before SQLite writes anything, what is not (or cannot become) ours."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise RegistryError(
                    f"registry {self.path}: folder {self.path.parent} does not exist; create it first"
                ) from None
            if not self._create:
                raise RegistryError(
                    f"no registry at {self.path}; check MEDIA_REGISTRY_DB (or --db), "
                    "or create one with: media-registry init"
                ) from None
            return
        except OSError as exc:
            raise RegistryError(f"registry {self.path}: cannot stat it ({exc.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            raise RegistryCorrupt(
                f"registry {self.path} is a directory; point MEDIA_REGISTRY_DB (or --db) at a file"
            )
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the first read forever
            raise RegistryCorrupt(
                f"registry {self.path} is not a regular file (left untouched); "
                "point MEDIA_REGISTRY_DB (or --db) at a registry file"
            )
        if st.st_size == 0:
            if not self._create:
                raise RegistryCorrupt(
                    f"registry {self.path} is an empty file, not a media-registry registry "
                    "(left untouched); create one with: media-registry init"
                )
            return
        self._check_ours()

    def _check_ours(self) -> None:
        # Through SQLite, read-only, so that someone else's database stays byte-identical (no
        # schema, no user_version, no switch to WAL). Never a plain open() and close() of the
        # file: closing any descriptor of it drops this process's SQLite locks on it.
        uri = self.path.absolute().as_uri() + "?mode=ro"
        try:
            with _closing(sqlite3.connect(uri, uri=True, timeout=self.busy_timeout)) as con:
                version = migrations.user_version(con)
                tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise self._not_ours("is not an SQLite database") from None
            raise self._explain(exc) from None
        if version == 0 and not tables:
            if not self._create:
                raise self._not_ours("is an empty SQLite database")
            return
        if not migrations.is_ours(version, tables):
            raise self._not_ours("is an SQLite database but not a media-registry registry")

    def _not_ours(self, what: str) -> RegistryCorrupt:
        return RegistryCorrupt(
            f"registry {self.path} {what} (left untouched); "
            "point MEDIA_REGISTRY_DB (or --db) at a registry file"
        )

    def _connection(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        return con if con is not None else self._open()

    @_mapped
    def _open(self) -> sqlite3.Connection:
        mode = "rwc" if self._create else "rw"
        con = sqlite3.connect(
            self.path.absolute().as_uri() + f"?mode={mode}", uri=True, timeout=self.busy_timeout,
            isolation_level=None, check_same_thread=False,
        )
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._check_version(con)
            con.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against a killed process in WAL mode; only power loss can undo
            # the last commits, never corrupt the file.
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA foreign_keys = ON")
            migrations.ensure_schema(con)
        except BaseException:
            con.close()  # a connection is kept only once the schema is known good
            raise
        self._local.con = con
        with self._lock:
            self._connections.append(con)
        return con

    def _check_version(self, con: sqlite3.Connection) -> None:
        version = migrations.user_version(con)
        if version > migrations.SCHEMA_VERSION:
            raise SchemaTooNew(
                f"registry {self.path} has schema version {version}, newer than this "
                f"media-registry knows ({migrations.SCHEMA_VERSION}); upgrade: pip install -U media-registry"
            )

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
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
        if isinstance(exc, sqlite3.IntegrityError):
            return RegistryError(
                f"registry {self.path} refused a change that would break its rules ({text}); "
                "nothing was changed, retry"
            )
        return RegistryError(f"registry {self.path}: {text}")

    # -- sending (the hot path) ---------------------------------------------------------

    def lookup_path(self, fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        """See :meth:`Store.lookup_path`. The cache hit: keep it lean."""
        try:
            row = self._connection().execute(
                """
                SELECT p.sha256, (
                    SELECT m.media_id FROM media AS m
                    WHERE m.sha256 = p.sha256 AND m.phone_number_id = ?
                      AND m.state = 'current' AND m.expires_at > ?), p.seen_at
                FROM paths AS p
                WHERE p.path = ? AND p.size_bytes = ? AND p.mtime_ns = ? AND p.ctime_ns = ?
                  AND p.inode = ? AND p.device = ?
                """,
                (phone_number_id, _text(valid_until), fp.path, fp.size, fp.mtime_ns, fp.ctime_ns,
                 fp.inode, fp.device),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        return None if row is None else PathHit(row[0], row[1], _time(row[2]))

    def remember_path(self, fp: Fingerprint, sha256: str, mime_type: str, recorded_at: datetime) -> None:
        """See :meth:`Store.remember_path`."""
        with self._transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                "VALUES (?, ?, ?, ?)",
                (sha256, mime_type, fp.size, _text(recorded_at)),
            )
            con.execute("UPDATE contents SET deleted_at = NULL WHERE sha256 = ?", (sha256,))
            con.execute(
                "INSERT OR REPLACE INTO paths "
                "(path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (fp.path, sha256, *_fingerprint_columns(fp), _text(recorded_at)),
            )

    def refresh_fingerprint(self, fp: Fingerprint, sha256: str, recorded_at: datetime) -> None:
        """See :meth:`Store.refresh_fingerprint`."""
        with self._transaction() as con:
            con.execute(
                "UPDATE paths SET size_bytes = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, device = ?, "
                "seen_at = ? WHERE path = ? AND sha256 = ?",
                (*_fingerprint_columns(fp), _text(recorded_at), fp.path, sha256),
            )

    # -- single flight ------------------------------------------------------------------

    def take_lease(
        self, sha256: str, phone_number_id: str, owner: str, now: datetime, valid_until: datetime,
        lease_for: timedelta,
    ) -> LeaseOutcome:
        """See :meth:`Store.take_lease`."""
        with self._transaction() as con:
            media_id = _current_media_id(con, sha256, phone_number_id, valid_until)
            if media_id is not None:
                return LeaseOutcome(LeaseStatus.SERVE, media_id)
            content = con.execute("SELECT deleted_at FROM contents WHERE sha256 = ?", (sha256,)).fetchone()
            if content is None or content[0] is not None:
                return LeaseOutcome(LeaseStatus.DELETED)
            row = con.execute(
                "SELECT owner, expires_at FROM leases WHERE sha256 = ? AND phone_number_id = ?",
                (sha256, phone_number_id),
            ).fetchone()
            if row and row[1] > _text(now) and owner_alive(row[0]):
                return LeaseOutcome(LeaseStatus.WAIT)
            con.execute(
                "INSERT OR REPLACE INTO leases (sha256, phone_number_id, owner, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (sha256, phone_number_id, owner, _text(now + lease_for)),
            )
            return LeaseOutcome(LeaseStatus.ACQUIRED)

    def renew_lease(self, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
        """See :meth:`Store.renew_lease`."""
        with self._transaction() as con:
            con.execute(
                "UPDATE leases SET expires_at = ? "
                "WHERE sha256 = ? AND phone_number_id = ? AND owner = ?",
                (_text(expires_at), sha256, phone_number_id, owner),
            )

    def release_lease(self, sha256: str, phone_number_id: str, owner: str) -> None:
        """See :meth:`Store.release_lease`."""
        with self._transaction() as con:
            _release(con, sha256, phone_number_id, owner)

    def record_upload(self, media: NewMedia, owner: str) -> Recorded:
        """See :meth:`Store.record_upload`."""
        with self._transaction() as con:
            known = con.execute("SELECT state FROM media WHERE media_id = ?", (media.media_id,)).fetchone()
            if known is not None:  # recorded already (a retried call): nothing more to do
                _release(con, media.sha256, media.phone_number_id, owner)
                return Recorded.CONTENT_DELETED if known[0] == "deleting" else Recorded.CURRENT
            content = con.execute(
                "SELECT deleted_at FROM contents WHERE sha256 = ?", (media.sha256,)
            ).fetchone()
            # A delete revokes the lease: without it, this upload began before a delete (the
            # content may have been sent again since) and is never recorded as current.
            held = con.execute(
                "DELETE FROM leases WHERE sha256 = ? AND phone_number_id = ? AND owner = ?",
                (media.sha256, media.phone_number_id, owner),
            ).rowcount
            gone = content is None or content[0] is not None
            deleted = gone or not held
            if content is None:  # deleted and already dropped: bring it back as deleted
                con.execute(
                    "INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at, deleted_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (media.sha256, media.mime_type, media.size_bytes, _text(media.uploaded_at),
                     _text(media.uploaded_at)),
                )
            if not deleted:
                con.execute(
                    "UPDATE media SET state = 'superseded' "
                    "WHERE sha256 = ? AND phone_number_id = ? AND state = 'current'",
                    (media.sha256, media.phone_number_id),
                )
            con.execute(
                "INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (media.media_id, media.sha256, media.phone_number_id,
                 "deleting" if deleted else "current", _text(media.uploaded_at), _text(media.expires_at)),
            )
            _log(con, media.uploaded_at, media.action, sha256=media.sha256, media_id=media.media_id,
                 phone_number_id=media.phone_number_id, path=media.path,
                 detail=f"{'content deleted meanwhile' if gone else 'upload lease lost'}: remote DELETE owed"
                 if deleted else None)
            return Recorded.CONTENT_DELETED if deleted else Recorded.CURRENT

    # -- lifecycle ----------------------------------------------------------------------

    @_mapped
    def expiring_media(self, before: Cutoffs) -> list[MediaRow]:
        """See :meth:`Store.expiring_media`."""
        return self._media_rows(EXPIRING_SQL + " AND c.deleted_at IS NULL ORDER BY m.expires_at",
                                _cutoffs(before))

    @_mapped
    def source_paths(self, sha256: str) -> list[SourcePath]:
        """See :meth:`Store.source_paths`."""
        rows = self._connection().execute(
            "SELECT path, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at FROM paths "
            "WHERE sha256 = ? ORDER BY seen_at DESC",
            (sha256,),
        )
        return [SourcePath(Fingerprint(*row[:6]), _time(row[6])) for row in rows]

    @_mapped
    def sourced_contents(self) -> list[ContentRef]:
        """See :meth:`Store.sourced_contents`."""
        rows = self._connection().execute(
            "SELECT c.sha256, c.mime_type FROM contents AS c WHERE c.deleted_at IS NULL "
            "AND EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = c.sha256)"
        )
        return [ContentRef(*row) for row in rows]

    def forget_vanished(self, sha256: str, paths: list[str], now: datetime) -> bool:
        """See :meth:`Store.forget_vanished` (one host: every path is this host's)."""
        with self._transaction() as con:
            for path in paths:
                if con.execute("DELETE FROM paths WHERE path = ? AND sha256 = ?", (path, sha256)).rowcount:
                    _log(con, now, "vanished", sha256=sha256, path=path)
            kept = con.execute(
                "SELECT deleted_at IS NOT NULL OR EXISTS (SELECT 1 FROM paths WHERE sha256 = :sha256) "
                "OR EXISTS (SELECT 1 FROM url_sources WHERE sha256 = :sha256) OR " + SENT_WITHOUT_A_FILE
                + " FROM contents WHERE sha256 = :sha256",
                {"sha256": sha256},
            ).fetchone()
            if kept is None or kept[0]:
                return False
            _mark_deleted(con, sha256, now, "sources vanished")
            return True

    def mark_deleted(self, sha256: str, now: datetime, reason: str) -> None:
        """See :meth:`Store.mark_deleted`."""
        with self._transaction() as con:
            _mark_deleted(con, sha256, now, reason)

    def claim_deletes(self, sha256: str | None, claim_for: timedelta) -> list[MediaRow]:
        """Every owed DELETE: one daemon serves an SQLite registry (its lock file), so there
        is no other host to share them with."""
        return self.pending_deletes(sha256)

    @_mapped
    def pending_deletes(self, sha256: str | None = None) -> list[MediaRow]:
        """See :meth:`Store.pending_deletes`."""
        return self._media_rows(
            "m.state = 'deleting' AND (:sha256 IS NULL OR m.sha256 = :sha256) ORDER BY m.sha256",
            {"sha256": sha256},
        )

    def forget_media(self, media_id: str, now: datetime, action: str, detail: str | None = None) -> None:
        """See :meth:`Store.forget_media`."""
        with self._transaction() as con:
            row = con.execute(
                "SELECT sha256, phone_number_id FROM media WHERE media_id = ?", (media_id,)
            ).fetchone()
            if row is None:
                return
            con.execute("DELETE FROM media WHERE media_id = ?", (media_id,))
            _log(con, now, action, sha256=row[0], media_id=media_id, phone_number_id=row[1],
                 detail=detail)
            # A deleted content goes with its last media row; its events stay as history.
            con.execute(
                "DELETE FROM contents WHERE sha256 = ? AND deleted_at IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = ?)",
                (row[0], row[0]),
            )

    @_mapped
    def expired_media(self, now: datetime) -> list[MediaRow]:
        """See :meth:`Store.expired_media`."""
        return self._media_rows("m.expires_at <= ? ORDER BY m.expires_at", (_text(now),))

    def _media_rows(self, where: str, parameters: Any) -> list[MediaRow]:
        rows = self._connection().execute(
            "SELECT m.media_id, m.sha256, m.phone_number_id, m.state, c.mime_type, m.uploaded_at, "
            "m.expires_at FROM media AS m JOIN contents AS c USING (sha256) WHERE " + where,
            parameters,
        )
        return [MediaRow._make((*row[:5], _time(row[5]), _time(row[6]))) for row in rows]

    # -- sources beyond paths -----------------------------------------------------------

    def remember_content(self, sha256: str, mime_type: str, size_bytes: int, recorded_at: datetime) -> None:
        """See :meth:`Store.remember_content`."""
        with self._transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                "VALUES (?, ?, ?, ?)",
                (sha256, mime_type, size_bytes, _text(recorded_at)),
            )
            con.execute("UPDATE contents SET deleted_at = NULL WHERE sha256 = ?", (sha256,))
            con.execute(
                "INSERT INTO events (at, action, sha256, detail) SELECT :at, 'sent', :sha256, "
                f"'{SENT_DETAIL}' WHERE NOT " + SENT_WITHOUT_A_FILE,
                {"at": _text(recorded_at), "sha256": sha256},
            )

    @_mapped
    def current_media_id(self, sha256: str, phone_number_id: str, valid_until: datetime) -> str | None:
        """See :meth:`Store.current_media_id`."""
        return _current_media_id(self._connection(), sha256, phone_number_id, valid_until)

    def url_hit(self, url: str, phone_number_id: str, valid_until: datetime,
                checked_after: datetime) -> str | None:
        """See :meth:`Store.url_hit`. The URL cache hit: keep it lean."""
        try:
            row = self._connection().execute(
                """
                SELECT m.media_id FROM url_sources AS u JOIN media AS m USING (sha256)
                WHERE u.url = ? AND u.checked_at > ? AND m.phone_number_id = ?
                  AND m.state = 'current' AND m.expires_at > ?
                """,
                (url, _text(checked_after), phone_number_id, _text(valid_until)),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        return row[0] if row else None

    @_mapped
    def url_source(self, url: str) -> UrlSource | None:
        """See :meth:`Store.url_source`."""
        row = self._connection().execute(_URL_SOURCES + "WHERE url = ?", (url,)).fetchone()
        return None if row is None else _url_source(row)

    @_mapped
    def url_sources(self, sha256: str) -> list[UrlSource]:
        """See :meth:`Store.url_sources`."""
        rows = self._connection().execute(_URL_SOURCES + "WHERE sha256 = ? ORDER BY checked_at DESC",
                                          (sha256,))
        return [_url_source(row) for row in rows]

    def remember_url(self, source: UrlSource) -> None:
        """See :meth:`Store.remember_url`."""
        with self._transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO url_sources "
                "(url, sha256, etag, last_modified, checked_at, refetchable) VALUES (?, ?, ?, ?, ?, ?)",
                (source.url, source.sha256, source.etag, source.last_modified,
                 _text(source.checked_at), int(source.refetchable)),
            )

    def touch_url(self, url: str, checked_at: datetime) -> None:
        """See :meth:`Store.touch_url`."""
        with self._transaction() as con:
            con.execute("UPDATE url_sources SET checked_at = ? WHERE url = ?", (_text(checked_at), url))

    def forget_url(self, url: str, now: datetime, reason: str) -> None:
        """See :meth:`Store.forget_url`."""
        with self._transaction() as con:
            row = con.execute("SELECT sha256 FROM url_sources WHERE url = ?", (url,)).fetchone()
            if row is None:
                return
            con.execute("DELETE FROM url_sources WHERE url = ?", (url,))
            _log(con, now, "forget url", sha256=row[0], path=url, detail=reason)

    def invalidate_media(self, media_id: str, now: datetime, reason: str) -> bool:
        """See :meth:`Store.invalidate_media`."""
        with self._transaction() as con:
            row = con.execute(
                "SELECT sha256, phone_number_id FROM media WHERE media_id = ?", (media_id,)
            ).fetchone()
            if row is None:
                return False
            con.execute("UPDATE media SET state = 'invalidated' WHERE media_id = ? AND state != 'deleting'",
                        (media_id,))
            _log(con, now, "invalidate", sha256=row[0], media_id=media_id, phone_number_id=row[1],
                 detail=reason)
            return True

    # -- inbound media ------------------------------------------------------------------

    def record_inbound(self, row: InboundRow, detail: str | None = None) -> None:
        """See :meth:`Store.record_inbound`."""
        with self._transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO inbound "
                "(media_id, sha256, mime_type, size_bytes, path, downloaded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*row[:5], _text(row.downloaded_at)),
            )
            _log(con, row.downloaded_at, "download", sha256=row.sha256, media_id=row.media_id,
                 path=row.path, detail=detail)

    # -- reading for people -------------------------------------------------------------

    @_mapped
    def resolve(self, target: str) -> str | None:
        """See :meth:`Store.resolve`."""
        con = self._connection()
        row = (
            con.execute("SELECT sha256 FROM paths WHERE path = ?", (os.path.abspath(target),)).fetchone()
            or con.execute("SELECT sha256 FROM media WHERE media_id = ?", (target,)).fetchone()
            or con.execute("SELECT sha256 FROM contents WHERE sha256 = ?", (target.lower(),)).fetchone()
        )
        return row[0] if row else None

    @_mapped
    def sha256s_starting_with(self, prefix: str, limit: int) -> list[str]:
        """See :meth:`Store.sha256s_starting_with`."""
        rows = self._connection().execute(
            "SELECT sha256 FROM contents WHERE sha256 >= :prefix AND sha256 < :prefix || 'g' "
            "ORDER BY sha256 LIMIT :limit",
            {"prefix": prefix, "limit": limit},
        )
        return [row[0] for row in rows]

    def content_rows(
        self, *, sha256: str | None = None, expiring_before: datetime | None = None
    ) -> Iterator[ContentRow]:
        """See :meth:`Store.content_rows`: one statement (one snapshot), read row by row."""
        sql = CONTENT_ROWS_SQL.format(join="JOIN" if expiring_before is not None else "LEFT JOIN")
        parameters = (_text(expiring_before) if expiring_before else None,) * 2 + (sha256,) * 2
        import json  # only listings need it: the cache hit's start-up stays lean

        try:
            cursor = self._connection().execute(sql, parameters)
            for row in cursor:
                yield ContentRow(
                    row[0], row[1], row[2], _time(row[3]), _maybe_time(row[4]), row[5], row[6],
                    _maybe_time(row[7]), _maybe_time(row[8]), tuple(json.loads(row[9])),
                )
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    @_mapped
    def events(self, sha256: str) -> list[EventRow]:
        """See :meth:`Store.events`."""
        rows = self._connection().execute(
            "SELECT at, action, media_id, phone_number_id, path, detail FROM events "
            "WHERE sha256 = ? ORDER BY id",
            (sha256,),
        )
        return [EventRow(_time(row[0]), *row[1:]) for row in rows]

    @_mapped
    def stats(self, now: datetime, expiring_before: Cutoffs) -> StoreStats:
        """See :meth:`Store.stats`. The backend facts: ``db`` (the file), ``db_bytes`` (with
        its -wal and -shm files) and ``journal_mode``."""
        con = self._connection()
        times = {"now": _text(now), **_cutoffs(expiring_before)}
        counts = con.execute(
            f"""
            SELECT
              (SELECT count(*) FROM contents),
              (SELECT count(*) FROM contents WHERE deleted_at IS NOT NULL),
              (SELECT count(*) FROM paths),
              (SELECT count(*) FROM media WHERE state = 'current' AND expires_at > :now),
              (SELECT count(*) FROM media AS m WHERE m.expires_at > :now AND {EXPIRING_SQL}),
              (SELECT count(*) FROM media WHERE expires_at <= :now),
              (SELECT count(*) FROM media WHERE state = 'superseded'),
              (SELECT count(*) FROM media WHERE state = 'deleting'),
              (SELECT count(*) FROM events WHERE action IN ('upload', 'refresh')),
              (SELECT count(*) FROM leases)
            """,
            times,
        ).fetchone()
        by_phone = {
            phone: PhoneStats(live, expiring, expired)
            for phone, live, expiring, expired in con.execute(
                "SELECT phone_number_id, sum(state = 'current' AND expires_at > :now), "
                f"sum(expires_at > :now AND {EXPIRING_SQL}), "
                "sum(expires_at <= :now) FROM media AS m GROUP BY phone_number_id ORDER BY 1",
                times,
            )
        }
        journal_mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        backend: dict[str, str | int] = {
            "db": self.location, "db_bytes": self._bytes_on_disk(), "journal_mode": journal_mode,
        }
        return StoreStats._make((*counts, by_phone, backend))

    def _bytes_on_disk(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total


def _forget_connections(reference: weakref.ref[SQLiteStore]) -> None:
    store = reference()
    if store is not None:
        store._local = threading.local()
        store._connections = []  # the parent's; closing them here would disturb the parent


@contextmanager
def _closing(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield con
    finally:
        con.close()


_URL_SOURCES = "SELECT url, sha256, etag, last_modified, checked_at, refetchable FROM url_sources "


def _url_source(row: tuple[Any, ...]) -> UrlSource:
    return UrlSource(row[0], row[1], row[2], row[3], _time(row[4]), bool(row[5]))


def _cutoffs(cutoffs: Cutoffs) -> dict[str, str]:
    import json  # not on the cache hit's path

    return {"before": _text(cutoffs.default),
            "cutoffs": json.dumps({phone: _text(at) for phone, at in cutoffs.by_phone})}


def _mark_deleted(con: sqlite3.Connection, sha256: str, now: datetime, reason: str) -> None:
    con.execute("UPDATE contents SET deleted_at = ? WHERE sha256 = ?", (_text(now), sha256))
    con.execute("UPDATE media SET state = 'deleting' WHERE sha256 = ?", (sha256,))
    con.execute("DELETE FROM paths WHERE sha256 = ?", (sha256,))
    con.execute("DELETE FROM url_sources WHERE sha256 = ?", (sha256,))
    con.execute("DELETE FROM leases WHERE sha256 = ?", (sha256,))
    _log(con, now, "delete", sha256=sha256, detail=reason)


def _fingerprint_columns(fp: Fingerprint) -> tuple[int, int, int, int, int]:
    return fp.size, fp.mtime_ns, fp.ctime_ns, fp.inode, fp.device


def _current_media_id(
    con: sqlite3.Connection, sha256: str, phone_number_id: str, valid_until: datetime
) -> str | None:
    row = con.execute(
        "SELECT media_id FROM media WHERE sha256 = ? AND phone_number_id = ? "
        "AND state = 'current' AND expires_at > ?",
        (sha256, phone_number_id, _text(valid_until)),
    ).fetchone()
    return row[0] if row else None


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
         "detail": None, **fields, "at": _text(at), "action": action},
    )


# What `media-registry migrate` copies, table by table, in this column order: times as
# datetimes, and the fingerprint's ctime and device as 0 where a version-1 registry lacks
# them (the first cache hit then hashes the file once and records them).
EXPORT_SQL = {
    "contents": "SELECT sha256, mime_type, size_bytes, first_seen_at, deleted_at FROM contents ORDER BY sha256",
    "media": "SELECT media_id, sha256, phone_number_id, state, uploaded_at, expires_at FROM media ORDER BY media_id",
    "paths": "SELECT path, sha256, size_bytes, mtime_ns, {ctime}, inode, {device}, seen_at FROM paths ORDER BY path",
    "events": "SELECT at, action, sha256, media_id, phone_number_id, path, detail FROM events ORDER BY id",
    "inbound": "SELECT media_id, sha256, mime_type, size_bytes, path, downloaded_at FROM inbound ORDER BY media_id",
    "url_sources": "SELECT url, sha256, etag, last_modified, checked_at, refetchable FROM url_sources ORDER BY url",
}
_EXPORT_TIMES = {"contents": (3, 4), "media": (4, 5), "paths": (7,), "events": (0,), "inbound": (5,),
                 "url_sources": (4,)}


def export_registry(path: str | os.PathLike[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the SQLite registry at ``path`` that a migration copies, read without
    changing the file (a read-only connection; an older schema version is read as it is)."""
    location = Path(path)
    if not location.is_file():
        raise RegistryError(f"no registry at {location}; point --db (or MEDIA_REGISTRY_DB) at the SQLite file")
    try:
        with _closing(sqlite3.connect(location.absolute().as_uri() + "?mode=ro", uri=True)) as con:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            columns = {row[1] for row in con.execute("PRAGMA table_info(paths)")}
            if not version or "sha256" not in columns:
                raise RegistryCorrupt(f"{location} is not a media-registry registry (left untouched)")
            if version > migrations.SCHEMA_VERSION:
                raise SchemaTooNew(f"registry {location} is newer than this media-registry; "
                                   "upgrade: pip install -U media-registry")
            ctime, device = ("ctime_ns", "device") if "device" in columns else ("0", "0")
            present = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return {
                table: [_export_row(row, _EXPORT_TIMES[table])
                        for row in con.execute(sql.format(ctime=ctime, device=device))]
                if table in present else []  # an older schema has no url_sources yet
                for table, sql in EXPORT_SQL.items()
            }
    except sqlite3.Error as exc:
        raise RegistryError(f"registry {location} cannot be read ({exc}); check the file") from None


def _export_row(row: tuple[Any, ...], times: tuple[int, ...]) -> tuple[Any, ...]:
    return tuple(_maybe_time(value) if index in times else value for index, value in enumerate(row))
