"""What ``doctor`` learns of a registry without changing it: the backend and its version,
whether the registry exists, which schema steps opening it would apply, and when the daemon
last refreshed an ID. Read-only: nothing here creates, upgrades or locks a registry."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from ..dburl import PostgresURL
from ..errors import ConfigError, RegistryCorrupt, RegistryUnreachable
from . import migrations
from .core import Store

LAST_EVENT = "SELECT max(at) FROM events WHERE action = :action"


class SchemaFacts(NamedTuple):
    """The backend (name and server version), whether the registry exists, and the schema
    steps that opening it would apply (none: current)."""

    backend: str
    exists: bool
    pending: tuple[str, ...]


def schema_facts(db: Path | PostgresURL, timeout: float) -> SchemaFacts:
    """The registry's facts; RegistryUnreachable or RegistryCorrupt with a one-line reason."""
    if isinstance(db, PostgresURL):
        return _postgres(db, timeout)
    return _sqlite(db, timeout)


def _pending(steps: tuple[migrations.Migration, ...], applied: set[str]) -> tuple[str, ...]:
    return tuple(step.name for step in steps if step.name not in applied)


def _sqlite(db: Path, timeout: float) -> SchemaFacts:
    backend = f"SQLite {sqlite3.sqlite_version}"
    if not db.exists():
        return SchemaFacts(backend, False, ())
    try:
        with closing(sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True, timeout=timeout)) as con:
            version = int(con.execute("PRAGMA user_version").fetchone()[0])
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            applied = {step.name for step in migrations.MIGRATIONS[:version]}
            if "migrations" in tables:
                applied |= {name for (name,) in con.execute("SELECT name FROM migrations")}
    except sqlite3.Error as exc:
        raise RegistryCorrupt(f"registry {db} cannot be read ({exc}); check MEDIA_REGISTRY_DB (or --db)") from None
    if version < 1 or not migrations.OUR_TABLES <= tables:
        raise RegistryCorrupt(f"{db} is not a media-registry registry; point MEDIA_REGISTRY_DB at one")
    return SchemaFacts(backend, True, _pending(migrations.MIGRATIONS, applied))


def _postgres(db: PostgresURL, timeout: float) -> SchemaFacts:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise ConfigError("MEDIA_REGISTRY_DB is a PostgreSQL URL, which needs the postgres extra: "
                          "pip install 'media-registry[postgres]'") from None

    try:
        with psycopg.connect(db.secret(), connect_timeout=max(1, int(timeout))) as con:
            version = str(con.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
            exists = con.execute("SELECT to_regclass('migrations') IS NOT NULL").fetchone()[0]  # type: ignore[index]
            applied = {row[0] for row in con.execute("SELECT name FROM migrations")} if exists else set()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise RegistryUnreachable(f"cannot reach PostgreSQL at {db} ({reason}); check the server "
                                  "and MEDIA_REGISTRY_DB") from None
    return SchemaFacts(f"PostgreSQL {version}", bool(exists), _pending(migrations.POSTGRES, applied))


def last_event(store: Store, action: str) -> datetime | None:
    """When the registry last recorded an event ``action`` (e.g. ``refresh``), or None."""
    row = store.backend.read_one(LAST_EVENT, {"action": action})
    return None if row is None or row[0] is None else store.backend.time(row[0])
