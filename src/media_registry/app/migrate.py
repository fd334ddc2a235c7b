"""``media-registry migrate``: copy a single-host SQLite registry into PostgreSQL.

The SQLite file is only read. Its contents, media IDs (with their times and states), events,
inbound media and URL sources join the PostgreSQL registry, and its paths become this host's
(``MEDIA_REGISTRY_HOST_ID``), so the senders pointed at PostgreSQL afterwards get cache hits
for every file the SQLite registry knew: no upload.

Running it again converges: each row the file holds takes the file's state unless the
PostgreSQL row is newer (the fleet may have written to it between runs); rows only in
PostgreSQL stay. A media ID's state only moves forward (current, superseded, invalidated,
deleting), so the further one wins; an ID the file forgot after its remote DELETE is forgotten
too; a content's deletion goes to whichever side was active last.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..dburl import PostgresURL
from ..errors import ConfigError, RegistryError
from ..sqlitestore import export_registry

if TYPE_CHECKING:
    from .._pg_connection import Connection

TARGET_VARIABLE = "MEDIA_REGISTRY_MIGRATE_TO"


class TableCopy(NamedTuple):
    """One table of a migration: rows in the SQLite registry, and what became of them in the
    PostgreSQL registry (copied anew, updated, or already as they were)."""

    table: str
    source_rows: int
    copied: int
    updated: int
    unchanged: int


def migration_target(to: str | None, to_file: str | None,
                     environ: Mapping[str, str]) -> tuple[PostgresURL, str]:
    """The PostgreSQL registry to migrate into, from ``--to``, ``--to-file`` or
    ``MEDIA_REGISTRY_MIGRATE_TO``, and the name of the one that gave it (for messages)."""
    if to is not None:
        return _url(to, "--to"), "--to"
    if to_file is not None:
        try:
            text = Path(to_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"--to-file {to_file}: cannot read it ({reason}); give a file "
                              "holding postgresql://user:password@host:port/dbname") from None
        return _url(text, f"--to-file {to_file}"), f"--to-file {to_file}"
    if environ.get(TARGET_VARIABLE):
        return _url(environ[TARGET_VARIABLE], TARGET_VARIABLE), TARGET_VARIABLE
    raise ConfigError(f"migrate needs the PostgreSQL registry: set {TARGET_VARIABLE} to "
                      "postgresql://user:password@host:port/dbname (or give --to-file FILE)")


def _url(text: str, setting: str) -> PostgresURL:
    try:
        return PostgresURL(text)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}; give postgresql://user:password@host:port/dbname") from None


def migrate_to_postgres(source: str | os.PathLike[str] | PostgresURL, target: str | PostgresURL, *,
                        host_id: str, setting: str = "--to") -> list[TableCopy]:
    """Bring the PostgreSQL registry at ``target`` (created if new) up to date with the SQLite
    registry at ``source``, its paths as ``host_id``'s, and verify every row arrived.
    ``setting`` names where ``target`` came from, for messages.

    Raises RegistryError naming the table if a row is missing afterwards.
    """
    if isinstance(source, PostgresURL):
        raise ConfigError("migrate copies an SQLite registry into PostgreSQL: point --db (or "
                          "MEDIA_REGISTRY_DB) at the SQLite file and give the server in "
                          f"{TARGET_VARIABLE}")
    if not isinstance(target, PostgresURL):
        target = _url(target, setting)
    tables = export_registry(source)
    try:
        from ..pgstore import PostgresStore
    except ModuleNotFoundError as exc:
        if exc.name not in ("psycopg", "psycopg_pool"):
            raise
        raise ConfigError(f"{setting} names a PostgreSQL registry, which needs the postgres extra: "
                          "pip install 'media-registry[postgres]'") from None
    store = PostgresStore(target, host_id=host_id, setting=setting)
    try:
        copies = store.db.run(lambda con: _merge(con, tables, host_id))
    finally:
        store.close()
    for copy in copies:
        if copy.copied + copy.updated + copy.unchanged != copy.source_rows:
            raise RegistryError(
                f"migrate: {copy.table} has {copy.source_rows} rows in {source} but "
                f"{copy.copied + copy.updated + copy.unchanged} are in {target}; run migrate again, "
                "then report it"
            )
    return copies


def _merge(con: Connection, tables: dict[str, list[tuple[Any, ...]]], host_id: str) -> list[TableCopy]:
    """Load the file's rows of each table into a temporary table ``s_<table>``, then bring
    the registry's rows up to date from them, insert the missing ones, and count."""
    con.execute("INSERT INTO hosts (host_id, first_seen_at, last_seen_at) VALUES (%s, now(), now()) "
                "ON CONFLICT (host_id) DO UPDATE SET last_seen_at = now()", (host_id,))
    for table, rows in tables.items():
        names, types = zip(*(column.split() for column in COLUMNS[table].split(", ")))
        columns = list(zip(*rows)) or [()] * len(names)
        arrays = ", ".join(f"%s::{kind}[]" for kind in types)
        con.execute(f"CREATE TEMP TABLE s_{table} ON COMMIT DROP AS SELECT * FROM unnest({arrays}) "
                    f"WITH ORDINALITY AS u({', '.join(names)}, n)", [list(column) for column in columns])
        con.execute(f"CREATE INDEX ON s_{table} ({LOOKED_UP_BY[table]})")
        con.execute(f"ANALYZE s_{table}")
    copies = []
    params = {"host": host_id}
    for table, rows in tables.items():
        merge = MERGE_SQL[table]
        for sql in merge.before:
            con.execute(sql, params)
        updated = sum(con.execute(sql, params).rowcount for sql in merge.update)
        for sql in merge.after:
            con.execute(sql, params)
        copied = con.execute(merge.insert, params).rowcount
        (found,) = con.execute(merge.present, params).fetchone() or (0,)
        copies.append(TableCopy(table, len(rows), copied, updated, found - copied - updated))
    return copies


# Each table's columns as sqlitestore.EXPORT_SQL reads them, with their PostgreSQL types.
COLUMNS = {
    "contents": "sha256 text, mime_type text, size_bytes bigint, first_seen_at timestamptz, deleted_at timestamptz",
    "media": "media_id text, sha256 text, phone_number_id text, state text, uploaded_at timestamptz, "
             "expires_at timestamptz",
    "paths": "path text, sha256 text, size_bytes bigint, mtime_ns bigint, ctime_ns bigint, inode bigint, "
             "device bigint, seen_at timestamptz",
    "events": "at timestamptz, action text, sha256 text, media_id text, phone_number_id text, path text, "
              "detail text",
    "inbound": "media_id text, sha256 text, mime_type text, size_bytes bigint, path text, downloaded_at timestamptz",
    "url_sources": "url text, sha256 text, etag text, last_modified text, checked_at timestamptz, refetchable bigint",
}

class Merge(NamedTuple):
    """How one table's rows join the registry: statements run first, the updates of the
    file's rows (each counted once), statements run after them, the insert of the missing
    rows, and the count of the file's rows the registry holds afterwards."""

    before: tuple[str, ...]
    update: tuple[str, ...]
    after: tuple[str, ...]
    insert: str
    present: str


# The column by which the statements below look a loaded table's rows up.
LOOKED_UP_BY = {"contents": "sha256", "media": "sha256", "paths": "sha256", "events": "media_id",
                "inbound": "media_id", "url_sources": "url"}

# When each side last did something with a content (first seen, deleted, uploaded, a path
# seen): the later one decides whether it is deleted, the file on a tie.
_SOURCE_ACTIVE = """greatest(s.first_seen_at, s.deleted_at,
    (SELECT max(m.uploaded_at) FROM s_media AS m WHERE m.sha256 = s.sha256),
    (SELECT max(p.seen_at) FROM s_paths AS p WHERE p.sha256 = s.sha256))"""
_TARGET_ACTIVE = """greatest(c.first_seen_at, c.deleted_at,
    (SELECT max(m.uploaded_at) FROM media AS m WHERE m.sha256 = c.sha256),
    (SELECT max(p.seen_at) FROM paths AS p WHERE p.sha256 = c.sha256))"""
# Contents the file deleted, and those it dropped since with their last ID (only their
# "delete" event is left), that the fleet has not used since: deleted fleet-wide as `delete`
# does it.
_DELETED_IN_SOURCE = f"""
    CREATE TEMP TABLE s_deleted ON COMMIT DROP AS
    SELECT c.sha256, s.deleted_at FROM contents AS c JOIN s_contents AS s USING (sha256)
    WHERE s.deleted_at IS NOT NULL AND c.deleted_at IS NULL AND {_SOURCE_ACTIVE} >= {_TARGET_ACTIVE}
    UNION ALL
    SELECT c.sha256, e.at FROM contents AS c
    JOIN (SELECT sha256, max(at) AS at FROM s_events WHERE action = 'delete' GROUP BY sha256) AS e USING (sha256)
    WHERE c.deleted_at IS NULL AND c.sha256 NOT IN (SELECT sha256 FROM s_contents) AND e.at >= {_TARGET_ACTIVE}"""
_STATES = "ARRAY['current', 'superseded', 'invalidated', 'deleting']"
_EVENT_MATCH = """
    coalesce(e.sha256, '') = coalesce(s.sha256, '') AND e.at = s.at AND e.action = s.action
    AND coalesce(e.media_id, '') = coalesce(s.media_id, '') AND coalesce(e.path, '') = coalesce(s.path, '')
    AND coalesce(e.detail, '') = coalesce(s.detail, '')"""

MERGE_SQL = {
    "contents": Merge(
        before=(_DELETED_IN_SOURCE,),
        update=(
            f"""UPDATE contents AS c SET deleted_at = NULL FROM s_contents AS s
                WHERE c.sha256 = s.sha256 AND s.deleted_at IS NULL AND c.deleted_at IS NOT NULL
                  AND {_SOURCE_ACTIVE} >= {_TARGET_ACTIVE}""",
            """UPDATE contents AS c SET deleted_at = d.deleted_at FROM s_deleted AS d
               WHERE c.sha256 = d.sha256 AND c.sha256 IN (SELECT sha256 FROM s_contents)""",
        ),
        after=(
            """UPDATE contents AS c SET deleted_at = d.deleted_at FROM s_deleted AS d
               WHERE c.sha256 = d.sha256 AND c.deleted_at IS NULL""",
            "UPDATE media SET state = 'deleting' WHERE sha256 IN (SELECT sha256 FROM s_deleted)",
            "DELETE FROM paths WHERE sha256 IN (SELECT sha256 FROM s_deleted)",
            "DELETE FROM url_sources WHERE sha256 IN (SELECT sha256 FROM s_deleted)",
            "DELETE FROM leases WHERE sha256 IN (SELECT sha256 FROM s_deleted)",
        ),
        # One the fleet deleted (and dropped) since the file last used it arrives deleted.
        insert=f"""INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at, deleted_at)
                   SELECT sha256, mime_type, size_bytes, first_seen_at, coalesce(deleted_at, (
                       SELECT max(e.at) FROM events AS e WHERE e.action = 'delete' AND e.sha256 = s.sha256
                       HAVING max(e.at) > {_SOURCE_ACTIVE}))
                   FROM s_contents AS s WHERE s.sha256 NOT IN (SELECT sha256 FROM contents) ORDER BY n
                   ON CONFLICT (sha256) DO NOTHING""",
        present="SELECT count(*) FROM contents WHERE sha256 IN (SELECT sha256 FROM s_contents)",
    ),
    "media": Merge(
        # An ID the file forgot after its remote DELETE (or its expiry) is gone at Meta.
        before=("""DELETE FROM media AS m USING s_events AS e
                   WHERE e.action IN ('deleted', 'expired') AND m.media_id = e.media_id
                     AND m.media_id NOT IN (SELECT media_id FROM s_media)""",),
        update=(f"""UPDATE media AS m SET state = s.state FROM s_media AS s
                    WHERE m.media_id = s.media_id
                      AND array_position({_STATES}, s.state) > array_position({_STATES}, m.state)""",),
        after=(),
        # An ID the fleet forgot (deleted at Meta, or expired) arrives invalidated; one of a
        # content deleted there arrives owing a DELETE; a current ID arrives superseded where
        # the registry has another current one for its content and number (one at most).
        insert="""INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at)
           SELECT media_id, sha256, phone_number_id,
                  CASE WHEN media_id IN (SELECT e.media_id FROM events AS e WHERE e.action IN ('deleted', 'expired'))
                       THEN 'invalidated'
                       WHEN (SELECT deleted_at FROM contents AS c WHERE c.sha256 = s.sha256) IS NOT NULL
                       THEN 'deleting'
                       WHEN state = 'current' AND (rank > 1 OR EXISTS (
                           SELECT 1 FROM media AS m WHERE m.sha256 = s.sha256 AND m.state = 'current'
                             AND m.phone_number_id = s.phone_number_id AND m.media_id <> s.media_id))
                       THEN 'superseded' ELSE state END,
                  uploaded_at, expires_at
           FROM (SELECT *, row_number() OVER (PARTITION BY sha256, phone_number_id, state = 'current'
                                              ORDER BY expires_at DESC) AS rank FROM s_media) AS s
           WHERE media_id NOT IN (SELECT media_id FROM media)
           ORDER BY n
           ON CONFLICT (media_id) DO NOTHING""",
        present="SELECT count(*) FROM media WHERE media_id IN (SELECT media_id FROM s_media)",
    ),
    "paths": Merge(
        before=(),
        update=("""UPDATE paths AS p SET sha256 = s.sha256, size_bytes = s.size_bytes, mtime_ns = s.mtime_ns,
                       ctime_ns = s.ctime_ns, inode = s.inode, device = s.device, seen_at = s.seen_at
                   FROM s_paths AS s WHERE p.host_id = %(host)s AND p.path = s.path AND s.seen_at > p.seen_at""",),
        after=(),
        insert="""INSERT INTO paths (host_id, path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at)
                  SELECT %(host)s, path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at
                  FROM s_paths ORDER BY n
                  ON CONFLICT (host_id, path) DO NOTHING""",
        present="SELECT count(*) FROM paths WHERE host_id = %(host)s AND path IN (SELECT path FROM s_paths)",
    ),
    "events": Merge(
        before=(),
        update=(),
        after=(),
        insert=f"""INSERT INTO events (at, action, sha256, media_id, phone_number_id, path, detail, host_id)
                   SELECT at, action, sha256, media_id, phone_number_id, path, detail, %(host)s
                   FROM s_events AS s WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE {_EVENT_MATCH})
                   ORDER BY n""",
        present=f"SELECT count(*) FROM s_events AS s WHERE EXISTS (SELECT 1 FROM events AS e WHERE {_EVENT_MATCH})",
    ),
    "inbound": Merge(
        before=(),
        update=("""UPDATE inbound AS i SET sha256 = s.sha256, mime_type = s.mime_type, size_bytes = s.size_bytes,
                       path = s.path, downloaded_at = s.downloaded_at
                   FROM s_inbound AS s WHERE i.media_id = s.media_id AND s.downloaded_at > i.downloaded_at""",),
        after=(),
        insert="""INSERT INTO inbound (media_id, sha256, mime_type, size_bytes, path, downloaded_at)
                  SELECT media_id, sha256, mime_type, size_bytes, path, downloaded_at FROM s_inbound ORDER BY n
                  ON CONFLICT (media_id) DO NOTHING""",
        present="SELECT count(*) FROM inbound WHERE media_id IN (SELECT media_id FROM s_inbound)",
    ),
    "url_sources": Merge(
        before=(),
        update=("""UPDATE url_sources AS u SET sha256 = s.sha256, etag = s.etag, last_modified = s.last_modified,
                       checked_at = s.checked_at, refetchable = s.refetchable <> 0
                   FROM s_url_sources AS s WHERE u.url = s.url AND s.checked_at > u.checked_at""",),
        after=(),
        insert="""INSERT INTO url_sources (url, sha256, etag, last_modified, checked_at, refetchable)
                  SELECT url, sha256, etag, last_modified, checked_at, refetchable <> 0 FROM s_url_sources
                  ORDER BY n ON CONFLICT (url) DO NOTHING""",
        present="SELECT count(*) FROM url_sources WHERE url IN (SELECT url FROM s_url_sources)",
    ),
}
