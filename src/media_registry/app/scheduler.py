"""The daemon: refresh, purge and the archive worker on a schedule (APScheduler 3.x), one
daemon per registry (per host of a PostgreSQL registry: each host refreshes and checks its
own files; the archive's items are claimed, so each is archived by one host).

A first pass of each job runs at start. SIGTERM or SIGINT stops it gracefully: the uploads
in flight finish and are recorded, no new one starts, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ..defaults import ARCHIVE_POLL
from ..errors import MediaRegistryError
from ..models import LifecycleAction, Report
from ..registry import AsyncMediaRegistry, MediaRegistry
from ..rules.effects import adrive

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
                       observe: Observer | None = None, wake: asyncio.Event | None = None) -> None:
    """The daemon's schedule on an event loop (``serve`` runs it beside its requests, on the
    same registry): a pass of each job at once, then one every interval, until ``stopping``
    is set; a pass running then finishes (the caller also calls ``registry.stop()``).
    ``wake`` starts an archive pass at once (webhook items arrived). The caller holds
    :func:`only_daemon`."""

    async def every(name: str, job: Callable[..., Awaitable[Report]], interval: timedelta) -> None:
        while not stopping.is_set():
            try:
                report: Report | None = await job(on_action=_log_action)
            except MediaRegistryError as exc:
                report = None
                log.error("%s failed: %s; retrying at the next tick", name, exc)
            _ended(name, report, observe)
            await _pause([stopping, *([wake] if wake is not None and name == "archive" else [])],
                         interval.total_seconds())

    await asyncio.gather(*(every(name, job, interval) for name, (job, interval) in _jobs(registry).items()))


async def _pause(events: list[asyncio.Event], seconds: float) -> None:
    """Wait ``seconds``, or until one of ``events`` is set; a wake-up is cleared once seen."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    for event in events[1:]:
        event.clear()


def _jobs(registry: MediaRegistry | AsyncMediaRegistry) -> dict[str, tuple[Callable[..., Any], timedelta]]:
    settings = registry.settings
    archive = registry.archive_pending if isinstance(registry, MediaRegistry) else functools.partial(
        registry.archiving.arun_pass, functools.partial(adrive, env=registry))
    return {"refresh": (registry.refresh_expiring, settings.refresh_interval),
            "purge": (registry.purge, settings.purge_interval),
            "archive": (archive, timedelta(seconds=ARCHIVE_POLL))}


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
    if report is not None and (report.actions or name != "archive"):  # an idle archive pass: every few seconds
        counts = {a.action: report.count(a.action) for a in report.actions}
        log.info("%s done: %s", name, ", ".join(f"{n} {a}" for a, n in counts.items()) or "nothing to do")


def _log_action(action: LifecycleAction) -> None:
    level = logging.WARNING if action.action in ("failed", "pending", "lost") else logging.INFO
    log.log(level, action.describe())


@contextmanager
def only_daemon(registry: MediaRegistry | AsyncMediaRegistry) -> Iterator[None]:
    """Hold the daemon's lock for as long as the daemon (or the service running its schedule)
    runs: one per SQLite registry; one per host of a PostgreSQL one."""
    with registry.store.backend.daemon_lock():
        yield
