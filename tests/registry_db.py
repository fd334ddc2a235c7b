"""The one place where tests read or change a registry's database behind the registry's back.

Each function takes the registry's ``db`` value (what ``MEDIA_REGISTRY_DB`` holds) so that a
test does not care which backend it runs on; a backend other than SQLite adds its branch in
:func:`connect` (and in the few SQLite-only helpers, which say so).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from media_registry.dburl import PostgresURL

Db = str | os.PathLike[str]


@contextmanager
def connect(db: Db) -> Iterator[Any]:
    """A DB-API connection to the registry, committed on success."""
    if is_postgres(db):
        with psycopg.connect(location(db), row_factory=_rows_as_in_sqlite) as pg:
            yield _QmarkConnection(pg)
        return
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("PRAGMA foreign_keys = ON")  # as the store's own connections have it
        yield con


def is_postgres(db: Db) -> bool:
    """Whether the registry is a PostgreSQL database (else an SQLite file)."""
    return str(db).startswith("postgresql://")


def location(db: Db) -> str:
    """The registry as MEDIA_REGISTRY_DB names it, password included (for a helper process)."""
    return db.secret() if isinstance(db, PostgresURL) else str(db)


def _rows_as_in_sqlite(cursor: Any) -> Any:
    """Rows with times as the SQLite registry writes them, so tests compare either alike."""
    return lambda values: tuple(stamp(v) if isinstance(v, datetime) else v for v in values)


class _QmarkConnection:
    """A psycopg connection that takes the ``?`` placeholders the tests write for SQLite."""

    def __init__(self, con: psycopg.Connection[Any]) -> None:
        self._con = con

    def execute(self, sql: str, params: Any = ()) -> psycopg.Cursor[Any]:
        return self._con.execute(sql.replace("%", "%%").replace("?", "%s"), params)  # type: ignore[arg-type]


def stamp(moment: datetime) -> str:
    """A time as the SQLite registry stores it."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def query(db: Db, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of one read-only statement."""
    with connect(db) as con:
        return [tuple(row) for row in con.execute(sql, params)]


def count(db: Db, table: str, where: str = "1 = 1", *params: Any) -> int:
    """How many rows of ``table`` match ``where``."""
    return int(query(db, f"SELECT count(*) FROM {table} WHERE {where}", *params)[0][0])


def media_states(db: Db) -> list[tuple[str, str]]:
    """(media_id, state) of every media row, oldest upload first."""
    return query(db, "SELECT media_id, state FROM media ORDER BY uploaded_at, media_id")


def media_ids(db: Db, state: str) -> list[str]:
    """The media IDs in one state."""
    return [row[0] for row in query(db, "SELECT media_id FROM media WHERE state = ?", state)]


def actions(db: Db) -> list[str]:
    """The event log's actions, in order."""
    return [row[0] for row in query(db, "SELECT action FROM events ORDER BY id")]


def age_ids(db: Db, days_left: float, ttl_days: float = 30) -> None:
    """Make every current ID look as if it had been uploaded long ago (test setup)."""
    now = datetime.now(timezone.utc)
    with connect(db) as con:
        con.execute("UPDATE media SET uploaded_at = ?, expires_at = ?",
                    (stamp(now - timedelta(days=ttl_days - days_left)), stamp(now + timedelta(days=days_left))))


def execute(db: Db, sql: str, *params: Any) -> None:
    """Change the registry behind its back (e.g. drop its media rows), committed."""
    with connect(db) as con:
        con.execute(sql, params)


def add_lease(db: Db, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
    """Plant an upload lease, as a process that died while holding it would have left it."""
    execute(db, "INSERT INTO leases (sha256, phone_number_id, owner, expires_at"
                + (", host_id) VALUES (?, ?, ?, ?, 'gone-host')" if is_postgres(db) else ") VALUES (?, ?, ?, ?)"),
            sha256, phone_number_id, owner, stamp(expires_at))


def set_fingerprint(db: Db, fp: Any, recorded_at: datetime) -> None:
    """Make the recorded fingerprint of ``fp.path`` read ``fp``, recorded at ``recorded_at``
    (as a filesystem whose timestamps cannot tell a rewrite apart would have left it)."""
    execute(db, "UPDATE paths SET size_bytes = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, device = ?, "
                "seen_at = ? WHERE path = ?",
            fp.size, fp.mtime_ns, fp.ctime_ns, fp.inode, fp.device, stamp(recorded_at), fp.path)


def check_consistent(db: Db) -> None:
    """The registry passes its integrity checks: no broken reference, one current ID at most."""
    if not is_postgres(db):  # PostgreSQL checks its constraints at every commit
        with connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    doubled = query(db, "SELECT sha256, phone_number_id FROM media WHERE state = 'current' "
                        "GROUP BY 1, 2 HAVING count(*) > 1")
    assert doubled == []


@contextmanager
def write_lock(db: Db) -> Iterator[None]:
    """Hold the registry's write lock (SQLite's, or every table's in PostgreSQL), so a writer
    in another process blocks right there."""
    if is_postgres(db):
        with psycopg.connect(location(db)) as pg:
            pg.execute("LOCK TABLE contents, media, paths, leases, events, inbound, hosts IN EXCLUSIVE MODE")
            yield
            pg.rollback()
        return
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


# -- SQLite only ---------------------------------------------------------------------------

HOLD_WRITE_LOCK = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
"""


@contextmanager
def write_lock_in_another_process(db: Db) -> Iterator[Callable[[], None]]:
    """Another process holds SQLite's write lock until the yielded function is called."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, os.fspath(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"

    def release() -> None:
        if holder.poll() is None:
            holder.communicate("\n", timeout=30)

    try:
        yield release
    finally:
        release()


def set_user_version(db: Db, version: int) -> None:
    """Pretend a registry was written by another schema version."""
    execute(db, f"PRAGMA user_version = {int(version)}")


def make_foreign_database(db: Db) -> None:
    """An SQLite database of some other application, with a table and a row."""
    with connect(db) as con:
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        con.execute("INSERT INTO orders (total) VALUES (9.5)")


def upgrade_partly(db: Db, steps: int) -> None:
    """Apply only the first ``steps`` named migrations to a version-1 registry, as an upgrade
    stopped half-way would leave it."""
    from media_registry.store import migrations

    with closing(sqlite3.connect(db, isolation_level=None)) as con:
        con.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        con.execute("INSERT INTO migrations VALUES (?, '2026-01-01T00:00:00Z')", (migrations.MIGRATIONS[0].name,))
        for version, migration in enumerate(migrations.MIGRATIONS[1:steps], start=2):
            if isinstance(migration.apply, str):
                con.executescript(migration.apply)
            else:
                migration.apply(con)
            con.execute("INSERT INTO migrations VALUES (?, '2026-01-01T00:00:00Z')", (migration.name,))
            con.execute(f"PRAGMA user_version = {version}")


def content_rows_plan(db: Db) -> str:
    """SQLite's query plan for the listing (``ls``, ``records()``), one step per line."""
    from media_registry.store import open_store

    store = open_store(db)
    sql = "EXPLAIN QUERY PLAN " + store.listing_sql()
    store.close()
    return "\n".join(row[-1] for row in query(db, sql))


def schema(db: Db) -> dict[str, Any]:
    """Tables with their columns, and indexes with their columns and condition, to compare
    a registry made afresh with one upgraded step by step."""
    with connect(db) as con:
        names = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        shape: dict[str, Any] = {}
        for kind, name, _table, sql in names:
            if kind == "table":
                shape[name] = [row[1:] for row in con.execute(f"PRAGMA table_info({name})")]
            elif kind == "index":
                where = sql.split(" WHERE ", 1)[1].strip() if sql and " WHERE " in sql else None
                shape[name] = ([row[2] for row in con.execute(f"PRAGMA index_info({name})")], where)
            else:
                shape[name] = kind
        return shape

