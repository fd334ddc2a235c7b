"""The local cache: the hits this process served (a path's content and ID, a content's current
ID), kept in memory and kept true by the database's notifications (on PostgreSQL, LISTEN/NOTIFY: :mod:`._pg_listen`).

A repeated hit costs a dictionary lookup, not a round trip. The rules that keep it true:

- Every change that can make a served answer wrong is announced, in its own transaction, by
  a notification carrying the key it touched (``s:<sha256>`` for a content's media IDs,
  ``p:<path>`` for a path, ``*`` for everything); the listener drops the entries named.
- Memory serves only while the listener's last proof of life (a round trip on its own
  connection) is under :data:`WINDOW` old; a lost listener empties the cache.
- A fill is kept only if no notification arrived while it was read (a counter), so a read
  racing a change never caches the dead answer.
- This process's own changes drop their entries at once, and no fill of their keys is kept
  until their notification comes back (or :data:`PENDING_FOR` passes: a rolled-back change).
- Expiry and ``min_validity`` are checked on every hit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..content.hashing import Fingerprint
from . import _sql as q
from .backend import SIGNED, at_fork, int64
from .rows import PathHit

if TYPE_CHECKING:
    from .core import Store
    from .sqlite import SQLiteBackend

WINDOW = 0.5  # seconds: memory serves while the listener proved itself alive this recently
PROOF_EVERY = 0.25  # seconds between the listener's round trips
PENDING_FOR = 5.0  # seconds an own change blocks fills of its key without its notification
ALL = "*"
# A path's content and its current ID, whatever its expiry (checked on each hit in Python).
FILL = ("SELECT p.sha256, m.media_id, m.expires_at, p.seen_at FROM paths AS p LEFT JOIN media AS m "
        "ON m.sha256 = p.sha256 AND m.phone_number_id = :phone AND m.state = 'current' "
        "WHERE p.path = :path AND p.size_bytes = :size AND p.mtime_ns = :mtime AND p.ctime_ns = :ctime "
        "AND p.inode = :inode AND p.device = :device{and_p_here}")
CURRENT_FILL = q.CURRENT.replace(" AND m.expires_at > :until", "")  # its expiry checked on each hit

Entry = tuple[datetime, Any, tuple[str, ...]]  # expires_at, the answer, its notification keys
Current = tuple[str, str, datetime]  # a content's current ID on a number: media ID, MIME type, expiry


class LocalCache:
    """At most ``size`` answers in memory, with the counter and liveness gate above."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.start: Callable[[], None] = lambda: None  # starts the listener (set by it)
        self.notified = 0  # notifications (and losses) seen: a fill that saw one is discarded
        self.fills = 0
        self.entries: OrderedDict[Hashable, Entry] = OrderedDict()  # oldest fill first
        self.by_key: dict[str, set[Hashable]] = {}
        self.pending: dict[str, float] = {}  # own changes not yet notified back -> until when
        self._forget()
        at_fork(self, LocalCache._forget)

    def _forget(self) -> None:
        """A fresh start (a forked child has no listener): emptied in place, since the hit
        functions hold the maps."""
        self.lock = threading.Lock()
        self.proof = -math.inf  # monotonic time the listener last proved itself alive
        self.listening = False  # a listener runs for this process (set by its starter)
        self.pending.clear()
        self._drop(ALL)

    def filling(self) -> int:
        """A fill begins: the counter to hand to :meth:`put`. The listener starts with the
        second fill: a process that looks up once never needs it."""
        self.fills += 1
        if self.fills > 1 and not self.listening:
            self.listen()
        return self.notified

    def listen(self) -> None:
        """Start the listener, once however many threads ask at once."""
        with self.lock:
            start, self.listening = not self.listening, True
        if start:
            self.start()

    def serving(self) -> bool:
        """Whether memory may answer now (the listener proved itself alive recently)."""
        return time.monotonic() - self.proof < WINDOW

    def current(self, sha256: str, phone_number_id: str, valid_until: datetime) -> Current | None:
        """The content's current ID on that number if memory may serve now and it expires after
        ``valid_until``, else None; never a read (the service answers such hits on its event loop)."""
        if time.monotonic() - self.proof < WINDOW:
            entry = self.entries.get((sha256, phone_number_id))
            if entry is not None and entry[0] > valid_until:
                answer: Current = entry[1]
                return answer
        return None

    def put(self, key: Hashable, expires_at: datetime, answer: Any, keys: tuple[str, ...], seen: int) -> None:
        """Keep a fill read while the counter stood at ``seen``, if nothing arrived meanwhile."""
        now = time.monotonic()
        with self.lock:
            if seen != self.notified or not self.serving() or any(self.pending.get(k, 0) > now for k in keys):
                return
            self._remove(key)
            self.entries[key] = (expires_at, answer, keys)
            for k in keys:
                self.by_key.setdefault(k, set()).add(key)
            while len(self.entries) > self.size:  # the oldest fill goes first
                self._untag(*self.entries.popitem(last=False))

    def notice(self, key: str) -> None:
        """A notification arrived: drop what ``key`` names."""
        with self.lock:
            self.pending.pop(key, None)
            self._drop(key)

    def changing(self, key: str) -> None:
        """This process is changing what ``key`` names: drop it now, keep no fill of it until
        its notification comes back."""
        with self.lock:
            self.pending[key] = time.monotonic() + PENDING_FOR
            self._drop(key)

    def proven(self, at: float) -> None:
        """The listener's round trip sent at monotonic time ``at`` came back."""
        self.proof = at

    def lost(self) -> None:
        """The listener lost its connection: empty, and serve nothing until it is back."""
        with self.lock:
            self.proof = -math.inf
            self.pending.clear()
            self._drop(ALL)

    def _drop(self, key: str) -> None:
        self.notified += 1
        if key == ALL:
            self.entries.clear()
            self.by_key.clear()
            return
        for entry_key in self.by_key.pop(key, ()):
            self._remove(entry_key)

    def _remove(self, entry_key: Hashable) -> None:
        entry = self.entries.pop(entry_key, None)
        if entry is not None:
            self._untag(entry_key, entry)

    def _untag(self, entry_key: Hashable, entry: Entry) -> None:
        for k in entry[2]:
            if (keys := self.by_key.get(k)) is not None:
                keys.discard(entry_key)
                if not keys:
                    del self.by_key[k]


def path_hits(store: Store, cache: LocalCache) -> Callable[[Fingerprint, str, datetime], PathHit | None]:
    """``store.lookup_path`` answered from ``cache`` where it may, filled from the database."""
    entries, monotonic = cache.entries, time.monotonic

    def keep(key: tuple[str, Fingerprint], expires_at: datetime, answer: PathHit, seen: int) -> None:
        cache.put(key, expires_at, answer, ("s:" + answer.sha256, "p:" + key[1].path), seen)

    fill = _filler(store, keep)

    def lookup_path(fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        if monotonic() - cache.proof < WINDOW:
            entry = entries.get((phone_number_id, fp))
            if entry is not None and entry[0] > valid_until:
                hit: PathHit = entry[1]
                return hit
        return fill(fp, phone_number_id, valid_until, cache.filling())

    return lookup_path


def versioned_path_hits(store: Store, size: int) -> Callable[[Fingerprint, str, datetime], PathHit | None]:
    """``store.lookup_path`` on SQLite, answered from memory while nothing was committed to the
    file since the answer was read: one ``PRAGMA data_version`` per hit, not the lookup.

    A commit by any other connection (another process, another thread) moves this thread's
    connection's data_version; this connection's own writes move its ``total_changes``: a
    thread that sees either move empties the memory, and a fill that raced an emptying is
    dropped (the generation). A read inside this connection's own transaction is not kept
    (a rollback moves neither counter). At most ``size`` answers (emptied when full); expiry
    and ``min_validity`` are checked on every hit."""
    backend: SQLiteBackend = store.backend  # type: ignore[assignment]
    moved, writing = backend.moved, backend.writing
    entries: dict[tuple[str, Fingerprint], tuple[datetime, PathHit]] = {}
    generation = [0]

    def keep(key: tuple[str, Fingerprint], expires_at: datetime, answer: PathHit, seen: int) -> None:
        if writing():  # inside a write: a rollback would leave no mark
            return
        if len(entries) >= size:
            entries.clear()
        entries[key] = (expires_at, answer)
        if generation[0] != seen:  # emptied meanwhile: the read may predate the commit that emptied it
            entries.pop(key, None)

    fill = _filler(store, keep)

    def lookup_path(fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        if moved():
            generation[0] += 1  # before emptying: a fill that checks the generation after its put sees it
            entries.clear()
        entry = entries.get((phone_number_id, fp))
        if entry is not None and entry[0] > valid_until:
            return entry[1]
        return fill(fp, phone_number_id, valid_until, generation[0])

    return lookup_path


Keep = Callable[[tuple[str, Fingerprint], datetime, PathHit, int], None]


def _filler(store: Store, keep: Keep) -> Callable[[Fingerprint, str, datetime, int], PathHit | None]:
    """The read that fills a path's entry: ``keep`` is handed each current answer with its
    expiry and the caller's ``seen`` mark (taken before the read); the answer returned carries
    its media ID only while that is valid past ``valid_until``, as ``lookup_path``'s does."""
    backend = store.backend
    sql = backend.positional(FILL.format_map(backend.dialect))
    here = (backend.host_id,) if backend.dialect["and_p_here"] else ()

    def fill(fp: Fingerprint, phone_number_id: str, valid_until: datetime, seen: int) -> PathHit | None:
        stored = fp._replace(inode=int64(fp.inode), device=int64(fp.device)) if fp[4] | fp[5] >= SIGNED else fp
        row: Any = backend.read_one(sql, (phone_number_id,) + stored + here)
        if row is None:
            return None
        sha256, media_id, expires_at, seen_at = row
        recorded_at = backend.time(seen_at)
        if media_id is None:
            return PathHit(sha256, None, recorded_at)
        expires_at = backend.time(expires_at)
        answer = PathHit(sha256, str(media_id), recorded_at)
        keep((phone_number_id, fp), expires_at, answer, seen)
        return answer if expires_at > valid_until else answer._replace(media_id=None)

    return fill


def current_media(store: Store, cache: LocalCache) -> Callable[[str, str, datetime], Current | None]:
    """``store.current_media`` (and so ``current_media_id``: the service's lookups, bytes and URL
    sources) answered from ``cache`` where it may, filled from the database."""
    backend = store.backend
    sql = backend.positional(CURRENT_FILL)

    def current(sha256: str, phone_number_id: str, valid_until: datetime) -> Current | None:
        answer = cache.current(sha256, phone_number_id, valid_until)
        if answer is not None:
            return answer
        seen = cache.filling()
        row: Any = backend.read_one(sql, (sha256, phone_number_id))
        if row is None:
            return None
        answer = (str(row[0]), row[1], backend.time(row[2]))
        cache.put((sha256, phone_number_id), answer[2], answer, ("s:" + sha256,), seen)
        return answer if answer[2] > valid_until else None

    return current
