"""The SQLite backend of the Store (:mod:`media_registry.store`), the embedded default.

Connections are per thread and per process (re-opened after a fork), in autocommit mode;
writes are ``BEGIN IMMEDIATE`` transactions, kept short and never around a network call. WAL
lets readers run while one writer commits. Times are stored as UTC ISO-8601 text, so people
reading the file with ``sqlite3`` see dates. One host uses the file: every path is its own.
"""

from __future__ import annotations

import _thread  # threading's Lock and local, without threading: the cache hit imports this module
import errno
import fcntl
import functools
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import datetime

from ..defaults import BUSY_TIMEOUT
from ..errors import RegistryCorrupt, RegistryError, RegistryLocked, SchemaTooNew
from . import migrations
from .backend import Backend, Params, Tx, at_fork, utc_text
from .owners import HOST, owner_alive
from .rows import LeaseOutcome, LeaseStatus

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

DIALECT = {
    **dict.fromkeys(("here", "p_here", "and_p_here", "host_col", "host_val", "host_cols", "host_vals", "host_set",
                     "for_update", "skip_locked", "touch_host"), ""),
    "db_now": ":now", "claim_until": ":claim_until", "live_path": "TRUE",
    # The paths as a JSON array: a file name may hold any character, a newline included.
    "path_list": "(SELECT json_group_array(p.path) FROM paths AS p INDEXED BY paths_listed WHERE p.sha256 = c.sha256)",
    "listed": "INDEXED BY contents_listed",  # the planner would read the table's rows
    "cutoff": "(SELECT value FROM json_each(:cutoffs) WHERE key = m.phone_number_id)",
}


# The bytes a file: URI carries as they are (as pathlib's as_uri leaves them); others are %XX.
_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def _shown(path: str) -> str:
    """``str(Path(path))``, the name messages give, without pathlib on every command's start-up."""
    root = "//" if path[:2] == "//" and path[2:3] != "/" else "/" if path[:1] == "/" else ""
    return root + "/".join(part for part in path.split("/") if part not in ("", ".")) or "."


def _uri(path: str) -> str:
    """``Path(path).absolute().as_uri()``: the file's URI, for SQLite's read-only and no-create modes."""
    absolute = path if path[:1] == "/" else os.getcwd() if path == "." else os.path.join(os.getcwd(), path)
    return "file://" + "".join(chr(byte) if byte in _URI_SAFE else f"%{byte:02X}" for byte in os.fsencode(absolute))


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class SQLiteBackend(Backend):
    """The registry in the SQLite file at ``path``.

    ``create=False`` refuses a missing file instead of creating a registry. A file that is
    not a media-registry registry (not SQLite, someone else's tables, a FIFO) is refused in
    either mode without a byte of it changed; an older registry of ours is upgraded.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = self.location = _shown(os.fspath(path))
        self.host_id = HOST
        self.scope = {"host": HOST}
        self.busy_timeout = busy_timeout
        self._create = create
        self._local = _thread._local()
        self._lock = _thread.allocate_lock()
        self._connections: list[sqlite3.Connection] = []
        self._check_file()
        # A connection must not cross a fork: registered here rather than checked per call
        # (os.getpid() is a syscall on the hot path).
        at_fork(self, SQLiteBackend._forget)
        self._con_here()  # open now so that a bad file fails at construction

    dialect = DIALECT

    def _check_file(self) -> None:
        """Refuse, before SQLite writes anything, what is not (or cannot become) ours."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            folder = os.path.dirname(self.path) or "."
            if not os.path.isdir(folder):
                raise RegistryError(
                    f"registry {self.path}: folder {folder} does not exist; create it first"
                ) from None
            if not self._create:
                raise RegistryError(f"no registry at {self.path}; check MEDIA_REGISTRY_DB (or --db), "
                                    "or create one with: media-registry init") from None
            return
        except OSError as exc:
            raise RegistryError(f"registry {self.path}: cannot stat it ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the first read forever
            raise self._not_ours("is a directory" if stat.S_ISDIR(st.st_mode) else "is not a regular file")
        # Through SQLite, read-only, so that someone else's database stays byte-identical (no
        # schema, no user_version, no switch to WAL). Never a plain open() and close() of the
        # file: closing any descriptor of it drops this process's SQLite locks on it.
        uri = _uri(self.path) + "?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=self.busy_timeout)) as con:
                version = _user_version(con)
                tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise self._not_ours("is not an SQLite database") from None
            raise self._explain(exc) from None
        if version == 0 and not tables:
            if not self._create:
                raise RegistryCorrupt(f"registry {self.path} is an empty SQLite database (left untouched); "
                                      "make it a registry with: media-registry init, or point "
                                      "MEDIA_REGISTRY_DB (or --db) at a registry file")
            return
        if version < 1 or not migrations.OUR_TABLES <= tables:
            raise self._not_ours("is an SQLite database but not a media-registry registry")

    def _not_ours(self, what: str) -> RegistryCorrupt:
        return RegistryCorrupt(f"registry {self.path} {what} (left untouched); "
                               "point MEDIA_REGISTRY_DB (or --db) at a registry file")

    def _open(self) -> sqlite3.Connection:
        mode = "rwc" if self._create else "rw"
        try:
            con = sqlite3.connect(_uri(self.path) + f"?mode={mode}", uri=True,
                                  timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            try:
                version = _user_version(con)
                if version > migrations.SCHEMA_VERSION:
                    raise SchemaTooNew(
                        f"registry {self.path} has schema version {version}, newer than this media-registry "
                        f"knows ({migrations.SCHEMA_VERSION}); upgrade: pip install -U media-registry")
                # synchronous NORMAL is durable against a killed process in WAL mode; only power
                # loss can undo the last commits, never corrupt the file.
                for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
                    con.execute(f"PRAGMA {pragma}")
                if version < migrations.SCHEMA_VERSION:
                    migrations.upgrade(con, self, migrations.MIGRATIONS, lambda: _immediate(con), _applied)
                    con.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION}")
            except BaseException:
                con.close()  # a connection is kept only once the schema is known good
                raise
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        self._local.con = con
        with self._lock:
            self._connections.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._connections:
                con.close()
            self._forget()

    def _explain(self, exc: sqlite3.Error) -> RegistryError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return RegistryLocked(f"registry {self.path} stayed locked by another writer for over "
                                  f"{self.busy_timeout:g} s; retry, or find the process holding it")
        if "not a database" in text or "malformed" in text:
            return RegistryCorrupt(f"registry {self.path} is damaged ({text}); restore it from a backup "
                                   "or move it away to start afresh")
        if "readonly" in text or "unable to open" in text:
            return RegistryError(f"registry {self.path} cannot be written ({text}); check the permissions "
                                 "of the file and its folder")
        if isinstance(exc, sqlite3.IntegrityError):
            return RegistryError(f"registry {self.path} refused a change that would break its rules ({text}); "
                                 "nothing was changed, retry")
        return RegistryError(f"registry {self.path}: {text}")

    def read_one(self, sql: str, params: Params) -> Any:
        """The first row, on this thread's connection: the cache hit, kept lean."""
        try:
            con = self._local.con
        except AttributeError:
            con = self._open()
        try:
            return con.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def moved(self) -> bool:
        """Whether anyone committed to the file since this thread last asked (a new connection:
        yes). Another connection's commit moves ``PRAGMA data_version``, this one's own writes
        its ``total_changes``. One statement: the local cache's check on every hit."""
        local = self._local
        try:
            cursor = local.cursor
        except AttributeError:
            cursor = local.cursor = self._con_here().cursor()  # kept: a hit makes no cursor
        try:
            mark = (cursor.execute("PRAGMA data_version").fetchone()[0], cursor.connection.total_changes)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        if getattr(local, "mark", None) == mark:
            return False
        local.mark = mark
        return True

    def writing(self) -> bool:
        """Whether this thread's connection is inside a transaction (a write of its own)."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        return con is not None and con.in_transaction

    def positional(self, sql: str) -> str:
        return re.sub(r"(?<!:):[a-z_][a-z0-9_]*", "?", sql)

    def write(self, work: Callable[[Tx], T]) -> T:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        try:
            with _immediate(self._con_here()) as con:
                return work(con)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def stream(self, sql: str, params: Params) -> Iterator[Any]:
        try:
            yield from self._con_here().execute(sql, params)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None

    def acquire(self, sha256: str, phone: str, owner: str, now: datetime,
                claim: Callable[[Tx], LeaseOutcome]) -> LeaseOutcome:
        """The lease row is the mutex: free when absent, expired, or its owner died."""

        def work(con: Tx) -> LeaseOutcome:
            row = con.execute("SELECT owner, expires_at FROM leases "
                              "WHERE sha256 = :sha256 AND phone_number_id = :phone",
                              {"sha256": sha256, "phone": phone}).fetchone()
            if row and row[1] > utc_text(now) and owner_alive(row[0]):
                return LeaseOutcome(LeaseStatus.WAIT)
            return claim(con)

        return self.write(work)

    time = staticmethod(_parse)
    when = staticmethod(utc_text)

    def paths(self, value: Any) -> tuple[str, ...]:
        import json  # only listings need it: the cache hit's start-up stays lean

        return tuple(json.loads(value))

    def facts(self) -> dict[str, str | int]:
        """``db`` (the file), ``db_bytes`` (with its -wal and -shm files) and ``journal_mode``."""
        size = sum(os.stat(name).st_size for name in (f"{self.path}{suffix}" for suffix in ("", "-wal", "-shm"))
                   if os.path.exists(name))
        return {"db": self.location, "db_bytes": size, "journal_mode": self.read_one("PRAGMA journal_mode", {})[0]}

    def daemon_lock(self) -> AbstractContextManager[None]:
        """One daemon per registry file, whatever name it is reached by."""
        return _lock_beside(self.path)

    def _forget(self) -> None:
        self._local, self._connections = _thread._local(), []

    def _con_here(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        return con if con is not None else self._open()


@contextmanager
def _immediate(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def export_registry(path: str | os.PathLike[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the SQLite registry at ``path`` that a migration copies (columns and order
    as :data:`~media_registry.store.migrations.EXPORTED`, times as stored), read without
    changing the file: a read-only connection; an older schema version read as it is (a
    version-1 registry's ctime and device as 0: the first cache hit then hashes it once)."""
    location = _shown(os.fspath(path))
    if not os.path.isfile(location):
        raise RegistryError(f"no registry at {location}; point --db (or MEDIA_REGISTRY_DB) at the SQLite file")
    try:
        with closing(sqlite3.connect(_uri(location) + "?mode=ro", uri=True)) as con:
            version = _user_version(con)
            columns = {row[1] for row in con.execute("PRAGMA table_info(paths)")}
            if not version or "sha256" not in columns:
                raise RegistryCorrupt(f"{location} is not a media-registry registry (left untouched)")
            if version > migrations.SCHEMA_VERSION:
                raise SchemaTooNew(f"registry {location} is newer than this media-registry; "
                                   "upgrade: pip install -U media-registry")
            present = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            tables = {}
            for table, (names, order) in migrations.EXPORTED.items():
                if "device" not in columns:
                    names = names.replace("ctime_ns,", "0,").replace("device,", "0,")
                tables[table] = (con.execute(f"SELECT {names} FROM {table} ORDER BY {order}").fetchall()
                                 if table in present else [])
            return tables
    except sqlite3.Error as exc:
        raise RegistryError(f"registry {location} cannot be read ({exc}); check the file") from None


@contextmanager
def _lock_beside(db: str) -> Iterator[None]:
    """Hold the daemon's lock on the SQLite registry: an exclusive flock on the registry file
    itself, so that any name of it (a symlink, a hard link) finds the same lock, and one on a
    file beside it that holds the daemon's PID for the message of the next one.

    flock is released by the kernel when the process dies, so a killed daemon never blocks
    the next one.
    """
    registry = os.path.realpath(db)
    handle = _open_lock(registry + ".daemon-lock")
    try:
        if not _flock(handle):
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RegistryLocked(f"another media-registry daemon (pid {holder}) already serves "
                                 f"{db}; stop it first, or run this one on another registry")
        # Never closed: closing any descriptor of the registry file would drop the POSIX locks
        # SQLite holds on it in this process (flock and POSIX locks do not meet on Linux).
        file = os.open(registry, os.O_RDONLY)
        if not _flock(file):
            raise RegistryLocked(f"another media-registry daemon already serves {db} under another "
                                 "name (a hard link); stop it first, or run this one on another registry")
        os.ftruncate(handle, 0)
        os.pwrite(handle, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
    finally:
        os.close(handle)


def _flock(handle: int) -> bool:
    """Take an exclusive flock on ``handle`` unless another holds one: whether it was taken."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_lock(path: str) -> int:
    """Open (or create) the daemon's lock file without following a symlink, and only if it is
    one a daemon wrote: a regular file of one link holding at most a PID. Anything else placed
    there is refused and left exactly as it was."""
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        what = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise RegistryError(f"{path}: {what}, not a daemon lock; remove it, then start the daemon again") from None
    facts = os.fstat(handle)
    if not (stat.S_ISREG(facts.st_mode) and facts.st_nlink == 1 and facts.st_size <= 32
            and re.fullmatch(rb"\d*\s*", os.pread(handle, 32, 0))):
        os.close(handle)
        raise RegistryError(f"{path}: holds something other than a daemon lock; remove it, then start the "
                            "daemon again")
    return handle


def _applied(con: sqlite3.Connection) -> set[str]:
    """Steps counted by ``user_version`` (a version-1 registry has no table) and recorded."""
    names = {step.name for step in migrations.MIGRATIONS[:_user_version(con)]}
    if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'migrations'").fetchone():
        names |= {name for (name,) in con.execute("SELECT name FROM migrations")}
    return names


def _user_version(con: sqlite3.Connection) -> int:
    """The number of schema steps applied (``PRAGMA user_version``)."""
    return int(con.execute("PRAGMA user_version").fetchone()[0])
