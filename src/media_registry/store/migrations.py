"""The registry's named schema steps, for both databases; SQLite's recognised, created, upgraded.

A new registry is made from ``schema.sql`` (the schema as the last step leaves it) with every
step recorded as applied. An older registry of ours is upgraded in place by the steps it
lacks, in order, each in its own transaction and recorded in the ``migrations`` table
(name, applied_at); ``PRAGMA user_version`` counts the steps applied. sqlite-utils'
``migrations.py`` is the model. Nothing here ever writes to a database that is not ours.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import NamedTuple

# The tables every registry has had since version 1: how a registry of ours is recognised.
OUR_TABLES = frozenset({"contents", "media", "paths", "leases", "events", "inbound"})


class Migration(NamedTuple):
    """One named schema change; ``apply`` runs inside the step's transaction."""

    name: str
    apply: Callable[[sqlite3.Connection], None]


def _initial(con: sqlite3.Connection) -> None:
    """Version 1, as first released: recognised by ``user_version`` 1, never re-run."""
    raise AssertionError("a version-1 registry already has its initial schema")


def _fingerprint_ctime_device(con: sqlite3.Connection) -> None:
    # Rows recorded before this step get 0, match no real file, and are hashed (and
    # re-recorded) on their next use: every ID is kept.
    con.execute("ALTER TABLE paths ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0")
    con.execute("ALTER TABLE paths ADD COLUMN device INTEGER NOT NULL DEFAULT 0")


def _one_current_id(con: sqlite3.Connection) -> None:
    # Older versions relied on the write lock alone; should two current rows exist, the one
    # that lives longest stays current and the other is retired as superseded (never lost).
    con.execute(
        """
        UPDATE media SET state = 'superseded'
        WHERE state = 'current' AND EXISTS (
            SELECT 1 FROM media AS newer
            WHERE newer.sha256 = media.sha256 AND newer.phone_number_id = media.phone_number_id
              AND newer.state = 'current'
              AND (newer.expires_at, newer.media_id) > (media.expires_at, media.media_id))
        """
    )
    con.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS media_one_current "
        "ON media (sha256, phone_number_id) WHERE state = 'current'"
    )


def _url_sources_and_invalidated(con: sqlite3.Connection) -> None:
    # URL sources get their table; 'invalidated' joins the media states. SQLite cannot alter
    # a CHECK constraint: the media table is rebuilt (its views dropped meanwhile, as a rename
    # re-reads them), every row and index kept.
    views = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'").fetchall()
    for name, _ in views:
        con.execute(f'DROP VIEW "{name}"')
    indexes = con.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'media' AND sql IS NOT NULL"
    ).fetchall()
    con.execute("ALTER TABLE media RENAME TO media_before_invalidated")
    con.execute(
        """
        CREATE TABLE media (
            media_id        TEXT PRIMARY KEY,
            sha256          TEXT NOT NULL REFERENCES contents (sha256),
            phone_number_id TEXT NOT NULL,
            state           TEXT NOT NULL DEFAULT 'current'
                            CHECK (state IN ('current', 'superseded', 'deleting', 'invalidated')),
            uploaded_at     TEXT NOT NULL,
            expires_at      TEXT NOT NULL
        )
        """
    )
    con.execute("INSERT INTO media SELECT media_id, sha256, phone_number_id, state, uploaded_at, "
                "expires_at FROM media_before_invalidated")
    con.execute("DROP TABLE media_before_invalidated")
    for (sql,) in indexes:
        con.execute(sql)
    for _, sql in views:
        con.execute(sql)
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS url_sources (
            url           TEXT PRIMARY KEY,
            sha256        TEXT NOT NULL REFERENCES contents (sha256),
            etag          TEXT,
            last_modified TEXT,
            checked_at    TEXT NOT NULL,
            refetchable   INTEGER NOT NULL
        )
        """
    )
    con.execute("CREATE INDEX IF NOT EXISTS url_sources_by_content ON url_sources (sha256)")


def _delete_claims(con: sqlite3.Connection) -> None:
    # Who sends an owed DELETE now, and until when: each is claimed before it is sent.
    con.execute("ALTER TABLE media ADD COLUMN claimed_by TEXT")
    con.execute("ALTER TABLE media ADD COLUMN claimed_until TEXT")


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial", _initial),
    Migration("0002_fingerprint_ctime_device", _fingerprint_ctime_device),
    Migration("0003_one_current_id", _one_current_id),
    Migration("0004_url_sources_and_invalidated", _url_sources_and_invalidated),
    Migration("0005_delete_claims", _delete_claims),
)
SCHEMA_VERSION = len(MIGRATIONS)


def user_version(con: sqlite3.Connection) -> int:
    """The number of migrations applied (``PRAGMA user_version``)."""
    return int(con.execute("PRAGMA user_version").fetchone()[0])


def is_ours(version: int, tables: set[str]) -> bool:
    """Whether a database with this ``user_version`` and these tables is a registry."""
    return version >= 1 and OUR_TABLES <= tables


def ensure_schema(con: sqlite3.Connection) -> None:
    """Create the schema in an empty database, or apply the steps an older registry lacks.

    Safe against other processes doing the same at the same moment: each step re-checks the
    version inside its ``BEGIN IMMEDIATE`` transaction.
    """
    if user_version(con) == SCHEMA_VERSION:
        return
    with _transaction(con):
        if user_version(con) == 0:
            for statement in _statements(_schema_script()):
                con.execute(statement)
            for migration in MIGRATIONS:
                _record(con, migration)
            _set_version(con, SCHEMA_VERSION)
            return
        con.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
    for version, migration in enumerate(MIGRATIONS, start=1):
        with _transaction(con):
            current = user_version(con)
            if current >= version:
                _record(con, migration)  # e.g. a version-1 registry: name its first step
                continue
            migration.apply(con)
            _record(con, migration)
            _set_version(con, version)


def applied(con: sqlite3.Connection) -> list[tuple[str, str]]:
    """(name, applied_at) of every recorded migration, in order."""
    return con.execute("SELECT name, applied_at FROM migrations ORDER BY name").fetchall()


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _record(con: sqlite3.Connection, migration: Migration) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"
    con.execute("INSERT OR IGNORE INTO migrations (name, applied_at) VALUES (?, ?)", (migration.name, now))


def _set_version(con: sqlite3.Connection, version: int) -> None:
    con.execute(f"PRAGMA user_version = {int(version)}")


def _schema_script() -> str:
    from importlib import resources  # only to create a registry: keep the cache hit's start-up lean

    return resources.files("media_registry").joinpath("schema.sql").read_text("utf-8")


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


def _postgres_schema() -> str:
    from importlib import resources

    return resources.files("media_registry.store").joinpath("schema_postgres.sql").read_text("utf-8")


_URL_SOURCES_AND_INVALIDATED = """
-- 'invalidated': Meta refused the ID at send time; never served or refreshed, dropped once expired.
ALTER TABLE media DROP CONSTRAINT media_state_check;
ALTER TABLE media ADD CONSTRAINT media_state_check
    CHECK (state IN ('current', 'superseded', 'deleting', 'invalidated'));
-- What each URL source served when last fetched, shared by every host of the fleet: the URL
-- in key form (no signature, no user:password), the validators for a conditional GET.
CREATE TABLE url_sources (
    url           text PRIMARY KEY,
    sha256        text NOT NULL REFERENCES contents (sha256),
    etag          text,
    last_modified text,
    checked_at    timestamptz NOT NULL,
    refetchable   boolean NOT NULL
);
CREATE INDEX url_sources_by_content ON url_sources (sha256);
"""

# PostgreSQL's named schema changes, applied in order by the backend (one opener at a time),
# each in its own transaction and recorded in `migrations`. Append; never edit or reorder.
POSTGRES_MIGRATIONS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("create registry", _postgres_schema),
    ("url sources and invalidated", lambda: _URL_SOURCES_AND_INVALIDATED),
)
