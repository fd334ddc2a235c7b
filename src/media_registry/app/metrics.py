"""Prometheus metrics and the health check, shared by ``serve`` and ``daemon --metrics-port``.

Counters are kept by this process (requests served, passes of the schedule); the gauges of
media IDs are read from the registry at each scrape, so they hold whichever process wrote.
Every name starts with ``media_registry_``; labels carry phone number IDs, never a secret.
Needs prometheus_client (the ``serve`` extra).
"""

from __future__ import annotations

import json
import logging
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..errors import MediaRegistryError
from ..models import Report
from ..registry import AsyncMediaRegistry, MediaRegistry
from ..store.inbox import Inbox
from ..webhooks import WebhookReport

log = logging.getLogger("media_registry.health")

PREFIX = "media_registry"
ARCHIVE_MARGIN = timedelta(days=1)  # an inbound item this close to its end makes /healthz fail


class Monitor:
    """The metrics of one process and what ``/healthz`` answers."""

    def __init__(self, registry: MediaRegistry | AsyncMediaRegistry) -> None:
        self.registry = registry
        self.metrics = CollectorRegistry()
        self.uploads = Counter(f"{PREFIX}_uploads", "Uploads made to answer requests.",
                               registry=self.metrics)
        self.cache_hits = Counter(f"{PREFIX}_cache_hits", "Requests answered with a media ID "
                                  "already in the registry.", registry=self.metrics)
        self.cache_misses = Counter(f"{PREFIX}_cache_misses", "Requests that found no valid media "
                                    "ID and went on to upload.", registry=self.metrics)
        self.upload_failures = Counter(f"{PREFIX}_upload_failures", "Requests whose upload failed "
                                       "(the Graph API or the registry; not the client's input).",
                                       registry=self.metrics)
        self.refreshes = Counter(f"{PREFIX}_refreshes", "Media IDs renewed by refresh passes.",
                                 registry=self.metrics)
        self.refresh_failures = Counter(f"{PREFIX}_refresh_failures", "Media IDs that a refresh "
                                        "pass failed to renew, plus passes that failed whole.",
                                        registry=self.metrics)
        self.deletes = Counter(f"{PREFIX}_deletes", "Media IDs deleted at the Graph API.",
                               registry=self.metrics)
        self.upload_seconds = Histogram(
            f"{PREFIX}_upload_duration_seconds", "Time to answer requests that uploaded.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.metrics,
        )
        self.inbound_archived = Counter(f"{PREFIX}_inbound_archived", "Inbound media items archived.",
                                        registry=self.metrics)
        self.inbound_failures = Counter(f"{PREFIX}_inbound_failures", "Failed tries to archive an "
                                        "inbound item (retried), and items lost.", registry=self.metrics)
        self.repairs = Counter(f"{PREFIX}_send_repairs", "Media IDs invalidated because a send with "
                               "them failed with a media error.", registry=self.metrics)
        self.last_refresh_ok: float | None = None
        self.last_refresh_failures = 0
        self._lock = threading.Lock()
        self.metrics.register(_RegistryGauges(self))

    def observe_pass(self, name: str, report: Report | None) -> None:
        """Count what one pass of the schedule did (``report`` None: the pass failed whole);
        the scheduler's observer."""
        if name == "purge":
            self.deletes.inc(report.count("deleted") if report else 0)
            return
        if name == "archive":
            self.inbound_archived.inc(report.count("archived") if report else 0)
            self.inbound_failures.inc(report.count("failed") + report.count("lost") if report else 1)
            return
        failures = report.count("failed") if report else 1
        self.refreshes.inc(report.count("refreshed") if report else 0)
        self.refresh_failures.inc(failures)
        with self._lock:
            self.last_refresh_failures = failures
            if not failures:
                self.last_refresh_ok = time.time()

    def observe_webhook(self, report: WebhookReport) -> None:
        """Count the repairs one webhook delivery made."""
        self.repairs.inc(sum(1 for repair in report.repairs if repair.action == "invalidated"))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (reads the registry: call it off the event loop)."""
        return generate_latest(self.metrics)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): the registry answers, the last refresh pass had no failures, no
        media ID that refresh could renew is within ``min_validity`` of its expiry, and no
        inbound item waits with less than a day of its 7 left."""
        try:
            overdue = self.registry.overdue()
            inbox = Inbox(self.registry.store.backend).counts()
        except MediaRegistryError as exc:
            log.warning("health check: %s", exc)
            return False, _health("registry", registry_trouble(exc))
        pending = inbox.by_state["pending"] + inbox.by_state["failed"]
        if self.last_refresh_failures:
            return False, _health("refresh", f"the last refresh pass had {self.last_refresh_failures} "
                                  "failure(s); see the log", pending=pending)
        if inbox.soonest_expiry is not None and inbox.soonest_expiry - datetime.now(timezone.utc) <= ARCHIVE_MARGIN:
            return False, _health("archive", f"{pending} inbound item(s) not archived yet, one with less "
                                  "than a day of its 7 left; see `media-registry inbox` and the log",
                                  pending=pending)
        if overdue:
            return False, _health("refresh", f"{len(overdue)} media ID(s) with a readable source have "
                                  f"less than min_validity left (e.g. {overdue[0]}); refresh is not "
                                  "keeping up", pending=pending)
        return True, _health(None, None, self.last_refresh_ok, pending)


def registry_trouble(exc: MediaRegistryError) -> str:
    """What keeps the registry from answering, for a client: the error's class and what it
    means, never its message, which names the database (user, host, port, name or path); the
    caller logs that."""
    what = (type(exc).__doc__ or "").strip().splitlines()[0].rstrip(".")
    return f"{type(exc).__name__}: {what}; details in the log"


def _health(failing: str | None, reason: str | None, last_refresh: float | None = None,
            pending: int | None = None) -> dict[str, Any]:
    return {"status": "failing" if failing else "ok", "failing": failing, "reason": reason,
            "last_refresh_success": last_refresh, "inbound_pending": pending}


class _RegistryGauges(Collector):
    """Gauges read from the registry at each scrape."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        counts = self.monitor.registry.stats()
        ids = GaugeMetricFamily(f"{PREFIX}_media_ids", "Media IDs by phone number and state "
                                "(live, expiring within refresh_before, expired not yet purged).",
                                labels=["phone_number_id", "state"])
        for phone, numbers in counts["by_phone_number"].items():
            for state in ("live", "expiring", "expired"):
                ids.add_metric([phone, state], numbers[f"{state}_ids"])
        yield ids
        inbox = Inbox(self.monitor.registry.store.backend).counts()
        yield GaugeMetricFamily(f"{PREFIX}_inbound_pending", "Inbound media items not archived yet.",
                                value=inbox.by_state["pending"] + inbox.by_state["failed"])
        oldest = inbox.oldest_waiting
        yield GaugeMetricFamily(f"{PREFIX}_inbound_oldest_pending_seconds", "Age of the oldest inbound "
                                "item not archived yet (0: none).",
                                value=(datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0)
        yield GaugeMetricFamily(f"{PREFIX}_pending_deletes", "Media IDs owing a remote DELETE.",
                                value=counts["pending_deletes"])
        yield GaugeMetricFamily(f"{PREFIX}_overdue_ids", "Media IDs that refresh could renew (a "
                                "source still holds the content) with less than min_validity "
                                "left: refresh is not keeping up.",
                                value=len(self.monitor.registry.overdue()))
        last = self.monitor.last_refresh_ok
        yield GaugeMetricFamily(f"{PREFIX}_last_refresh_success_timestamp_seconds",
                                "When the last refresh pass without failures ended (Unix time; "
                                "0: none yet in this process).", value=last or 0)


# -- the daemon's own endpoint (wsgiref: the daemon has no web framework) -----------------

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def wsgi_app(monitor: Monitor) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """``/metrics`` and ``/healthz`` as a WSGI application."""
    # The registry keeps a connection per thread: its reads run on one lasting thread, not on
    # the thread of each connection.
    reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="media-registry-metrics-reads")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            try:
                body = reads.submit(monitor.exposition).result()
            except MediaRegistryError as exc:  # the registry is out of reach: say so, in one line
                log.warning("metrics: %s", exc)
                start_response("503 Service Unavailable", [("Content-Type", "application/json")])
                return [json.dumps({"error": {"type": type(exc).__name__,
                                              "message": registry_trouble(exc)}}).encode()]
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            healthy, health = reads.submit(monitor.health).result()
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(health).encode()]
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [json.dumps({"error": {"type": "NotFound", "message": f"{path}: no such endpoint; "
                                      "try /metrics or /healthz"}}).encode()]

    return app


class _QuietHandler(WSGIRequestHandler):
    # A client that stops sending gives up its thread after this long.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Scrapes every few seconds would drown the daemon's own log."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection: a client that never finishes its request holds only its own."""

    daemon_threads = True  # nor does it hold up the daemon's exit
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went silent or away is not the daemon's error: no traceback for it."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def serve_in_background(monitor: Monitor, port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve :func:`wsgi_app` on ``host:port`` from a daemon thread, each connection in a thread
    of its own; ``shutdown()`` stops it."""
    server = make_server(host, port, wsgi_app(monitor), server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="media-registry-metrics").start()
    return server
