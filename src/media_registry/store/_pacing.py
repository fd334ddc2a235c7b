"""Upload pacing shared beyond one process: ``MEDIA_REGISTRY_UPLOADS_PER_SECOND`` holds per
phone number for every process that draws from the same slots.

- :class:`HostPacer` (SQLite registries): the processes of this user on this host, through a
  small file in the temporary folder, read and rewritten under its lock.
- :class:`FleetPacer` (PostgreSQL): the whole fleet, through a row per number in the
  ``upload_pacing`` table, moved atomically on the server's clock.

Like :class:`~media_registry.graph.pacing.UploadPacer`, a pacer never sleeps: ``reserve``
hands out the wait before the next slot, with no burst allowance.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..graph.pacing import shared_pacer

CLOCK_WENT_BACK = 3600.0  # seconds: a slot further ahead than this is from a clock set back
# The slot after the one taken, on the server's clock; the wait is until the one taken.
RESERVE = """INSERT INTO upload_pacing AS p (phone_number_id, next_start)
    VALUES (%(phone)s, clock_timestamp() + make_interval(secs => %(interval)s))
    ON CONFLICT (phone_number_id) DO UPDATE
    SET next_start = greatest(p.next_start, clock_timestamp()) + make_interval(secs => %(interval)s)
    RETURNING extract(epoch FROM p.next_start - clock_timestamp())::float8 - %(interval)s"""


class Pacer(Protocol):
    """Hands out upload slots."""

    def reserve(self, phone_number_id: str) -> float:
        """Claim the next upload slot for the number: the seconds to wait before starting."""
        ...


class FleetPacer:
    """Spaces upload starts ``1 / per_second`` apart per number across every host of a fleet."""

    def __init__(self, per_second: float, run: Callable[[Callable[[Any], Any]], Any]) -> None:
        self.interval, self._run = 1.0 / per_second, run

    def reserve(self, phone_number_id: str) -> float:
        """One statement on the server; the wait until the slot it took."""
        params = {"phone": phone_number_id, "interval": self.interval}
        wait = self._run(lambda con: con.execute(RESERVE, params).fetchone()[0])
        return max(0.0, float(wait))


class HostPacer:
    """Spaces upload starts ``1 / per_second`` apart per number across this user's processes
    on this host; within one process where the shared file cannot be used. Numbers of another
    ``scope`` (the API base: a test's local API is not Meta's) are paced apart."""

    def __init__(self, per_second: float, path: str | None = None, *, scope: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.interval, self._clock, self._scope = 1.0 / per_second, clock, "".join(scope.split())
        self.path = path or os.path.join(tempfile.gettempdir(), f"media-registry-pacing-{os.getuid()}")
        self._fallback = shared_pacer(per_second)

    def reserve(self, phone_number_id: str) -> float:
        """The slots file, locked, read and rewritten: a few system calls."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return self._fallback.reserve(phone_number_id)
        try:
            if os.fstat(fd).st_uid != os.getuid():  # another user's file: never trust its slots
                return self._fallback.reserve(phone_number_id)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._take(fd, f"{phone_number_id}@{self._scope}")
        finally:
            os.close(fd)  # and the lock with it

    def _take(self, fd: int, number: str) -> float:
        now = self._clock()
        slots: dict[str, float] = {}
        for line in os.pread(fd, 1 << 16, 0).decode("ascii", "replace").splitlines():
            key, _, at = line.partition(" ")
            try:
                slots[key] = float(at)
            except ValueError:
                continue  # a torn or foreign line: that number starts afresh
        start = max(now, slots.get(number, now))
        if start - now > CLOCK_WENT_BACK:
            start = now
        slots[number] = start + self.interval
        kept = "".join(f"{key} {at!r}\n" for key, at in slots.items() if at > now and " " not in key)
        os.ftruncate(fd, 0)
        os.pwrite(fd, kept.encode("ascii", "replace"), 0)
        return start - now
