"""The backend port under the Store contract's shared rules (:mod:`media_registry.store._sql`).

A backend subclasses :class:`~media_registry.store._sql.SQLStore` and provides the few primitives that really differ
between databases (model: dogpile.cache's ``CacheBackend``): a read, a write transaction, a
stream, the upload mutex, the time adapter, the host scope of paths (as SQL fragments) and
its own facts for ``stats``. Optional capabilities (the daemon lock, a pass's bookkeeping)
have a default here, so no caller ever asks which backend it has.

SQL is written once with named parameters (``:name``), ``ON CONFLICT`` and ``RETURNING``;
``{fragments}`` are the dialect's words, filled in once per backend class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import ConfigError
from ..hashing import Fingerprint
from .rows import Cutoffs, LeaseOutcome, MediaRow, TableCopy, UrlSource

T = TypeVar("T")
Params = Mapping[str, Any] | tuple[Any, ...]  # by name, or by position where each name is once


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
# Content sent as bytes, a stream or a URL (remember_content) since it was last deleted: an
# event says so, and such content never vanishes with a file of the same bytes.
SENT_DETAIL = "without a file: never purged as vanished"
SENT_WITHOUT_A_FILE = """EXISTS (
    SELECT 1 FROM events AS s WHERE s.sha256 = :sha256 AND s.action = 'sent' AND NOT EXISTS (
        SELECT 1 FROM events AS d WHERE d.sha256 = :sha256 AND d.action = 'delete' AND d.at > s.at))"""
_RELEASE = "DELETE FROM leases WHERE sha256 = :sha256 AND phone_number_id = :phone AND owner = :owner"


class Port:
    """The backend port, its optional capabilities, and the helpers the shared rules use."""

    location: str
    host_id: str  # who claims owed DELETEs (and, on a shared database, whose paths they are)
    scope: dict[str, Any]  # the parameters of the dialect's fragments: at least "host"
    # The dialect's words: `here`/`p_here` scope paths to this host ("... AND "; `and_p_here`
    # after a condition), `host_col`/`host_val` add the host to inserted paths and events,
    # `for_update`/`skip_locked` lock rows where two writers could meet, `db_now`/`claim_until`
    # are the database's clock, `live_path` keeps paths of live hosts, `cutoff` reads :cutoffs (JSON) for a number.
    dialect: ClassVar[dict[str, str]]

    # -- the port ---------------------------------------------------------------------------

    def _read(self, sql: str, params: Params) -> list[Any]:
        """Every row of one read, outside any write transaction."""
        raise NotImplementedError

    def _positional(self, sql: str) -> str:
        """``sql`` with each ``:name`` (each appearing once) bound by position: the cache hits
        bind a tuple, which both drivers bind faster than names."""
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

    # The time adapter: a stored time back as an aware datetime, and a time as a parameter.
    _time: Callable[[Any], datetime]
    _when: Callable[[datetime], Any]

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

    def import_rows(self, tables: dict[str, list[tuple[Any, ...]]]) -> list[TableCopy]:
        """Bring this registry up to date with another's rows, table by table (as
        :func:`~media_registry.store.sqlite.export_registry` reads them), the paths as this
        host's; what became of each table's rows. Only a shared database takes them."""
        raise ConfigError(f"{self.location} cannot take another registry's rows; migrate into PostgreSQL")

    def close(self) -> None:
        """Release every connection; the store is not used afterwards."""

    # -- helpers ----------------------------------------------------------------------------

    @classmethod
    @functools.cache
    def _sql(cls, template: str) -> str:
        return template.format(**cls.dialect)

    @functools.cached_property
    def _here(self) -> tuple[str, ...]:
        """The positional parameters of ``{and_p_here}``: the host, where paths have one."""
        return (self.host_id,) if self.dialect["and_p_here"] else ()

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


# "Expiring", shared by refresh and stats: a current ID at or before its number's cutoff
# (:cutoffs, a JSON object, for numbers with their own; :before, the widest, for the others).
EXPIRING = ("m.state = 'current' AND m.expires_at <= :before AND m.expires_at <= "
            "coalesce({cutoff}, :before)")
