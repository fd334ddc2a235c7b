"""The registry's named schema steps, per dialect, and the one runner that applies them.

A backend gives the runner its steps, a connection held by one opener at a time, how to begin
a transaction on it and which steps it has had. Each missing step runs in its own transaction
and is recorded in the ``migrations`` table (name, applied_at);
sqlite-utils' ``migrations.py`` is the model. A new SQLite registry is made from ``schema.sql``
(the schema as the last step leaves it) with every step recorded; ``PRAGMA user_version``
counts its steps. Nothing here ever writes to a database that is not ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone

from .._tuples import NamedTuple
from ..errors import SchemaTooNew

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any

    from .backend import Backend

# The tables every SQLite registry has had since version 1: how a registry of ours is recognised.
OUR_TABLES = frozenset({"contents", "media", "paths", "leases", "events", "inbound"})


class Migration(NamedTuple):
    """One named schema change: its statements, or a function of the step's connection."""

    name: str
    apply: str | Callable[[Any], None]


# What `media-registry migrate` copies: each table's columns, in this order, and its order.
EXPORTED = {
    "contents": ("sha256, mime_type, size_bytes, first_seen_at, deleted_at", "sha256"),
    "media": ("media_id, sha256, phone_number_id, state, uploaded_at, expires_at", "media_id"),
    "paths": ("path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at", "path"),
    "events": ("at, action, sha256, media_id, phone_number_id, path, detail", "id"),
    "inbound": ("media_id, sha256, mime_type, size_bytes, path, downloaded_at", "media_id"),
    "url_sources": ("url, sha256, etag, last_modified, checked_at, refetchable", "url"),
    # Without their claims: an item or handle being worked on is free again in PostgreSQL.
    "inbound_items": ("media_id, phone_number_id, mime_type, sha256, url, message_id, received_at, expires_at, "
                      "state, attempts, next_attempt_at, reason, location, archived_at", "media_id"),
    "sent_messages": ("message_id, media_id, phone_number_id, sent_at", "message_id"),
    "header_handles": ("sha256, app_id, handle, created_at, expires_at", "sha256, app_id"),
}


def upgrade(con: Any, backend: Backend, steps: Sequence[Migration], begin: Callable[[], AbstractContextManager[Any]],
            applied: Callable[[Any], set[str]], stamp: Callable[[datetime], Any] | None = None) -> None:
    """Apply the steps ``con``'s database lacks, in order, each in its own transaction, rechecked
    inside it: safe against other openers doing the same at the same moment. Each is recorded
    at the moment ``stamp`` makes a parameter (the backend's time, by default)."""
    stamp = stamp or backend.when
    record = backend.positional("INSERT INTO migrations (name, applied_at) VALUES (:name, :at) ON CONFLICT DO NOTHING")
    for step in steps:
        with begin():
            done = applied(con)
            if unknown := done - {known.name for known in steps}:
                raise SchemaTooNew(
                    f"registry {backend.location} has schema changes this media-registry does not know "
                    f"({', '.join(sorted(unknown))}); upgrade: pip install -U media-registry")
            if step.name in done:
                pass
            elif isinstance(step.apply, str):
                for statement in _statements(step.apply):
                    con.execute(statement)
            else:
                step.apply(con)
            # A registry older than the migrations table gets it (PostgreSQL's schema has it).
            con.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
            con.execute(record, (step.name, stamp(datetime.now(timezone.utc))))


def schema(name: str) -> str:
    """A schema file shipped in the package."""
    from importlib import resources  # only to create a registry: keep the cache hit's start-up lean

    return resources.files("media_registry").joinpath(name).read_text("utf-8")


def _initial(con: Any) -> None:
    """Version 1: a new registry, made at once as the last step leaves it (``schema.sql``)."""
    for statement in _statements(schema("schema.sql")):
        con.execute(statement)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # every step: recorded as applied


def _statements(script: str) -> list[str]:
    import sqlite3  # its tokenizer: a ';' in a string, a comment or a trigger ends no statement

    statements: list[str] = []
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            statements, buffer = [*statements, buffer], ""
    return [statement for statement in statements if statement.strip("; \n")]


def _url_sources_and_invalidated(con: Any) -> None:
    # 'invalidated' joins the media states. SQLite cannot alter a CHECK constraint: the media
    # table is rebuilt (its views dropped meanwhile, as a rename re-reads them), every row and
    # index kept; URL sources get their table.
    views = con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'").fetchall()
    indexes = con.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'media' "
                          "AND sql IS NOT NULL").fetchall()
    # The tables as this step made them, frozen: a later step's columns come with that step.
    media = """CREATE TABLE media (
        media_id        TEXT PRIMARY KEY,
        sha256          TEXT NOT NULL REFERENCES contents (sha256),
        phone_number_id TEXT NOT NULL,
        state           TEXT NOT NULL DEFAULT 'current'
                        CHECK (state IN ('current', 'superseded', 'deleting', 'invalidated')),
        uploaded_at     TEXT NOT NULL,
        expires_at      TEXT NOT NULL)"""
    urls = """CREATE TABLE IF NOT EXISTS url_sources (url TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL REFERENCES contents (sha256), etag TEXT, last_modified TEXT,
        checked_at TEXT NOT NULL, refetchable INTEGER NOT NULL)"""
    for statement in (*(f'DROP VIEW "{name}"' for name, _ in views), "ALTER TABLE media RENAME TO media_v3",
                      media, "INSERT INTO media SELECT * FROM media_v3", "DROP TABLE media_v3",
                      *(sql for (sql,) in indexes), *(sql for _, sql in views), urls,
                      "CREATE INDEX IF NOT EXISTS url_sources_by_content ON url_sources (sha256)"):
        con.execute(statement)


def _handle_columns(con: Any) -> None:
    from .handles import handle_columns  # here: the cache hit opens an up-to-date registry without it

    handle_columns(con)


def _section(con: Any, name: str, first: str, end: str) -> None:
    """The statements of the dialect's schema file from the line starting ``first`` to ``end``."""
    text = schema(name)
    start = text.index(first)
    for statement in _statements(text[start:text.index(end, start)]):
        con.execute(statement)


# The sections of each dialect's schema file that a step creates as the file writes them.
INBOX = ("-- Inbound media that webhooks announced", "-- (the end of the inbox's tables)")
HANDLES = ("-- Template header handles (Meta's", "-- (the end of the header handles' table)")
LISTING = ("-- The listing's order", "-- (the end of the listing's indexes)")


MIGRATIONS: tuple[Migration, ...] = (  # SQLite's steps
    Migration("0001_initial", _initial),
    # Rows recorded before this step get 0, match no real file, and are hashed (and
    # re-recorded) on their next use: every ID is kept.
    Migration("0002_fingerprint_ctime_device", "ALTER TABLE paths ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;"
              "ALTER TABLE paths ADD COLUMN device INTEGER NOT NULL DEFAULT 0"),
    # Older versions relied on the write lock alone; should two current rows exist, the one
    # that lives longest stays current and the other is retired as superseded (never lost).
    Migration("0003_one_current_id", """UPDATE media SET state = 'superseded' WHERE state = 'current' AND EXISTS (
        SELECT 1 FROM media AS newer WHERE newer.sha256 = media.sha256 AND newer.state = 'current'
          AND newer.phone_number_id = media.phone_number_id
          AND (newer.expires_at, newer.media_id) > (media.expires_at, media.media_id));
        CREATE UNIQUE INDEX IF NOT EXISTS media_one_current ON media (sha256, phone_number_id)
        WHERE state = 'current'"""),
    Migration("0004_url_sources_and_invalidated", _url_sources_and_invalidated),
    # Who sends an owed DELETE now, and until when: each is claimed before it is sent.
    Migration("0005_delete_claims", "ALTER TABLE media ADD COLUMN claimed_by TEXT;"
              "ALTER TABLE media ADD COLUMN claimed_until TEXT"),
    # Inbound items that webhooks announced (the archive's queue), and messages sent with a
    # media ID (a failed status names its ID).
    Migration("0006_inbox", lambda con: _section(con, "schema.sql", *INBOX)),
    # Template header handles, per content and app (store/handles.py).
    Migration("0007_header_handles", lambda con: _section(con, "schema.sql", *HANDLES)),
    # A header handle's upload session, resumed by a later claimer (store/handles.py).
    Migration("0008_handle_sessions", _handle_columns),
    # Indexes holding what the listing prints, so that ls reads no table row (store/listing.py).
    Migration("0009_listing_order", lambda con: _section(con, "schema.sql", *LISTING)),
)
SCHEMA_VERSION = len(MIGRATIONS)

# PostgreSQL's steps, applied in order by one opener at a time. Append; never edit or reorder.
POSTGRES: tuple[Migration, ...] = (
    Migration("create registry", lambda con: con.execute(schema("store/schema_postgres.sql"))),
    Migration("url sources and invalidated", """
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
CREATE INDEX url_sources_by_content ON url_sources (sha256);"""),
    Migration("inbox", lambda con: _section(con, "store/schema_postgres.sql", *INBOX)),
    Migration("header handles", lambda con: _section(con, "store/schema_postgres.sql", *HANDLES)),
    Migration("local cache and upload pacing", lambda con: con.execute(schema("store/pg_notify.sql"))),
    Migration("handle sessions", "ALTER TABLE header_handles ADD COLUMN IF NOT EXISTS size_bytes bigint, "
              "ADD COLUMN IF NOT EXISTS session text"),
    Migration("listing order", lambda con: _section(con, "store/schema_postgres.sql", *LISTING)),
)
