"""The PostgreSQL backend of the Store, for a fleet of senders on many hosts
(``pip install 'media-registry[postgres]'``): the port under the Store's rules, with these
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

import contextlib
import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row

from ..dburl import PostgresURL
from ..defaults import BUSY_TIMEOUT, HOST_RETENTION, PG_POOL_SIZE
from ..errors import RegistryCorrupt, RegistryError, RegistryLocked
from . import migrations
from ._pacing import FleetPacer
from ._pg_listen import keep_true
from ._pg_pool import Connection, Connections, connection_lost
from .backend import Backend, Params, Tx, at_fork
from .rows import LeaseOutcome, LeaseStatus, TableCopy

T = TypeVar("T")

# The first key of PostgreSQL's two-key advisory locks: which kind of lock it is.
LOCK_SCHEMA = 0x6D72_0001  # migrations, one opener at a time
LOCK_UPLOAD = 0x6D72_0002  # one uploader per (content, phone number)
LOCK_DAEMON = 0x6D72_0003  # one daemon per host


def lock_key(*parts: str) -> int:
    """A signed 32-bit key for an advisory lock on ``parts`` (a collision only makes two
    unrelated uploads take turns, never breaks a rule)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


DIALECT = {
    "here": "host_id = :host AND ", "p_here": "p.host_id = :host AND ",
    "and_p_here": " AND p.host_id = :host", "host_col": "host_id, ",
    "host_val": ":host, ", "host_cols": ", host_id", "host_vals": ", :host", "host_set": ", host_id = excluded.host_id",
    "for_update": " FOR UPDATE", "skip_locked": " FOR UPDATE SKIP LOCKED",
    # The server's clock, shared by every host of the fleet.
    "db_now": "now()", "claim_until": "now() + :claim_for",
    "live_path": "EXISTS (SELECT 1 FROM hosts AS h WHERE h.host_id = p.host_id "
                 "AND h.last_seen_at >= now() - :retention)",
    "touch_host": "INSERT INTO hosts (host_id, first_seen_at, last_seen_at) VALUES (:host, :at, :at) "
                  "ON CONFLICT (host_id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
    "path_list": "ARRAY(SELECT p.path FROM paths AS p WHERE p.sha256 = c.sha256 AND p.host_id = :host "
                 "ORDER BY p.path)",
    "cutoff": "CAST(CAST(:cutoffs AS jsonb) ->> m.phone_number_id AS timestamptz)",
    "listed": "",
}
TOUCH_HOST = DIALECT["touch_host"].replace(":host", "%s").replace(":at", "now()")  # by the server's clock


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The shared SQL's ``:name`` parameters in psycopg's ``%(name)s`` style."""
    return re.sub(r"(?<!:):([a-z_][a-z0-9_]*)", r"%(\1)s", sql.replace("%", "%%"))


class _Tx:
    """A psycopg connection speaking the shared SQL."""

    def __init__(self, con: Connection) -> None:
        self.con = con

    def execute(self, sql: str, params: Params, /) -> psycopg.Cursor[Any]:
        return self.con.execute(_pg(sql), params)


class PostgresBackend(Backend):
    """The registry in the PostgreSQL database at ``url``, as seen from host ``host_id``."""

    dialect = DIALECT

    def __init__(self, url: str | PostgresURL, *, create: bool = True, busy_timeout: float = BUSY_TIMEOUT, host_id: str,
                 pool_size: int | None = None, host_retention: timedelta | None = None,
                 setting: str = "MEDIA_REGISTRY_DB", local_cache: int = 0) -> None:
        self.url = url if isinstance(url, PostgresURL) else PostgresURL(url)
        self.setting = setting  # where the URL came from, for messages
        self.location = str(self.url)
        self.host_id = host_id
        self.host_retention = host_retention or HOST_RETENTION
        self.scope = {"host": host_id, "retention": self.host_retention}
        # Each upload in flight keeps its claim's session for the upload's whole duration: from
        # a pool of their own, so uploads never starve cache hits of connections.
        self.db, self.claim_sessions = (Connections(self.url, size=pool_size or PG_POOL_SIZE, timeout=busy_timeout,
                                                    setting=setting) for _ in range(2))
        # lease owner -> the session holding its lock (a dict's get, set and pop are atomic)
        self._claims: dict[str, Connection] = {}
        self._daemon_session: Connection | None = None  # holds this host's daemon lock
        self._daemon_mutex = threading.Lock()
        at_fork(self, lambda backend: backend._claims.clear())
        self.memory, self._stop_listening = keep_true(self.url, local_cache)
        with self.db.direct() as con:
            self._ensure_schema(con, create)
        if create:  # a read-only open (ls, stats) writes nothing: a read-only role may inspect
            self.db.run(lambda con: con.execute(TOUCH_HOST, (self.host_id,)))

    def _ensure_schema(self, con: Connection, create: bool) -> None:
        try:
            applied = self._applied_here(con)
            if applied is None and not create:
                raise RegistryError(f"no media-registry registry in {self.location}; "
                                    "create it with: media-registry init")
            if applied != {step.name for step in migrations.POSTGRES}:
                # Every host may open the registry at once: one applies what is missing, the
                # others wait here (however long it takes) and then find nothing left to do.
                con.execute("SET lock_timeout = 0")
                con.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_SCHEMA,))
                try:  # steps recorded at the microsecond: their times tell their order
                    migrations.upgrade(con, self, migrations.POSTGRES, con.transaction,
                                       lambda c: self._applied_here(c) or set(), lambda moment: moment)
                finally:
                    con.execute("SELECT pg_advisory_unlock(%s, 0)", (LOCK_SCHEMA,))
        except psycopg.Error as exc:
            raise self.db.explain(exc) from None

    def _applied_here(self, con: Connection) -> set[str] | None:
        """Names of the steps applied; None for an empty database; refuses a foreign one."""
        tables = {row[0] for row in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        foreign = RegistryCorrupt(f"{self.location} holds tables that are not a media-registry registry (left "
                                  f"untouched); point {self.setting} at a database of its own")
        if "migrations" not in tables:
            if tables:  # another application's database: never add our tables to it
                raise foreign
            return None
        try:  # another application's migrations table (Laravel, TypeORM, ...) is not ours
            names = {row[0] for row in con.execute("SELECT name FROM migrations")}
        except psycopg.errors.UndefinedColumn:
            raise foreign from None
        if migrations.POSTGRES[0].name not in names:
            raise foreign
        return names

    def read(self, sql: str, params: Params) -> list[Any]:
        return self.db.run(lambda con: con.execute(_pg(sql), params).fetchall(), transaction=False)

    def positional(self, sql: str) -> str:
        return re.sub(r"(?<!:):[a-z_][a-z0-9_]*", "%s", sql.replace("%", "%%"))

    def read_one(self, sql: str, params: Params) -> Any:
        statement = sql if isinstance(params, tuple) else _pg(sql)  # a tuple's is positional already
        return self.db.run(lambda con: con.execute(statement, params).fetchone(), transaction=False)

    def write(self, work: Callable[[Tx], T]) -> T:
        return self.db.run(lambda con: work(_Tx(con)))

    def stream(self, sql: str, params: Params) -> Iterator[Any]:
        """From a server-side cursor, in one snapshot."""
        con = self.db.checkout()
        assert con is not None  # waited for
        try:
            with con.transaction(), con.cursor("content_rows", row_factory=tuple_row) as cursor:
                cursor.execute(_pg(sql), params)
                yield from cursor
        except psycopg.Error as exc:
            raise self.db.explain(exc) from None
        finally:
            self.db.checkin(con)

    def acquire(self, sha256: str, phone: str, owner: str, now: datetime,
                 claim: Callable[[Tx], LeaseOutcome]) -> LeaseOutcome:
        """A session-level advisory lock, held on a session of the claim pool until the upload
        is recorded or released: PostgreSQL frees it the moment that session ends."""

        def work(con: Connection) -> LeaseOutcome:
            key = lock_key(sha256, phone)
            if con.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_UPLOAD, key)).fetchone() != (True,):
                return LeaseOutcome(LeaseStatus.WAIT)
            outcome = claim(_Tx(con))  # autocommit: each statement its own transaction
            if outcome.status is not LeaseStatus.ACQUIRED:
                con.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_UPLOAD, key))
                return outcome
            self._claims[owner] = con
            return outcome

        # Every claim session busy with an upload: wait a turn as for another's claim, never
        # holding a thread on the pool meanwhile (the uploads in flight need one to record).
        return self.claim_sessions.run(work, transaction=False, keep=lambda o: o.status is LeaseStatus.ACQUIRED,
                                       busy=lambda: LeaseOutcome(LeaseStatus.WAIT))

    def on_claim(self, owner: str, sha256: str, phone: str, work: Callable[[Tx, bool], T]) -> T:
        """On the claim's own session, pipelined (two round trips); on a fresh connection if
        that session died (a restart); then the lock goes."""
        con = self._claims.pop(owner, None)
        try:
            if con is not None and not con.closed:
                try:
                    with con.pipeline(), con.transaction():
                        return work(_Tx(con), True)
                except psycopg.Error as exc:  # a lost session: recorded on a fresh connection
                    if not connection_lost(exc):
                        raise self.db.explain(exc) from None
            return self.write(lambda tx: work(tx, False))
        finally:
            if con is not None:
                self._unlock(con, sha256, phone)

    def release(self, owner: str, sha256: str, phone: str, drop: Callable[[], None]) -> None:
        """With the server out of reach, the lock died with its session and the lease row is inert."""
        try:
            with contextlib.suppress(RegistryError):
                drop()
        finally:
            con = self._claims.pop(owner, None)
            if con is not None:
                self._unlock(con, sha256, phone)

    def _unlock(self, con: Connection, sha256: str, phone_number_id: str) -> None:
        try:
            con.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_UPLOAD, lock_key(sha256, phone_number_id)))
        except psycopg.Error as exc:
            if not connection_lost(exc):
                raise self.db.explain(exc) from None
            # A lost session took its lock with it.
        finally:
            self.claim_sessions.checkin(con)

    def pacer(self, per_second: float, api_base: str) -> FleetPacer:
        """Shared by the whole fleet: a row per number on the server (a fleet speaks to one API)."""
        return FleetPacer(per_second, self.db.run)

    time = staticmethod(lambda value: value)
    # Times go in to the second, as in the SQLite registry, so both backends compare and order
    # them alike (an ID uploaded within the same second as a deadline counts the same way).
    when = staticmethod(lambda moment: moment.replace(microsecond=0))

    def paths(self, value: Any) -> tuple[str, ...]:
        return tuple(value)

    def facts(self) -> dict[str, str | int]:
        """The server's facts: its URL without the password, version, size, hosts."""
        version, size, hosts = self.read_one(
            "SELECT current_setting('server_version'), pg_database_size(current_database()), "
            "(SELECT count(*) FROM hosts)", {})
        return {"db": self.location, "db_bytes": size, "server_version": version, "host_id": self.host_id,
                "hosts": hosts}

    def import_rows(self, tables: dict[str, list[tuple[Any, ...]]]) -> list[TableCopy]:
        """In one transaction."""
        from ._pg_import import merge

        def touch_and_merge(con: Connection) -> list[TableCopy]:
            con.execute(TOUCH_HOST, (self.host_id,))
            return merge(con, tables, self.host_id)

        return self.db.run(touch_and_merge)

    def pass_started(self) -> None:
        """The daemon still holds its host's lock (a server restart ends the session that held
        it, and another daemon of this host may have started since: then this one's passes
        fail with RegistryLocked until that one stops); this host is alive; hosts unseen for
        the retention period are dropped, with their paths."""
        with self._daemon_mutex:
            if (session := self._daemon_session) is not None:
                try:
                    session.execute("SELECT 1")
                except psycopg.Error:
                    session.close()
                    self._daemon_session = self._take_daemon_lock()
        self.db.run(lambda con: con.execute(TOUCH_HOST, (self.host_id,)))
        self.db.run(lambda con: con.execute("DELETE FROM hosts WHERE last_seen_at < now() - %s",
                                            (self.host_retention,)))

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
        key = lock_key(self.host_id)
        if con.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_DAEMON, key)).fetchone() != (True,):
            con.close()
            raise RegistryLocked(f"another media-registry daemon already serves host {self.host_id} on "
                                 f"{self.location}; stop it first, or give this one its own MEDIA_REGISTRY_HOST_ID")
        return con

    def close(self) -> None:
        """Release held claims and every connection."""
        self._stop_listening()
        claims, self._claims = self._claims, {}
        for con in claims.values():
            self.claim_sessions.checkin(con)
        self.claim_sessions.close()
        self.db.close()

