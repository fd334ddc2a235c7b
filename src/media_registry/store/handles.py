"""Template header handles in the registry: one per content and app, served until it expires
(Meta documents no lifetime: ``MEDIA_REGISTRY_HANDLE_TTL``) or is invalidated, and the claim
that lets one uploader at a time make it, fleet-wide. Written once over a
:class:`~media_registry.store.backend.Backend`'s primitives; the Store holds one."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NamedTuple

from ..content.hashing import Fingerprint
from .backend import SIGNED, Backend, Tx, int64

_KEY = "WHERE sha256 = :sha256 AND app_id = :app"
# The cached handle of a file whose fingerprint matches in every field: one indexed read.
PATH_HIT = ("SELECT h.handle, p.seen_at FROM paths AS p JOIN header_handles AS h ON h.sha256 = p.sha256 "
            "WHERE h.app_id = :app AND h.handle IS NOT NULL AND h.expires_at > :now AND p.path = :path "
            "AND p.size_bytes = :size AND p.mtime_ns = :mtime AND p.ctime_ns = :ctime AND p.inode = :inode "
            "AND p.device = :device{and_p_here}")
VALID = f"SELECT handle FROM header_handles {_KEY} AND handle IS NOT NULL AND expires_at > :now"
# The claim goes in unless a valid handle exists or a live claimer holds the row.
CLAIM = """INSERT INTO header_handles (sha256, app_id, claimed_by, claimed_until)
    VALUES (:sha256, :app, :owner, :until)
    ON CONFLICT (sha256, app_id) DO UPDATE SET
        claimed_by = excluded.claimed_by, claimed_until = excluded.claimed_until
    WHERE (header_handles.handle IS NULL OR header_handles.expires_at <= :now)
      AND (header_handles.claimed_by IS NULL OR header_handles.claimed_until <= :now)
    RETURNING 1"""
RENEW = f"UPDATE header_handles SET claimed_until = :until {_KEY} AND claimed_by = :owner"
RELEASE = f"UPDATE header_handles SET claimed_by = NULL, claimed_until = NULL {_KEY} AND claimed_by = :owner"
RECORD = (f"UPDATE header_handles SET handle = :handle, created_at = :now, expires_at = :expires, "
          f"claimed_by = NULL, claimed_until = NULL {_KEY}")
INVALIDATE = ("UPDATE header_handles SET handle = NULL, created_at = NULL, expires_at = NULL "
              "WHERE handle = :handle RETURNING sha256, app_id")
LOG = ("INSERT INTO events (at, action, sha256, path, detail{host_cols}) "
       "VALUES (:at, :action, :sha256, :path, :detail{host_vals})")
ALL = ("SELECT sha256, app_id, handle, created_at, expires_at FROM header_handles "
       "WHERE handle IS NOT NULL ORDER BY created_at DESC")


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

    def claim(self, sha256: str, app_id: str, owner: str, now: datetime,
              until: datetime) -> tuple[Claim, str | None]:
        """Atomically: SERVE a valid handle; else take the claim until ``until`` (ACQUIRED) if
        nobody alive holds it; else WAIT."""
        params = {"sha256": sha256, "app": app_id, "owner": owner, "now": self._when(now),
                  "until": self._when(until)}

        def claim(tx: Tx) -> tuple[Claim, str | None]:
            if tx.execute(CLAIM, params).fetchone() is not None:
                return Claim.ACQUIRED, None
            row = tx.execute(VALID, params).fetchone()
            return (Claim.SERVE, str(row[0])) if row is not None else (Claim.WAIT, None)

        return self._backend.write(claim)

    def renew(self, sha256: str, app_id: str, owner: str, until: datetime) -> None:
        """Keep ``owner``'s claim until ``until`` while its upload runs."""
        params = {"sha256": sha256, "app": app_id, "owner": owner, "until": self._when(until)}
        self._backend.write(lambda tx: tx.execute(RENEW, params))

    def release(self, sha256: str, app_id: str, owner: str) -> None:
        """Give up ``owner``'s claim (idempotent)."""
        params = {"sha256": sha256, "app": app_id, "owner": owner}
        self._backend.write(lambda tx: tx.execute(RELEASE, params))

    def record(self, sha256: str, app_id: str, handle: str, now: datetime, expires_at: datetime,
               source: str) -> None:
        """Record a handle just made (the claim ends), with an event naming its source."""
        params = {"sha256": sha256, "app": app_id, "handle": handle, "now": self._when(now),
                  "expires": self._when(expires_at)}

        def record(tx: Tx) -> None:
            tx.execute(RECORD, params)
            self._event(tx, now, "handle", sha256, source, f"header handle for app {app_id}")

        self._backend.write(record)

    def invalidate(self, handle: str, now: datetime, reason: str) -> bool:
        """Never serve ``handle`` again; whether the registry held it."""
        def invalidate(tx: Tx) -> bool:
            rows = tx.execute(INVALIDATE, {"handle": handle}).fetchall()
            for sha256, app_id in rows:
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
