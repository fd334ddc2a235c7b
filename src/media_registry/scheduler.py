"""The daemon: refresh and purge on a schedule (APScheduler 3.x), one daemon per registry
(per host of a PostgreSQL registry: each host refreshes and checks its own files).

A first pass of each job runs at start. SIGTERM or SIGINT stops it gracefully: the uploads
in flight finish and are recorded, no new one starts, and the process exits 0.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from .dburl import PostgresURL
from .errors import MediaRegistryError, RegistryLocked
from .models import LifecycleAction, Report
from .registry import MediaRegistry

log = logging.getLogger("media_registry.daemon")


def run_daemon(registry: MediaRegistry) -> None:
    """Run refresh and purge every ``refresh_interval`` / ``purge_interval`` until a signal.

    Raises RegistryLocked if another daemon already serves this registry (or this host).
    """
    settings = registry.settings
    with _only_daemon(registry):
        scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        start = datetime.now(timezone.utc)
        jobs: dict[str, tuple[Callable[..., Report], Any]] = {
            "refresh": (registry.refresh_expiring, settings.refresh_interval),
            "purge": (registry.purge, settings.purge_interval),
        }
        for name, (job, interval) in jobs.items():
            scheduler.add_job(
                _run_job, "interval", args=(name, job), seconds=interval.total_seconds(),
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


def _run_job(name: str, job: Callable[..., Report]) -> None:
    """One tick: log each action; an error (API down, registry busy) is logged, never fatal."""
    try:
        report = job(on_action=_log_action)
    except MediaRegistryError as exc:
        log.error("%s failed: %s; retrying at the next tick", name, exc)
        return
    counts = {a.action: report.count(a.action) for a in report.actions}
    log.info("%s done: %s", name, ", ".join(f"{n} {a}" for a, n in counts.items()) or "nothing to do")


def _log_action(action: LifecycleAction) -> None:
    level = logging.WARNING if action.action in ("failed", "pending") else logging.INFO
    log.log(level, action.describe())


@contextmanager
def _only_daemon(registry: MediaRegistry) -> Iterator[None]:
    """Hold an exclusive lock for as long as the daemon runs: beside an SQLite registry, or
    this host's advisory lock in a PostgreSQL one.

    flock is released by the kernel when the process dies, so a killed daemon never blocks
    the next one.
    """
    db = registry.settings.db
    if isinstance(db, PostgresURL):
        from .pgstore import PostgresStore

        assert isinstance(registry.store, PostgresStore)
        with registry.store.daemon_lock():
            yield
        return
    lock_path = db.with_name(db.name + ".daemon-lock")
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise RegistryLocked(
                f"another media-registry daemon (pid {holder}) already serves {db}; "
                "stop it first, or run this one on another registry"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield
