"""The registry's database: one :class:`Store` holding every rule of the contract over a
backend (:class:`~media_registry.store.backend.Backend`): SQLite (:mod:`.sqlite`), the
embedded default, for a file path; PostgreSQL (:mod:`.postgres`, the ``postgres`` extra) for
a ``postgresql://`` URL. Callers never see SQL, a driver's objects or a dialect's time format:
times are aware UTC datetimes, rows the NamedTuples of :mod:`.rows`. Each backend's schema
enforces the rules too (one current ID per content and number, fixed states, foreign keys).
:mod:`media_registry.testing.store` holds the conformance suite.
"""

from __future__ import annotations

import os
from datetime import timedelta

from ..dburl import PostgresURL, is_postgres_url
from ..defaults import BUSY_TIMEOUT as BUSY_TIMEOUT_SECONDS
from ..errors import ConfigError
from . import rows
from .core import Store
from .owners import HOST, new_owner, owner_alive
from .rows import *  # noqa: F403  (the contract's row types: rows.__all__)

__all__ = ["BUSY_TIMEOUT_SECONDS", "HOST", "Store", "new_owner", "open_store", "owner_alive", *rows.__all__]

def remembering(store: Store) -> Store:
    """``store``, its hits answered from its backend's memory where it keeps one."""
    if (memory := store.backend.memory) is not None:
        from ._local import current_media, path_hits

        store.lookup_path = path_hits(store, memory)  # type: ignore[method-assign,assignment]
        store.current_media = current_media(store, memory)  # type: ignore[method-assign,assignment]
    return store


def open_store(
    db: str | os.PathLike[str] | PostgresURL, *, create: bool = True,
    busy_timeout: float = BUSY_TIMEOUT_SECONDS, host_id: str | None = None,
    pool_size: int | None = None, host_retention: timedelta | None = None, local_cache: int = 0,
) -> Store:
    """The store that ``MEDIA_REGISTRY_DB`` names: a ``postgresql://`` URL means PostgreSQL,
    anything else is an SQLite file path.

    ``create=False`` (read-only commands) never creates a registry: a missing one, or a
    database that is not a media-registry registry, is refused untouched. Either mode
    upgrades an older registry of ours in place. ``host_id`` names this machine in a fleet
    (PostgreSQL only; default its hostname); ``pool_size`` bounds PostgreSQL's connection
    pool; ``host_retention`` is how long an unseen host keeps its paths there; ``local_cache``
    how many hits each process answers from memory (0: none).
    """
    if isinstance(db, PostgresURL) or is_postgres_url(db):
        try:
            from .postgres import PostgresBackend
        except ModuleNotFoundError as exc:
            if exc.name not in ("psycopg", "psycopg_pool"):
                raise
            raise ConfigError("MEDIA_REGISTRY_DB is a PostgreSQL URL, which needs the postgres extra: "
                              "pip install 'media-registry[postgres]'") from None
        store = Store(PostgresBackend(db if isinstance(db, PostgresURL) else os.fspath(db), create=create,
                                      busy_timeout=busy_timeout, host_id=host_id or HOST, pool_size=pool_size,
                                      host_retention=host_retention, local_cache=local_cache))
        return remembering(store)
    from .sqlite import SQLiteBackend

    store = Store(SQLiteBackend(os.fspath(db), create=create, busy_timeout=busy_timeout))
    if local_cache:
        from ._local import versioned_path_hits

        store.lookup_path = versioned_path_hits(store, local_cache)  # type: ignore[method-assign,assignment]
    return store
