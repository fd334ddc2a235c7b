"""``media-registry migrate``: copy a single-host SQLite registry into PostgreSQL.

The SQLite file is only read. Its contents, media IDs (with their times and states), events,
inbound media, URL sources, webhook inbox (items and sent messages) and header handles join the
PostgreSQL registry (without claims: a pending item stays claimable), and its paths become this
host's (``MEDIA_REGISTRY_HOST_ID``), so the senders pointed at PostgreSQL afterwards get cache
hits for every file the SQLite registry knew: no upload.

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

from ..dburl import PostgresURL
from ..errors import ConfigError, RegistryError
from ..store import Store, TableCopy
from ..store.sqlite import export_registry

TARGET_VARIABLE = "MEDIA_REGISTRY_MIGRATE_TO"


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
        from ..store.postgres import PostgresBackend
    except ModuleNotFoundError as exc:
        if exc.name not in ("psycopg", "psycopg_pool"):
            raise
        raise ConfigError(f"{setting} names a PostgreSQL registry, which needs the postgres extra: "
                          "pip install 'media-registry[postgres]'") from None
    store = Store(PostgresBackend(target, host_id=host_id, setting=setting))
    try:
        copies = store.backend.import_rows(tables)
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
