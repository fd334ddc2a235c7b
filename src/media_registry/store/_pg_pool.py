"""Connections to the PostgreSQL registry: the pool, one retry after a lost connection, and
every driver error turned into one line that names the server (never its password)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..dburl import PostgresURL
from ..errors import RegistryError, RegistryLocked, RegistryUnreachable
from .backend import at_fork

T = TypeVar("T")
Connection = psycopg.Connection[Any]

# Sessions report UTC; keepalives let the server notice a host that vanished from the
# network (not only a killed process), so its claims free within about 20 s.
SESSION_OPTIONS = "-c TimeZone=UTC -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3 -c tcp_keepalives_count=3"
CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True, "options": SESSION_OPTIONS, "connect_timeout": 5,
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
}

# The pool logs each failed reconnection as a multi-line warning, and the driver warns "error
# ignored ..." while it cleans up after the error the call raises: the caller's one line says it.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
logging.getLogger("psycopg.pool").propagate = False
for _name in ("psycopg", "psycopg.transaction"):
    logging.getLogger(_name).addFilter(lambda record: not str(record.msg).startswith("error ignored"))

_LOST = ("server closed the connection", "connection is closed", "consuming input failed", "terminating connection",
         "connection not open", "sending query failed", "connection is lost", "ssl syscall", "eof detected")
_UNREACHABLE = ("connection refused", "could not connect", "timeout expired", "starting up", "shutting down",
                "no route to host", "could not translate host name", "name or service", "connection failed",
                "network is unreachable", "no such file or directory")


class Connections:
    """A pool of autocommit connections to ``url``, re-made after a fork; waits at most
    ``timeout`` seconds for a free or new connection (or, asked not to wait, answers at once
    when every one of its ``size`` connections is lent out)."""

    def __init__(self, url: PostgresURL, *, size: int, timeout: float, setting: str = "MEDIA_REGISTRY_DB") -> None:
        self.url, self.setting, self.size, self.timeout = url, setting, size, timeout
        # A write waiting on another's lock gives up after the busy timeout, as in SQLite.
        self.kwargs = {**CONNECTION_KWARGS, "options": f"{SESSION_OPTIONS} -c lock_timeout={int(timeout * 1000)}"}
        self._forget()
        at_fork(self, Connections._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._slots = threading.BoundedSemaphore(self.size)  # lets a caller that must not wait ask

    def direct(self) -> Connection:
        """One connection outside the pool (schema set-up, locks held for long)."""
        try:
            return psycopg.connect(self.url.secret(), **self.kwargs)
        except psycopg.Error as exc:
            raise self.explain(exc) from None

    def checkout(self, wait: bool = True) -> Connection | None:
        """A connection for the caller alone, until :meth:`checkin`; without ``wait``, None
        at once when every connection is lent out."""
        if not self._slots.acquire(timeout=self.timeout if wait else 0):
            if wait:  # every connection stayed lent out
                raise self.unreachable()
            return None
        try:
            pool = self._current()
            try:
                return pool.getconn()
            except PoolClosed:  # another thread renewed the pool meanwhile: ask its successor
                pass
            except PoolTimeout:
                if not isinstance(error := self.unreachable(), RegistryLocked):
                    raise error from None
                # The server answers, yet no connection came: after an outage the pool
                # reconnects with a growing backoff; a fresh pool connects at once.
                with self._lock:
                    self._pool = None if self._pool is pool else self._pool
                pool.close(timeout=0)
            try:
                return self._current().getconn()
            except (PoolTimeout, PoolClosed):
                raise self.unreachable() from None
        except BaseException:
            self._slots.release()
            raise

    def _current(self) -> ConnectionPool[Connection]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(self.url.secret(), min_size=1, max_size=self.size, kwargs=self.kwargs,
                                            timeout=self.timeout, name="media-registry", open=True)
            return self._pool

    def checkin(self, con: Connection) -> None:
        """Give a connection back (its pool discards it if it broke; closed if renewed since)."""
        try:
            lender: object = getattr(con, "_pool", None)  # the pool that lent it (psycopg_pool sets it)
            if (pool := self._pool) is not None and lender is pool:
                pool.putconn(con)
            else:
                con.close()
        finally:
            self._slots.release()

    def run(self, work: Callable[[Connection], T], *, transaction: bool = True,
            keep: Callable[[T], bool] | None = None, busy: Callable[[], T] | None = None) -> T:
        """``work(con)`` on a pooled connection, in one transaction unless told otherwise;
        the connection goes back to the pool unless ``keep(result)`` says the caller kept it.
        With ``busy``, its answer comes at once when every connection is lent out.

        A connection lost under the call (a server restart, a network cut) is retried once on
        a fresh one: the registry's writes are idempotent, so a commit whose answer was lost
        is harmless to repeat."""
        for attempt in (1, 2):
            if (con := self.checkout(wait=busy is None)) is None:
                assert busy is not None  # checkout waits unless told what to answer
                return busy()
            kept = False
            try:
                with con.transaction() if transaction else nullcontext():
                    result = work(con)
                kept = keep is not None and keep(result)
                return result
            except psycopg.Error as exc:
                if attempt == 2 or not connection_lost(exc):
                    raise self.explain(exc) from None
            finally:
                if not kept:
                    self.checkin(con)
            self._current().check()  # the other idle connections most likely died with that one
        raise AssertionError("unreachable")  # pragma: no cover

    def unreachable(self) -> RegistryError:
        """Why no connection came within the timeout: ask the server directly for the reason."""
        try:
            psycopg.connect(self.url.secret(), **self.kwargs).close()
        except psycopg.Error as exc:
            return self.explain(exc)
        return RegistryLocked(f"PostgreSQL registry {self.url}: every one of the {self.size} pooled connections "
                              f"stayed busy for {self.timeout:g} s; raise MEDIA_REGISTRY_PG_POOL_SIZE")

    def explain(self, exc: psycopg.Error) -> RegistryError:
        """One line for a driver error: what the server said, and what to do."""
        where, reason = f"PostgreSQL registry {self.url}", _reason(exc)
        text = reason.lower()
        if "password authentication failed" in text or "no password supplied" in text:
            return RegistryError(f"{where}: the server refused the password ({reason}); "
                                 f"fix the user or password in {self.setting}")
        if "database" in text and "does not exist" in text:
            return RegistryError(f"{where}: {reason}; create it (createdb) or fix {self.setting}")
        if isinstance(exc, psycopg.OperationalError) and (
                connection_lost(exc) or any(marker in text for marker in _UNREACHABLE)):
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
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def connection_lost(exc: BaseException) -> bool:
    """Whether an error means the session itself is gone (restart, network), not the query."""
    if isinstance(exc, (psycopg.errors.AdminShutdown, psycopg.errors.CrashShutdown, psycopg.errors.CannotConnectNow)):
        return True
    return isinstance(exc, psycopg.OperationalError) and any(marker in str(exc).lower() for marker in _LOST)


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
