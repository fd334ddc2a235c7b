"""PostgreSQL's side of the local cache (:mod:`._local`): one listener connection per process,
PostgREST's schema-cache listener the model.

The registry's triggers (migration "local cache and upload pacing") notify :data:`CHANNEL` in
the transaction of every change that can make a served answer wrong, with the key it touched.
The listener hands each notification to the cache, and proves itself alive with a round trip
on its own connection every :data:`~._local.PROOF_EVERY` seconds: a connection that died
silently stops memory from serving within :data:`~._local.WINDOW`. A lost connection empties
the cache; the listener reconnects (with a growing pause) and memory fills again from the
database.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..dburl import PostgresURL
from ._local import PROOF_EVERY, LocalCache
from ._pg_pool import CONNECTION_KWARGS

CHANNEL = "media_registry"
APPLICATION = "media-registry listener"  # its sessions' application_name (pg_stat_activity)
LONGEST_PAUSE = 1.0  # seconds between attempts while the server is away


class Listener:
    """Keeps ``cache`` true from notifications on a connection ``connect`` makes."""

    def __init__(self, cache: LocalCache, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self.cache, self.connect = cache, connect
        self._stop = threading.Event()
        cache.start = self.start  # the cache starts it with its second fill

    def start(self) -> None:
        """Listen from a daemon thread of this process."""
        if self._stop.is_set():
            return
        threading.Thread(target=self._run, name=APPLICATION, daemon=True).start()

    def stop(self) -> None:
        """Stop listening (within a proof's interval) and serve nothing more from memory."""
        self._stop.set()
        self.cache.lost()

    def _run(self) -> None:
        pause = PROOF_EVERY
        while not self._stop.is_set():
            try:
                self._listen()
                pause = PROOF_EVERY
            except (psycopg.Error, OSError):
                pause = min(pause * 2, LONGEST_PAUSE)
            self.cache.lost()
            self._stop.wait(pause)

    def _listen(self) -> None:
        with self.connect() as con:
            con.add_notify_handler(lambda notification: self.cache.notice(notification.payload))
            con.execute(f"LISTEN {CHANNEL}")
            self.cache.lost()  # what was filled before the LISTEN may have missed a change
            while not self._stop.is_set():
                sent = time.monotonic()
                con.execute("SELECT 1")  # every notification that came first is handled before it returns
                self.cache.proven(sent)
                select.select([con.fileno()], [], [], PROOF_EVERY)  # woken early by a notification


def keep_true(url: PostgresURL, size: int) -> tuple[LocalCache | None, Callable[[], None]]:
    """A local cache of ``size`` answers (None for 0) kept true by a listener on ``url``'s
    server, and how to stop it."""
    if not size:
        return None, lambda: None
    cache = LocalCache(size)
    options = {**CONNECTION_KWARGS, "application_name": APPLICATION}
    listener = Listener(cache, lambda: psycopg.connect(url.secret(), **options))
    return cache, listener.stop
