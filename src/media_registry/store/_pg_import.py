"""Bringing a PostgreSQL registry up to date with an SQLite registry's rows (``migrate``).

Each table's rows are loaded into a temporary table ``s_<table>``; the registry's rows are
brought up to date from them (a row whose time is later wins), the missing ones inserted,
and each table's rows counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._pg_pool import Connection
from .migrations import EXPORTED
from .rows import TableCopy


class Merge(NamedTuple):
    """How one table's rows join the registry: the insert of the missing rows (``{columns}``
    filled in), the count of the file's rows held afterwards, statements run first, the
    updates of the file's rows (each counted once), and statements run after them."""

    insert: str
    present: str
    before: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


def merge(con: Connection, tables: dict[str, list[tuple[Any, ...]]], host_id: str) -> list[TableCopy]:
    """Load the file's rows of each table, bring the registry's rows up to date, count."""
    for table, rows in tables.items():  # typed as the registry's own columns, numbered in the file's order
        columns = EXPORTED[table][0]
        con.execute(f"CREATE TEMP TABLE s_{table} ON COMMIT DROP AS SELECT {columns}, 0 AS n FROM {table} WITH NO DATA")
        with con.cursor().copy(f"COPY s_{table} ({columns}, n) FROM STDIN") as copy:
            for n, row in enumerate(rows, 1):
                copy.write_row((*row, n))
        con.execute(f"CREATE INDEX ON s_{table} ({LOOKED_UP_BY[table]})")
        con.execute(f"ANALYZE s_{table}")
    copies, params = [], {"host": host_id}
    for table, rows in tables.items():
        step = MERGE_SQL[table]
        for sql in step.before:
            con.execute(sql, params)
        updated = sum(con.execute(sql, params).rowcount for sql in step.update)
        for sql in step.after:
            con.execute(sql, params)
        copied = con.execute(step.insert.format(columns=EXPORTED[table][0]), params).rowcount
        (found,) = con.execute(step.present, params).fetchone() or (0,)
        copies.append(TableCopy(table, len(rows), copied, updated, found - copied - updated))
    return copies


def _newer(table: str, key: str, when: str, *, host: str = "", values: str = "{columns}") -> Merge:
    """A table whose rows the file replaces when the file's are newer by ``when`` (over ``{x}``,
    the row); ``key``: its key's columns."""
    keys = key.split(", ")
    columns = [name for name in EXPORTED[table][0].split(", ") if name not in keys]
    return Merge(
        update=(f"UPDATE {table} AS t SET " + ", ".join(f"{c} = s.{c}" for c in columns)
                + f" FROM s_{table} AS s WHERE {host}" + "".join(f"t.{k} = s.{k} AND " for k in keys)
                + f"{when.format(x='s')} > {when.format(x='t')}",),
        insert=f"INSERT INTO {table} ({'host_id, ' * bool(host)}{{columns}}) SELECT {values} FROM s_{table} "
               f"ORDER BY n ON CONFLICT DO NOTHING",
        present=f"SELECT count(*) FROM {table} AS t WHERE {host}({key}) IN (SELECT {key} FROM s_{table})")


# The column by which the statements below look a loaded table's rows up.
LOOKED_UP_BY = {"contents": "sha256", "media": "sha256", "paths": "sha256", "events": "media_id",
                "inbound": "media_id", "url_sources": "url", "inbound_items": "media_id",
                "sent_messages": "message_id", "header_handles": "sha256, app_id"}

# When each side last did something with a content (first seen, deleted, uploaded, a path
# seen): the later one decides whether it is deleted, the file on a tie.
_ACTIVE = """greatest({x}.first_seen_at, {x}.deleted_at,
    (SELECT max(m.uploaded_at) FROM {s}media AS m WHERE m.sha256 = {x}.sha256),
    (SELECT max(p.seen_at) FROM {s}paths AS p WHERE p.sha256 = {x}.sha256))"""
_SOURCE_ACTIVE, _TARGET_ACTIVE = _ACTIVE.format(x="s", s="s_"), _ACTIVE.format(x="c", s="")
_STATES = "ARRAY['current', 'superseded', 'invalidated', 'deleting']"
_EVENT_MATCH = " AND ".join(f"coalesce(e.{c}, '') = coalesce(s.{c}, '')" for c in ("sha256", "media_id", "path",
                                                                                   "detail")) + \
    " AND e.at = s.at AND e.action = s.action"
_FORGOTTEN = "SELECT e.media_id FROM {events} AS e WHERE e.action IN ('deleted', 'expired')"

MERGE_SQL = {
    "contents": Merge(
        # Contents the file deleted, and those it dropped since with their last ID (only their
        # "delete" event is left), that the fleet has not used since: deleted as `delete` does.
        before=(f"""CREATE TEMP TABLE s_deleted ON COMMIT DROP AS
            SELECT c.sha256, s.deleted_at FROM contents AS c JOIN s_contents AS s USING (sha256)
            WHERE s.deleted_at IS NOT NULL AND c.deleted_at IS NULL AND {_SOURCE_ACTIVE} >= {_TARGET_ACTIVE}
            UNION ALL SELECT c.sha256, e.at FROM contents AS c JOIN (
                SELECT sha256, max(at) AS at FROM s_events WHERE action = 'delete' GROUP BY sha256) AS e USING (sha256)
            WHERE c.deleted_at IS NULL AND c.sha256 NOT IN (SELECT sha256 FROM s_contents)
              AND e.at >= {_TARGET_ACTIVE}""",),
        update=(f"""UPDATE contents AS c SET deleted_at = NULL FROM s_contents AS s
                    WHERE c.sha256 = s.sha256 AND s.deleted_at IS NULL AND c.deleted_at IS NOT NULL
                      AND {_SOURCE_ACTIVE} >= {_TARGET_ACTIVE}""",
                "UPDATE contents AS c SET deleted_at = d.deleted_at FROM s_deleted AS d "
                "WHERE c.sha256 = d.sha256 AND c.sha256 IN (SELECT sha256 FROM s_contents)"),
        after=("UPDATE contents AS c SET deleted_at = d.deleted_at FROM s_deleted AS d "
               "WHERE c.sha256 = d.sha256 AND c.deleted_at IS NULL",
               "UPDATE media SET state = 'deleting' WHERE sha256 IN (SELECT sha256 FROM s_deleted)",
               *(f"DELETE FROM {t} WHERE sha256 IN (SELECT sha256 FROM s_deleted)"
                 for t in ("paths", "url_sources", "leases"))),
        # One the fleet deleted (and dropped) since the file last used it arrives deleted.
        insert=f"""INSERT INTO contents ({{columns}}) SELECT sha256, mime_type, size_bytes, first_seen_at,
                coalesce(deleted_at, (SELECT max(e.at) FROM events AS e WHERE e.action = 'delete'
                                      AND e.sha256 = s.sha256 HAVING max(e.at) > {_SOURCE_ACTIVE}))
            FROM s_contents AS s WHERE s.sha256 NOT IN (SELECT sha256 FROM contents) ORDER BY n
            ON CONFLICT (sha256) DO NOTHING""",
        present="SELECT count(*) FROM contents WHERE sha256 IN (SELECT sha256 FROM s_contents)"),
    "media": Merge(
        # An ID the file forgot after its remote DELETE (or its expiry) is gone at Meta.
        before=("DELETE FROM media AS m WHERE m.media_id IN (" + _FORGOTTEN.format(events="s_events")
                + ") AND m.media_id NOT IN (SELECT media_id FROM s_media)",),
        update=(f"""UPDATE media AS m SET state = s.state FROM s_media AS s WHERE m.media_id = s.media_id
                    AND array_position({_STATES}, s.state) > array_position({_STATES}, m.state)""",),
        # An ID the fleet forgot (deleted at Meta, or expired) arrives invalidated; one of a
        # content deleted there arrives owing a DELETE; a current ID arrives superseded where
        # the registry has another current one for its content and number (one at most).
        insert="""INSERT INTO media ({columns}) SELECT media_id, sha256, phone_number_id,
                CASE WHEN media_id IN (""" + _FORGOTTEN.format(events="events") + """) THEN 'invalidated'
                     WHEN (SELECT deleted_at FROM contents AS c WHERE c.sha256 = s.sha256) IS NOT NULL THEN 'deleting'
                     WHEN state = 'current' AND (rank > 1 OR EXISTS (
                         SELECT 1 FROM media AS m WHERE m.sha256 = s.sha256 AND m.state = 'current'
                           AND m.phone_number_id = s.phone_number_id AND m.media_id <> s.media_id))
                     THEN 'superseded' ELSE state END, uploaded_at, expires_at
            FROM (SELECT *, row_number() OVER (PARTITION BY sha256, phone_number_id, state = 'current'
                                               ORDER BY expires_at DESC) AS rank FROM s_media) AS s
            WHERE media_id NOT IN (SELECT media_id FROM media) ORDER BY n ON CONFLICT (media_id) DO NOTHING""",
        present="SELECT count(*) FROM media WHERE media_id IN (SELECT media_id FROM s_media)"),
    "paths": _newer("paths", "path", "{x}.seen_at", host="t.host_id = %(host)s AND ", values="%(host)s, {columns}"),
    "events": Merge(
        insert=f"""INSERT INTO events ({{columns}}, host_id) SELECT {{columns}}, %(host)s FROM s_events AS s
                   WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE {_EVENT_MATCH}) ORDER BY n""",
        present=f"SELECT count(*) FROM s_events AS s WHERE EXISTS (SELECT 1 FROM events AS e WHERE {_EVENT_MATCH})"),
    "inbound": _newer("inbound", "media_id", "{x}.downloaded_at"),
    "url_sources": _newer("url_sources", "url", "{x}.checked_at"),
    # An item only moves forward: waiting (then by its tries), lost, archived.
    "inbound_items": _newer("inbound_items", "media_id", "(array_position(ARRAY['pending', 'failed', 'lost', "
                            "'archived'], {x}.state), {x}.attempts)"),
    "sent_messages": _newer("sent_messages", "message_id", "{x}.sent_at"),
    "header_handles": _newer("header_handles", "sha256, app_id", "{x}.created_at"),
}
