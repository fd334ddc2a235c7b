"""Template header handles in the registry: one per content and app, served until it expires
(Meta documents no lifetime: ``MEDIA_REGISTRY_HANDLE_TTL``) or is invalidated, and the claim
that lets one uploader at a time make it, fleet-wide, with the upload session it opened (a
later claimer, in another process after a crash, resumes it). A file's first upload is
claimed under :func:`file_key` (its sha256 is computed while it is sent). Written once over a
:class:`~media_registry.store.backend.Backend`'s primitives; the Store holds one."""

from __future__ import annotations

import enum
from datetime import datetime

from .._tuples import NamedTuple
from ..content.hashing import Fingerprint
from .backend import SIGNED, Backend, Tx, int64

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any

_KEY = "WHERE sha256 = :sha256 AND app_id = :app"
# The cached handle of a file whose fingerprint matches in every field: one indexed read.
PATH_HIT = ("SELECT h.handle, p.seen_at FROM paths AS p JOIN header_handles AS h ON h.sha256 = p.sha256 "
            "WHERE h.app_id = :app AND h.handle IS NOT NULL AND h.expires_at > :now AND p.path = :path "
            "AND p.size_bytes = :size AND p.mtime_ns = :mtime AND p.ctime_ns = :ctime AND p.inode = :inode "
            "AND p.device = :device{and_p_here}")
VALID = f"SELECT handle FROM header_handles {_KEY} AND handle IS NOT NULL AND expires_at > :now"
# The claim goes in unless a valid handle exists or a live claimer holds the row; it gives the
# upload session a former claimer left (resumed).
CLAIM = """INSERT INTO header_handles (sha256, app_id, claimed_by, claimed_until, size_bytes)
    VALUES (:sha256, :app, :owner, :until, :size)
    ON CONFLICT (sha256, app_id) DO UPDATE SET
        claimed_by = excluded.claimed_by, claimed_until = excluded.claimed_until,
        size_bytes = excluded.size_bytes
    WHERE (header_handles.handle IS NULL OR header_handles.expires_at <= :now)
      AND (header_handles.claimed_by IS NULL OR header_handles.claimed_until <= :now)
    RETURNING session"""
SESSION = f"UPDATE header_handles SET session = :session {_KEY} AND claimed_by = :owner"
# Whether a content of this size may have a handle or be being made (sizes unknown count).
SAME_SIZE = ("SELECT 1 FROM header_handles WHERE app_id = :app AND sha256 NOT LIKE 'file:%' "
             "AND (size_bytes = :size OR size_bytes IS NULL) "
             "AND ((handle IS NOT NULL AND expires_at > :now) OR claimed_until > :now) LIMIT 1")
RENEW = f"UPDATE header_handles SET claimed_until = :until {_KEY} AND claimed_by = :owner"
RELEASE = f"UPDATE header_handles SET claimed_by = NULL, claimed_until = NULL {_KEY} AND claimed_by = :owner"
# A claim's row that holds nothing (no handle, no session to resume) goes with it.
DROP_EMPTY = f"DELETE FROM header_handles {_KEY} AND claimed_by = :owner AND handle IS NULL AND session IS NULL"
RECORD = (f"UPDATE header_handles SET handle = :handle, created_at = :now, expires_at = :expires, "
          f"claimed_by = NULL, claimed_until = NULL, session = NULL {_KEY}")
# A file's first upload, claimed under its file key: the handle goes under its sha256.
RECORD_NEW = """INSERT INTO header_handles (sha256, app_id, handle, created_at, expires_at, size_bytes)
    VALUES (:sha256, :app, :handle, :now, :expires, :size)
    ON CONFLICT (sha256, app_id) DO UPDATE SET handle = excluded.handle,
        created_at = excluded.created_at, expires_at = excluded.expires_at, size_bytes = excluded.size_bytes"""
# Its claim's row keeps the handle too: a caller that took the file's fingerprint before it
# was made is told to serve, and serves it by the file's sha256.
RECORD_KEY = ("UPDATE header_handles SET handle = :handle, created_at = :now, expires_at = :expires, "
              "claimed_by = NULL, claimed_until = NULL, session = NULL WHERE sha256 = :key AND app_id = :app")
INVALIDATE = ("UPDATE header_handles SET handle = NULL, created_at = NULL, expires_at = NULL "
              "WHERE handle = :handle RETURNING sha256, app_id")
LOG = ("INSERT INTO events (at, action, sha256, path, detail{host_cols}) "
       "VALUES (:at, :action, :sha256, :path, :detail{host_vals})")
ALL = ("SELECT sha256, app_id, handle, created_at, expires_at FROM header_handles "
       "WHERE handle IS NOT NULL AND sha256 NOT LIKE 'file:%' ORDER BY created_at DESC")


def file_key(fp: Fingerprint) -> str:
    """The key a file's first upload is claimed under, before its sha256 is known: unique to
    its fingerprint (a changed file gets another, and never resumes the old one's session)."""
    import hashlib  # here, not at the top: OpenSSL is slow to load, and a cache hit never hashes

    return "file:" + hashlib.sha256(repr(tuple(fp)).encode()).hexdigest()


def handle_columns(con: Any) -> None:
    """The schema step that gives a SQLite registry's ``header_handles`` its size and session
    columns (a registry made by the handles' own step, from today's schema file, has them)."""
    have = {row[1] for row in con.execute("PRAGMA table_info(header_handles)")}
    for column in ("size_bytes INTEGER", "session TEXT"):
        if column.split()[0] not in have:
            con.execute(f"ALTER TABLE header_handles ADD COLUMN {column}")


class Claim(enum.Enum):
    """What asking to make a handle gave: one to SERVE, the claim (ACQUIRED), or WAIT."""

    SERVE = "serve"
    ACQUIRED = "acquired"
    WAIT = "wait"


class HandleRow(NamedTuple):
    """A handle the registry holds."""

    sha256: str
    app_id: str
    handle: str
    created_at: datetime
    expires_at: datetime


class HandleStore:
    """The ``header_handles`` table's operations; each write is one short transaction."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._when = backend.when
        self._log = LOG.format_map(backend.dialect)
        self._path_hit = backend.positional(PATH_HIT.format_map(backend.dialect))
        self._here = (backend.host_id,) if backend.dialect["and_p_here"] else ()

    def path_hit(self, fp: Fingerprint, app_id: str, now: datetime) -> tuple[str, datetime] | None:
        """The handle of the content recorded at ``fp.path`` (every fingerprint field matching)
        for ``app_id``, valid after ``now``, and when the fingerprint was recorded; or None."""
        if fp[4] | fp[5] >= SIGNED:
            fp = fp._replace(inode=int64(fp.inode), device=int64(fp.device))
        row = self._backend.read_one(self._path_hit, (app_id, self._when(now)) + fp + self._here)
        return None if row is None else (str(row[0]), self._backend.time(row[1]))

    def valid(self, sha256: str, app_id: str, now: datetime) -> str | None:
        """The handle of (sha256, app) that has not expired at ``now``, or None. One indexed read."""
        row = self._backend.read_one(VALID, {"sha256": sha256, "app": app_id, "now": self._when(now)})
        return None if row is None else str(row[0])

    def same_size(self, app_id: str, size: int, now: datetime) -> bool:
        """Whether a content of ``size`` bytes may have a valid handle for ``app_id`` or be
        being made (then a new file is hashed before it is sent)."""
        params = {"app": app_id, "size": size, "now": self._when(now)}
        return self._backend.read_one(SAME_SIZE, params) is not None

    def claim(self, sha256: str, app_id: str, owner: str, now: datetime, until: datetime,
              size: int | None = None) -> tuple[Claim, str | None]:
        """Atomically: SERVE a valid handle (given); else take the claim until ``until``
        (ACQUIRED, with the upload session a former claimer left, or None) if nobody alive
        holds it; else WAIT. ``sha256`` may be a :func:`file_key`."""
        params = {"sha256": sha256, "app": app_id, "owner": owner, "now": self._when(now),
                  "until": self._when(until), "size": size}

        def claim(tx: Tx) -> tuple[Claim, str | None]:
            if (row := tx.execute(CLAIM, params).fetchone()) is not None:
                return Claim.ACQUIRED, row[0]
            row = tx.execute(VALID, params).fetchone()
            return (Claim.SERVE, str(row[0])) if row is not None else (Claim.WAIT, None)

        return self._backend.write(claim)

    def renew(self, sha256: str, app_id: str, owner: str, until: datetime) -> None:
        """Keep ``owner``'s claim until ``until`` while its upload runs."""
        params = {"sha256": sha256, "app": app_id, "owner": owner, "until": self._when(until)}
        self._backend.write(lambda tx: tx.execute(RENEW, params))

    def keep_session(self, sha256: str, app_id: str, owner: str, session: str) -> None:
        """Keep the upload session ``owner`` opened, for whoever claims the row next."""
        params = {"sha256": sha256, "app": app_id, "owner": owner, "session": session}
        self._backend.write(lambda tx: tx.execute(SESSION, params))

    def release(self, sha256: str, app_id: str, owner: str) -> None:
        """Give up ``owner``'s claim (idempotent); its upload session stays, to be resumed."""
        params = {"sha256": sha256, "app": app_id, "owner": owner}

        def release(tx: Tx) -> None:
            tx.execute(DROP_EMPTY, params)
            tx.execute(RELEASE, params)

        self._backend.write(release)

    def record(self, sha256: str, app_id: str, handle: str, now: datetime, expires_at: datetime,
               source: str) -> None:
        """Record a handle just made (the claim ends), with an event naming its source."""
        params = {"sha256": sha256, "app": app_id, "handle": handle, "now": self._when(now),
                  "expires": self._when(expires_at)}

        def record(tx: Tx) -> None:
            tx.execute(RECORD, params)
            self._event(tx, now, "handle", sha256, source, f"header handle for app {app_id}")

        self._backend.write(record)

    def record_new(self, key: str, sha256: str, app_id: str, handle: str, now: datetime,
                   expires_at: datetime, size: int, source: str) -> None:
        """Record the handle of a file's first upload, claimed under ``key`` (:func:`file_key`),
        under its sha256 computed while it was sent (and under ``key``, the claim ended)."""
        params = {"sha256": sha256, "app": app_id, "handle": handle, "now": self._when(now),
                  "expires": self._when(expires_at), "size": size, "key": key}

        def record(tx: Tx) -> None:
            tx.execute(RECORD_NEW, params)
            tx.execute(RECORD_KEY, params)
            self._event(tx, now, "handle", sha256, source, f"header handle for app {app_id}")

        self._backend.write(record)

    def invalidate(self, handle: str, now: datetime, reason: str) -> bool:
        """Never serve ``handle`` again; whether the registry held it."""
        def invalidate(tx: Tx) -> bool:
            rows = tx.execute(INVALIDATE, {"handle": handle}).fetchall()
            for sha256, app_id in rows:
                if sha256.startswith("file:"):  # a file's claim (see record_new): not a content
                    continue
                self._event(tx, now, "invalidate_handle", sha256, None, f"app {app_id}: {reason}")
            return bool(rows)

        return self._backend.write(invalidate)

    def handles(self) -> list[HandleRow]:
        """Every handle held (expired ones too), newest first."""
        parse = self._backend.time
        return [HandleRow(row[0], row[1], row[2], parse(row[3]), parse(row[4]))
                for row in self._backend.read(ALL, {})]

    def _event(self, tx: Tx, at: datetime, action: str, sha256: str, path: str | None, detail: str) -> None:
        params: dict[str, Any] = {**self._backend.scope, "at": self._when(at), "action": action,
                                  "sha256": sha256, "path": path, "detail": detail}
        tx.execute(self._log, params)
