"""``media-registry migrate --to URL``: copy a single-host SQLite registry into PostgreSQL.

The SQLite file is only read. Its contents, media IDs (with their times and states), events,
inbound media and URL sources join the PostgreSQL registry, and its paths become this host's
(``MEDIA_REGISTRY_HOST_ID``), so the senders pointed at PostgreSQL afterwards get cache hits
for every file the SQLite registry knew: no upload. Running it twice copies nothing twice.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .dburl import PostgresURL
from .errors import ConfigError, RegistryError
from .sqlitestore import export_registry
from .store import open_store


class TableCopy(NamedTuple):
    """One table of a migration: rows in the SQLite registry, and how many of them the
    PostgreSQL registry holds afterwards (equal when the copy is complete)."""

    table: str
    source_rows: int
    copied_rows: int


def migrate_to_postgres(source: str | os.PathLike[str] | PostgresURL, target: str | PostgresURL, *,
                        host_id: str) -> list[TableCopy]:
    """Copy the SQLite registry at ``source`` into the PostgreSQL registry at ``target``
    (created if new), its paths as ``host_id``'s, and verify every row arrived.

    Raises RegistryError naming the table if a count does not match.
    """
    if isinstance(source, PostgresURL):
        raise ConfigError("migrate copies an SQLite registry into PostgreSQL: point --db (or "
                          "MEDIA_REGISTRY_DB) at the SQLite file and give the server with --to")
    if not isinstance(target, PostgresURL):
        try:
            target = PostgresURL(target)
        except ValueError as exc:
            raise ConfigError(f"migrate --to: {exc}; give postgresql://user:password@host:port/dbname") from None
    tables = export_registry(source)
    store = open_store(target, host_id=host_id)  # says so if the postgres extra is missing
    from .pgstore import PostgresStore

    assert isinstance(store, PostgresStore)
    try:
        counts = store.import_registry(tables)
    finally:
        store.close()
    copies = [TableCopy(table, *counts[table]) for table in tables]
    for copy in copies:
        if copy.copied_rows != copy.source_rows:
            raise RegistryError(
                f"migrate: {copy.table} has {copy.source_rows} rows in {source} but "
                f"{copy.copied_rows} arrived in {target}; run migrate again, then report it"
            )
    return copies
