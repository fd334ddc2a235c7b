"""Upload pacing: at most N uploads per second per phone number, across threads and tasks.

Meta rate-limits uploads per phone number (business solution providers document about 25 a
second). A bulk upload or a refresh of a large registry would otherwise run into 429s and
spend its time backing off. :class:`UploadPacer` hands out start times spaced ``1 / rate``
apart for each number; it never sleeps itself, so the sync registry sleeps and the async one
awaits ``asyncio.sleep`` for the wait it is given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class UploadPacer:
    """Spaces upload starts ``1 / per_second`` seconds apart for each phone number.

    Thread-safe: one pacer serves every thread and asyncio task of a process. There is no
    burst allowance, so the rate holds over any window, however short.
    """

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._next_start: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, phone_number_id: str) -> float:
        """Claim the next upload slot for ``phone_number_id``: the seconds to wait before
        starting the upload (0.0 when it may start now)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_start.get(phone_number_id, now))
            self._next_start[phone_number_id] = start + self.interval
        return start - now


_SHARED: dict[float, UploadPacer] = {}
_SHARED_LOCK = threading.Lock()


def shared_pacer(per_second: float) -> UploadPacer:
    """The process-wide pacer for that rate: every registry of a process that uploads for a
    number draws from the same slots."""
    with _SHARED_LOCK:
        pacer = _SHARED.get(per_second)
        if pacer is None:
            pacer = _SHARED[per_second] = UploadPacer(per_second)
        return pacer
