"""The daemon: refresh and purge on a schedule (APScheduler 3.x), one daemon per registry
(per host of a PostgreSQL registry: each host refreshes and checks its own files).

A first pass of each job runs at start. SIGTERM or SIGINT stops it gracefully: the uploads
in flight finish and are recorded, no new one starts, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import re
import signal
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ..dburl import PostgresURL
from ..errors import MediaRegistryError, RegistryError, RegistryLocked
from ..models import LifecycleAction, Report
from ..registry import AsyncMediaRegistry, MediaRegistry

log = logging.getLogger("media_registry.daemon")

Observer = Callable[[str, Report | None], None]
"""Told of each finished pass: the job's name and its report (None when the pass failed)."""


def run_daemon(registry: MediaRegistry, observe: Observer | None = None) -> None:
    """Run refresh and purge every ``refresh_interval`` / ``purge_interval`` until a signal.

    Raises RegistryLocked if another daemon already serves this registry.
    """
    settings = registry.settings
    with only_daemon(registry):
        scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        start = datetime.now(timezone.utc)
        for name, (job, interval) in _jobs(registry).items():
            scheduler.add_job(
                _run_job, "interval", args=(name, job, observe), seconds=interval.total_seconds(),
                id=name, name=name, next_run_time=start,
            )
        # The handler only records the signal: one that arrives before the scheduler runs
        # must stop it as surely as one that arrives later.
        stopping = threading.Event()

        def stop(signum: int, _frame: Any) -> None:
            log.info("%s received: finishing the uploads in flight, then stopping",
                     signal.Signals(signum).name)
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        scheduler.start()
        log.info("daemon started on %s: refresh every %s, purge every %s",
                 settings.db, settings.refresh_interval, settings.purge_interval)
        stopping.wait()
        registry.stop()
        scheduler.shutdown(wait=True)  # returns once the running jobs have ended
        log.info("daemon stopped")


async def run_schedule(registry: AsyncMediaRegistry, stopping: asyncio.Event,
                       observe: Observer | None = None) -> None:
    """The daemon's schedule on an event loop (``serve`` runs it beside its requests, on the
    same registry): a pass of each job at once, then one every interval, until ``stopping``
    is set; a pass running then finishes (the caller also calls ``registry.stop()``).
    The caller holds :func:`only_daemon`."""

    async def every(name: str, job: Callable[..., Awaitable[Report]], interval: timedelta) -> None:
        while not stopping.is_set():
            try:
                report: Report | None = await job(on_action=_log_action)
            except MediaRegistryError as exc:
                report = None
                log.error("%s failed: %s; retrying at the next tick", name, exc)
            _ended(name, report, observe)
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval.total_seconds())

    await asyncio.gather(*(every(name, job, interval) for name, (job, interval) in _jobs(registry).items()))


def _jobs(registry: MediaRegistry | AsyncMediaRegistry) -> dict[str, tuple[Callable[..., Any], timedelta]]:
    settings = registry.settings
    return {"refresh": (registry.refresh_expiring, settings.refresh_interval),
            "purge": (registry.purge, settings.purge_interval)}


def _run_job(name: str, job: Callable[..., Report], observe: Observer | None) -> None:
    """One tick: log each action; an error (API down, registry busy) is logged, never fatal."""
    try:
        report: Report | None = job(on_action=_log_action)
    except MediaRegistryError as exc:
        report = None
        log.error("%s failed: %s; retrying at the next tick", name, exc)
    _ended(name, report, observe)


def _ended(name: str, report: Report | None, observe: Observer | None) -> None:
    if observe is not None:
        observe(name, report)
    if report is not None:
        counts = {a.action: report.count(a.action) for a in report.actions}
        log.info("%s done: %s", name, ", ".join(f"{n} {a}" for a, n in counts.items()) or "nothing to do")


def _log_action(action: LifecycleAction) -> None:
    level = logging.WARNING if action.action in ("failed", "pending") else logging.INFO
    log.log(level, action.describe())


@contextmanager
def only_daemon(registry: MediaRegistry | AsyncMediaRegistry) -> Iterator[None]:
    """Hold the daemon's lock for as long as the daemon (or the service running its schedule)
    runs: one per SQLite registry; one per host of a PostgreSQL one (an advisory lock held on
    a session of its own, which a killed daemon's death frees)."""
    db = registry.settings.db
    if not isinstance(db, PostgresURL):
        with _lock_beside(db):
            yield
        return
    from ..pgstore import PostgresStore

    assert isinstance(registry.store, PostgresStore)
    with registry.store.daemon_lock():
        yield


@contextmanager
def _lock_beside(db: Path) -> Iterator[None]:
    """Hold the daemon's lock on the SQLite registry: an exclusive flock on the registry file
    itself, so that any name of it (a symlink, a hard link) finds the same lock, and one on a
    file beside it that holds the daemon's PID for the message of the next one.

    flock is released by the kernel when the process dies, so a killed daemon never blocks
    the next one.
    """
    registry = db.resolve()
    handle = _open_lock(registry.with_name(registry.name + ".daemon-lock"))
    try:
        if not _flock(handle):
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RegistryLocked(f"another media-registry daemon (pid {holder}) already serves "
                                 f"{db}; stop it first, or run this one on another registry")
        # Never closed: closing any descriptor of the registry file would drop the POSIX locks
        # SQLite holds on it in this process (flock and POSIX locks do not meet on Linux).
        file = os.open(registry, os.O_RDONLY)
        if not _flock(file):
            raise RegistryLocked(f"another media-registry daemon already serves {db} under another "
                                 "name (a hard link); stop it first, or run this one on another registry")
        os.ftruncate(handle, 0)
        os.pwrite(handle, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
    finally:
        os.close(handle)


def _flock(handle: int) -> bool:
    """Take an exclusive flock on ``handle`` unless another holds one: whether it was taken."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_lock(path: Path) -> int:
    """Open (or create) the daemon's lock file without following a symlink, and only if it is
    one a daemon wrote: a regular file of one link holding at most a PID. Anything else placed
    there is refused and left exactly as it was."""
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        what = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise RegistryError(
            f"{path}: {what}, not a daemon lock; remove it, then start the daemon again"
        ) from None
    facts = os.fstat(handle)
    if not (stat.S_ISREG(facts.st_mode) and facts.st_nlink == 1 and facts.st_size <= 32
            and re.fullmatch(rb"\d*\s*", os.pread(handle, 32, 0))):
        os.close(handle)
        raise RegistryError(
            f"{path}: holds something other than a daemon lock; remove it, then start the "
            "daemon again"
        )
    return handle
