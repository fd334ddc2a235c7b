"""The SQLite backend of the Store contract (:mod:`media_registry.store`), the embedded default.

Connections are per thread and per process (re-opened after a fork), in autocommit mode;
writes are ``BEGIN IMMEDIATE`` transactions, kept short and never around a network call. WAL
lets readers run while one writer commits. Times are stored as UTC ISO-8601 text, so people
reading the file with ``sqlite3`` see dates. One host uses the file: every path is its own.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import sqlite3
import stat
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import RegistryCorrupt, RegistryError, RegistryLocked, SchemaTooNew
from . import HOST, LeaseOutcome, LeaseStatus, migrations, owner_alive
from ._port import EXPIRING, Params, Tx, utc_text
from ._sql import SQLStore

T = TypeVar("T")

DIALECT = {
    "here": "", "p_here": "", "and_p_here": "", "host_col": "", "host_val": "", "host_cols": "", "host_vals": "",
    "host_set": "", "for_update": "", "skip_locked": "", "db_now": ":now", "claim_until": ":claim_until",
    "live_path": "TRUE", "touch_host": "",
    # The paths as a JSON array: a file name may hold any character, a newline included.
    "path_list": "(SELECT json_group_array(p.path) FROM paths AS p WHERE p.sha256 = c.sha256)",
    "expiring": EXPIRING.format(cutoff="(SELECT value FROM json_each(:cutoffs) WHERE key = m.phone_number_id)"),
}


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class SQLiteStore(SQLStore):
    """The registry in the SQLite file at ``path``.

    ``create=False`` refuses a missing file instead of creating a registry. A file that is
    not a media-registry registry (not SQLite, someone else's tables, a FIFO) is refused in
    either mode without a byte of it changed; an older registry of ours is upgraded.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.host_id = HOST
        self.scope = {"host": HOST}
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

    dialect = DIALECT

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

    def _open(self) -> sqlite3.Connection:
        mode = "rwc" if self._create else "rw"
        try:
            con = sqlite3.connect(
                self.path.absolute().as_uri() + f"?mode={mode}", uri=True, timeout=self.busy_timeout,
                isolation_level=None, check_same_thread=False,
            )
            self._prepare(con)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        self._local.con = con
        with self._lock:
            self._connections.append(con)
        return con

    def _prepare(self, con: sqlite3.Connection) -> None:
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

    # -- the port -------------------------------------------------------------------------

    def _read(self, sql: str, params: Params) -> list[Any]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def _positional(self, sql: str) -> str:
        return re.sub(r"(?<!:):[a-z_][a-z0-9_]*", "?", sql)

    def _read_one(self, sql: str, params: Params) -> Any:
        try:
            return self._connection().execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def _write(self, work: Callable[[Tx], T]) -> T:
        """``work`` in a short write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                result = work(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def _stream(self, sql: str, params: Params) -> Iterator[Any]:
        try:
            yield from self._connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def _acquire(self, sha256: str, phone: str, owner: str, now: datetime,
                 claim: Callable[[Tx], LeaseOutcome]) -> LeaseOutcome:
        """The lease row is the mutex: free when absent, expired, or its owner died."""

        def work(con: Tx) -> LeaseOutcome:
            row = con.execute("SELECT owner, expires_at FROM leases "
                              "WHERE sha256 = :sha256 AND phone_number_id = :phone",
                              {"sha256": sha256, "phone": phone}).fetchone()
            if row and row[1] > utc_text(now) and owner_alive(row[0]):
                return LeaseOutcome(LeaseStatus.WAIT)
            return claim(con)

        return self._write(work)

    _time = staticmethod(_parse)
    _when = staticmethod(utc_text)

    def _paths(self, value: Any) -> tuple[str, ...]:
        import json  # only listings need it: the cache hit's start-up stays lean

        return tuple(json.loads(value))

    def _facts(self) -> dict[str, str | int]:
        """``db`` (the file), ``db_bytes`` (with its -wal and -shm files) and ``journal_mode``."""
        journal_mode = self._read_one("PRAGMA journal_mode", {})[0]
        return {"db": self.location, "db_bytes": self._bytes_on_disk(), "journal_mode": journal_mode}

    @contextmanager
    def daemon_lock(self) -> Iterator[None]:
        """Hold an exclusive lock on a file beside the registry, the file itself rather than
        the name it was given: a symlink to it, or a path through a symlinked folder, finds
        the same lock. The kernel releases it when the process dies, so a killed daemon never
        blocks the next one."""
        with _lock_beside(self.path):
            yield

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
    return tuple(_parse(value) if index in times and value else value for index, value in enumerate(row))


@contextmanager
def _lock_beside(db: Path) -> Iterator[None]:
    registry = db.resolve()
    handle = _open_lock(registry.with_name(registry.name + ".daemon-lock"))
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RegistryLocked(
                f"another media-registry daemon (pid {holder}) already serves {db}; "
                "stop it first, or run this one on another registry"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(handle)


def _open_lock(path: Path) -> int:
    """Open (or create) the daemon's lock file without following a symlink, and only if it is
    one a daemon wrote: a regular file of one link holding at most a PID. Anything else placed
    there is refused and left exactly as it was."""
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        what = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise RegistryError(
            f"{path}: {what}, not a daemon lock; remove it, then start the daemon again"
        ) from None
    facts = os.fstat(handle)
    if not (stat.S_ISREG(facts.st_mode) and facts.st_nlink == 1 and facts.st_size <= 32
            and re.fullmatch(rb"\d*\s*", os.pread(handle, 32, 0))):
        os.close(handle)
        raise RegistryError(
            f"{path}: holds something other than a daemon lock; remove it, then start the "
            "daemon again"
        )
    return handle
