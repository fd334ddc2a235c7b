"""Connections to the PostgreSQL registry: the pool, one retry after a lost connection, and
every driver error turned into one line that names the server (never its password)."""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.abc import Buffer
from psycopg.types.datetime import DatetimeBinaryDumper, DatetimeDumper
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..dburl import PostgresURL
from ..errors import RegistryError, RegistryLocked, RegistryUnreachable

T = TypeVar("T")
CONNECT_TIMEOUT_SECONDS = 5

# Sessions report UTC; keepalives let the server notice a host that vanished from the
# network (not only a killed process, which closes its socket), so its claims free within
# about 20 s. These are per-session settings any user may make.
SESSION_OPTIONS = (
    "-c TimeZone=UTC -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3 "
    "-c tcp_keepalives_count=3"
)


class _SecondsDumper(DatetimeDumper):
    def dump(self, obj: datetime) -> Buffer | None:
        return super().dump(obj.replace(microsecond=0))


class _SecondsBinaryDumper(DatetimeBinaryDumper):
    def dump(self, obj: datetime) -> Buffer | None:
        return super().dump(obj.replace(microsecond=0))


# Times go in to the second, as in the SQLite registry, so both backends compare and order
# them alike (an ID uploaded within the same second as a deadline counts the same way).
ADAPTERS = psycopg.adapt.AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(datetime, _SecondsDumper)
ADAPTERS.register_dumper(datetime, _SecondsBinaryDumper)

CONNECTION_KWARGS: dict[str, Any] = {
    "context": ADAPTERS,
    "autocommit": True,
    "options": SESSION_OPTIONS,
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}
Connection = psycopg.Connection[Any]

# The pool logs each failed reconnection as a multi-line warning: printed (without logging
# configured) or passed on to the daemon's log, beside the one line the caller reports.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
logging.getLogger("psycopg.pool").propagate = False


def _not_an_ignored_error(record: logging.LogRecord) -> bool:
    # The driver warns "error ignored ..." while it cleans up after the error the call raises
    # (a lost connection, say), which the caller reports in one line: the warning repeats it.
    return not str(record.msg).startswith("error ignored")


for _name in ("psycopg", "psycopg.transaction"):
    logging.getLogger(_name).addFilter(_not_an_ignored_error)


class Connections:
    """A pool of autocommit connections to ``url``, re-made after a fork; waits at most
    ``timeout`` seconds for a free or new connection (or, asked not to wait, answers at once
    when every one of its ``size`` connections is lent out)."""

    def __init__(self, url: PostgresURL, *, size: int, timeout: float, setting: str = "MEDIA_REGISTRY_DB") -> None:
        self.url = url
        self.setting = setting  # where the URL came from, named in messages
        self.size = size
        self.timeout = timeout
        # A write waiting on another's lock gives up after the busy timeout, as in SQLite.
        options = f"{SESSION_OPTIONS} -c lock_timeout={int(timeout * 1000)}"
        self.kwargs = {**CONNECTION_KWARGS, "options": options}
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._lent: dict[int, ConnectionPool[Connection]] = {}  # id of a connection out -> its pool
        self._slots = threading.BoundedSemaphore(size)  # one per connection the pool may lend
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_pool(reference))

    def direct(self) -> Connection:
        """One connection outside the pool (schema set-up, diagnosis)."""
        try:
            return psycopg.connect(self.url.secret(), **self.kwargs)
        except psycopg.Error as exc:
            raise self.explain(exc) from None

    @property
    def pool(self) -> ConnectionPool[Connection]:
        """The pool, opened on first use (in this process)."""
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        self.url.secret(), min_size=1, max_size=self.size, kwargs=self.kwargs,
                        timeout=self.timeout, name="media-registry", open=True,
                    )
                pool = self._pool
        return pool

    def checkout(self) -> Connection:
        """A connection of the pool for the caller alone, until :meth:`checkin`."""
        if not self._slots.acquire(timeout=self.timeout):  # every connection stayed lent out
            raise self.unreachable()
        return self._lend()

    def try_checkout(self) -> Connection | None:
        """As :meth:`checkout`, but None at once when every connection is lent out."""
        if not self._slots.acquire(blocking=False):
            return None
        return self._lend()

    def _lend(self) -> Connection:
        try:
            con, pool = self._connection()
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._lent[id(con)] = pool
        return con

    def _connection(self) -> tuple[Connection, ConnectionPool[Connection]]:
        for attempt in (1, 2):
            pool = self.pool
            try:
                con = pool.getconn()
            except PoolClosed:  # another thread renewed the pool meanwhile
                continue
            except PoolTimeout:
                error = self.unreachable()
                if attempt == 2 or not isinstance(error, RegistryLocked):
                    raise error from None
                # The server answers and this caller holds a free slot, yet no connection came:
                # after an outage the pool reconnects with a growing backoff (up to minutes), so
                # the first calls after a restart would fail. A fresh pool connects at once.
                self._renew(pool)
                continue
            return con, pool
        raise self.unreachable()

    def checkin(self, con: Connection) -> None:
        """Give a connection back (its pool discards it if it broke, or if renewed since)."""
        with self._lock:
            pool = self._lent.pop(id(con), None)
        if pool is None:
            con.close()
            return
        try:
            pool.putconn(con)
        finally:
            self._slots.release()

    def _renew(self, stale: ConnectionPool[Connection]) -> None:
        with self._lock:
            if self._pool is not stale:
                return
            self._pool = None
        stale.close(timeout=0)

    def run(self, work: Callable[[Connection], T], *, transaction: bool = True,
            keep: Callable[[T], bool] | None = None, busy: Callable[[], T] | None = None) -> T:
        """``work(con)`` on a pooled connection, in one transaction unless told otherwise;
        the connection goes back to the pool unless ``keep(result)`` says the caller kept it.
        With ``busy``, its answer comes at once when every connection is lent out, instead
        of waiting for one.

        A connection lost under the call (a server restart, a network cut) is retried once on
        a fresh one: the registry's writes are idempotent, so a commit whose answer was lost
        is harmless to repeat.
        """
        for attempt in (1, 2):
            con = self.checkout() if busy is None else self.try_checkout()
            if con is None:
                assert busy is not None
                return busy()
            kept = False
            try:
                if transaction:
                    with con.transaction():
                        result = work(con)
                else:
                    result = work(con)
                kept = keep is not None and keep(result)
                return result
            except psycopg.OperationalError as exc:
                if attempt == 2 or not connection_lost(exc):
                    raise self.explain(exc) from None
            except psycopg.Error as exc:
                raise self.explain(exc) from None
            finally:
                if not kept:
                    self.checkin(con)
            self.pool.check()  # the other idle connections most likely died with that one
        raise AssertionError("unreachable")  # pragma: no cover

    def unreachable(self) -> RegistryError:
        """Why no connection came within the timeout: ask the server directly for the reason."""
        try:
            psycopg.connect(self.url.secret(), **self.kwargs).close()
        except psycopg.Error as exc:
            return self.explain(exc)
        return RegistryLocked(
            f"PostgreSQL registry {self.url}: every one of the {self.size} pooled connections "
            f"stayed busy for {self.timeout:g} s; raise MEDIA_REGISTRY_PG_POOL_SIZE"
        )

    def explain(self, exc: psycopg.Error) -> RegistryError:
        """One line for a driver error: what the server said, and what to do."""
        where = f"PostgreSQL registry {self.url}"
        reason = _reason(exc)
        text = reason.lower()
        if "password authentication failed" in text or "no password supplied" in text:
            return RegistryError(f"{where}: the server refused the password ({reason}); "
                                 f"fix the user or password in {self.setting}")
        if "database" in text and "does not exist" in text:
            return RegistryError(f"{where}: {reason}; create it (createdb) or fix {self.setting}")
        if isinstance(exc, psycopg.OperationalError) and (connection_lost(exc) or _cannot_connect(text)):
            return RegistryUnreachable(f"{where}: cannot reach the server ({reason}); start PostgreSQL "
                                       f"or fix the host and port in {self.setting}, then retry")
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return RegistryLocked(f"{where}: stayed locked by another writer for over {self.timeout:g} s; "
                                  "retry, or find the session holding it (pg_stat_activity)")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return RegistryError(f"{where}: {reason}; grant this user rights on the registry's tables")
        return RegistryError(f"{where}: {reason}")

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def connection_lost(exc: BaseException) -> bool:
    """Whether an error means the session itself is gone (restart, network), not the query."""
    if isinstance(exc, (psycopg.errors.AdminShutdown, psycopg.errors.CrashShutdown,
                        psycopg.errors.CannotConnectNow)):
        return True
    text = str(exc).lower()
    return isinstance(exc, psycopg.OperationalError) and any(
        marker in text for marker in (
            "server closed the connection", "connection is closed", "consuming input failed",
            "terminating connection", "connection not open", "sending query failed",
            "connection is lost", "ssl syscall", "eof detected",
        )
    )


def _cannot_connect(text: str) -> bool:
    return any(marker in text for marker in (
        "connection refused", "could not connect", "timeout expired", "starting up",
        "shutting down", "no route to host", "could not translate host name", "name or service",
        "connection failed", "network is unreachable", "no such file or directory",
    ))


def _reason(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if isinstance(exc, psycopg.errors.DatabaseError) else None
    if primary:  # the server's own words, without the statement and caret that may follow
        return primary.rstrip(".")
    # libpq says 'connection to server at "host", port N failed: FATAL:  <why>', then hints.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    socket = re.search(r'on socket "([^"]+)"', reason)  # the URL names no host: where it looked
    for marker in ("FATAL:", "failed:"):
        if marker in reason:
            reason = reason.rsplit(marker, 1)[1].strip()
            break
    return reason.rstrip(".") + (f": {socket[1]}" if socket else "")


def _forget_pool(reference: weakref.ref[Connections]) -> None:
    connections = reference()
    if connections is not None:
        # The parent's pool threads did not survive the fork and its sockets are the
        # parent's: start afresh without closing them.
        connections._lock = threading.Lock()
        connections._pool = None
        connections._lent = {}
        connections._slots = threading.BoundedSemaphore(connections.size)
