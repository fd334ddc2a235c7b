"""The backend port: the few primitives that really differ between databases.

:class:`~media_registry.store.Store` holds every rule of the contract once, in SQL both
databases speak, and a :class:`Backend` (dogpile.cache's ``CacheBackend`` is the model):
a read, a write transaction, a stream, the upload mutex, the time adapter, the dialect's
words (host scope of paths, row locks, the clock of claims) and its own facts for ``stats``.
Optional capabilities have a default here, so no caller ever asks which backend it has.
"""

from __future__ import annotations

import _weakref  # weakref.ref itself, without the weakref module: the cache hit imports this module
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone

from ..errors import ConfigError
from .rows import LeaseOutcome, TableCopy

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar

    from ._local import LocalCache
    from ._pacing import Pacer

    T = TypeVar("T")
    Owner = TypeVar("Owner")
else:
    Protocol = object  # a port's shape is for the type checker: nothing checks it at run time
# By name, or by position where each name is once (a string: Any is the type checker's alone).
Params: TypeAlias = "Mapping[str, Any] | tuple[Any, ...]"


class Tx(Protocol):
    """A connection inside one transaction: statements with ``:named`` parameters."""

    def execute(self, sql: str, params: Params, /) -> Any:
        """Run one statement: the driver's cursor (``rowcount``, ``fetchone()``, ``fetchall()``)."""
        ...


@functools.lru_cache(maxsize=256)  # the cache hit converts the same few moments over and over
def utc_text(moment: datetime) -> str:
    """A moment as SQLite stores it: UTC ISO-8601 to the second, 'YYYY-MM-DDTHH:MM:SSZ'."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"


def at_fork(owner: Owner, forget: Callable[[Owner], None]) -> None:
    """In a forked child, ``forget(owner)`` while it lives: the parent's connections, threads
    and locks stay the parent's (closing them from the child would disturb the parent)."""
    reference = _weakref.ref(owner)
    os.register_at_fork(after_in_child=lambda: None if (alive := reference()) is None else forget(alive))


SIGNED = 1 << 63


def int64(value: int) -> int:
    """An unsigned 64-bit stat field (inode, device) as the signed integer databases store."""
    return value - (1 << 64) if value >= SIGNED else value


def uint64(value: int) -> int:
    """A stored stat field back as the unsigned value ``os.stat`` gives."""
    return value & 0xFFFF_FFFF_FFFF_FFFF


class Backend:
    """The port under the Store's rules; subclass it and fill in the primitives."""

    location: str  # the database for people: a file path, or a URL without its password
    host_id: str  # who claims owed DELETEs (and, on a shared database, whose paths they are)
    scope: dict[str, Any]  # the parameters the dialect's words use: at least "host"
    # The dialect's words: `here`/`p_here` scope paths to this host ("... AND "; `and_p_here`
    # after a condition), `host_col`/`host_val`/`host_cols`/`host_vals`/`host_set` add the host
    # to inserted paths, leases and events, `for_update`/`skip_locked` lock rows where two
    # writers could meet, `db_now`/`claim_until` are the clock of claims, `live_path` keeps
    # paths of live hosts, `touch_host` records this host, `path_list` aggregates a content's
    # paths (in path order), `cutoff` reads a number's own cutoff from :cutoffs (JSON), `listed`
    # hints the listing's index for contents.
    dialect: ClassVar[dict[str, str]]
    time: Callable[[Any], datetime]  # a stored time back as an aware UTC datetime
    when: Callable[[datetime], Any]  # a time as a parameter
    memory: LocalCache | None = None  # the hits this process served, where the backend keeps them true

    def read(self, sql: str, params: Params) -> list[Any]:
        """Every row of one read, outside any write transaction."""
        return list(self.stream(sql, params))

    def read_one(self, sql: str, params: Params) -> Any:
        """The first row of one read, or None (every cache hit: keep it lean)."""
        raise NotImplementedError

    def positional(self, sql: str) -> str:
        """``sql`` with each ``:name`` (each appearing once) bound by position: the cache hits
        bind a tuple, which drivers bind faster than names."""
        raise NotImplementedError

    def write(self, work: Callable[[Tx], T]) -> T:
        """``work`` in one short write transaction (retried whole if the backend may)."""
        raise NotImplementedError

    def stream(self, sql: str, params: Params) -> Iterator[Any]:
        """The rows of one read, one snapshot, in constant memory."""
        raise NotImplementedError

    def acquire(self, sha256: str, phone: str, owner: str, now: datetime,
                claim: Callable[[Tx], LeaseOutcome]) -> LeaseOutcome:
        """The upload mutex: WAIT if another live owner holds (sha256, phone), else ``claim``
        (which writes the lease row) while holding it."""
        raise NotImplementedError

    def paths(self, value: Any) -> tuple[str, ...]:
        """The ``{path_list}`` column as a tuple."""
        raise NotImplementedError

    def facts(self) -> dict[str, str | int]:
        """The backend's own facts for ``stats``: at least ``db`` and ``db_bytes``."""
        raise NotImplementedError

    # -- optional capabilities, with their defaults -------------------------------------------

    def on_claim(self, owner: str, sha256: str, phone: str, work: Callable[[Tx, bool], T]) -> T:
        """Run ``work`` where the upload mutex of ``owner`` lives (told whether it still held
        it), then let the mutex go."""
        return self.write(lambda tx: work(tx, True))

    def release(self, owner: str, sha256: str, phone: str, drop: Callable[[], None]) -> None:
        """Drop the lease row (``drop``) and let the upload mutex of ``owner`` go."""
        drop()

    def changed(self, key: str) -> None:
        """This process is changing, in the transaction at hand, what ``key`` names
        (``s:<sha256>``: a content's media IDs; ``p:<path>``: a path): its answers leave
        :attr:`memory` now, without waiting for the database's notification."""
        if self.memory is not None:
            self.memory.changing(key)

    def pacer(self, per_second: float, api_base: str) -> Pacer:
        """Upload slots, ``per_second`` per phone number of the API at ``api_base``, shared by
        every process that shares the limit (here: this user's processes on this host)."""
        from ._pacing import HostPacer

        return HostPacer(per_second, scope=api_base)

    def pass_started(self) -> None:
        """A lifecycle pass (refresh, purge) begins: the backend's bookkeeping."""

    def daemon_lock(self) -> AbstractContextManager[None]:
        """Hold, for the block, the lock that lets one daemon serve this registry (one per host
        of a shared database): RegistryLocked if another daemon holds it. The lock goes with
        the process (or its session), so a killed daemon never blocks the next one."""
        return nullcontext()

    def import_rows(self, tables: dict[str, list[tuple[Any, ...]]]) -> list[TableCopy]:
        """Bring this registry up to date with another's rows, table by table (as
        :func:`~media_registry.store.sqlite.export_registry` reads them), the paths as this
        host's; what became of each table's rows. Only a shared database takes them."""
        raise ConfigError(f"{self.location} cannot take another registry's rows; migrate into PostgreSQL")

    def close(self) -> None:
        """Release every connection; the backend is not used afterwards."""
