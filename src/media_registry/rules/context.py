"""What every rule of a registry shares: settings, store, clock, windows, pacer, helpers."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import SecretStr
from typing_extensions import TypedDict

from ..config import Settings, Windows, load_settings
from ..dburl import PostgresURL
from ..errors import ConfigError
from ..store import Cutoffs, Store, open_store
from ..store._pacing import Pacer
from ..store.handles import HandleStore
from .effects import Clock

PathArg = str | os.PathLike[str]
K = TypeVar("K")
ONE_SECOND = timedelta(seconds=1)


class SettingsArgs(TypedDict, total=False):
    """The settings a registry takes as keyword arguments besides ``db``, ``token`` and
    ``phone_number_id`` (see :class:`~media_registry.config.Settings`); None keeps the
    environment's value."""

    api_base: str | None
    blob_dir: PathArg | Path | None
    ttl: timedelta | float | None
    ttl_by_phone_number: dict[str, timedelta] | None
    min_validity: timedelta | float | None
    refresh_before: timedelta | float | None
    user_agent: str | None
    download_user_agent: str | None
    timeout: float | None
    download_deadline: float | None
    max_retries: int | None
    retry_backoff: float | None
    media_hosts: tuple[str, ...] | None
    refresh_concurrency: int | None
    refresh_interval: timedelta | float | None
    purge_interval: timedelta | float | None
    busy_timeout: float | None
    lease_seconds: float | None
    service_token: SecretStr | str | None
    uploads_per_second: float | None
    url_revalidate: timedelta | float | None
    repair_window: timedelta | float | None
    url_ignore_query: tuple[str, ...] | None
    pg_pool_size: int | None
    host_id: str | None
    host_retention: timedelta | float | None
    app_secret: SecretStr | str | None
    webhook_verify_token: SecretStr | str | None
    archive: str | None
    s3_endpoint_url: str | None
    s3_checksum: str | None
    repair_codes: tuple[int, ...] | None
    sent_retention: timedelta | float | None
    app_id: str | None
    handle_ttl: timedelta | float | None
    local_cache_size: int | None


class GraphOptions(TypedDict):
    """What the Graph clients take from the settings."""

    token: str | None
    api_base: str
    user_agent: str
    download_user_agent: str
    timeout: float
    download_deadline: float
    max_retries: int
    backoff: float
    media_host_suffixes: tuple[str, ...]


def graph_options(settings: Settings) -> GraphOptions:
    """The Graph client's options from the settings."""
    return GraphOptions(
        token=settings.token.get_secret_value() if settings.token else None,
        api_base=settings.api_base, user_agent=settings.user_agent,
        download_user_agent=settings.download_user_agent, timeout=settings.timeout,
        download_deadline=settings.download_deadline, max_retries=settings.max_retries,
        backoff=settings.retry_backoff, media_host_suffixes=settings.media_hosts)


class FetcherOptions(TypedDict):
    """What the URL-source fetchers take from the settings."""

    ignore_query: tuple[str, ...]
    timeout: float
    deadline: float
    user_agent: str


def fetcher_options(settings: Settings) -> FetcherOptions:
    """The URL-source fetcher's options from the settings."""
    return FetcherOptions(ignore_query=settings.url_ignore_query, timeout=settings.timeout,
                          deadline=settings.download_deadline, user_agent=settings.user_agent)


def open_context(settings: Settings | None, given: dict[str, object], clock: Clock,
                 create: bool) -> Context:
    """The context of a new registry: ``settings``, or the environment's with the ``given``
    arguments over it (not both), and its store (``create=False``, for read-only use, never
    creates a registry; an older one is upgraded)."""
    if settings is None:
        settings = load_settings(**given)
    elif any(value is not None for value in given.values()):
        named = ", ".join(sorted(name for name, value in given.items() if value is not None))
        raise ConfigError(f"pass settings= or individual settings ({named}), not both")
    store = open_store(settings.db, create=create, busy_timeout=settings.busy_timeout,
                       host_id=settings.host_id, pool_size=settings.pg_pool_size,
                       host_retention=settings.host_retention, local_cache=settings.local_cache_size)
    return Context(settings, store, clock)


class Context:
    """The state the rules share, made once per registry. ``store`` may be swapped (tests
    record its calls): every rule reads it from here."""

    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.lease_for = timedelta(seconds=settings.lease_seconds)
        self.stopping = threading.Event()
        # Shared beyond this process: by the host, or by the fleet.
        self.pacer: Pacer = store.backend.pacer(settings.uploads_per_second, settings.api_base)
        self.in_postgres = isinstance(settings.db, PostgresURL)
        self._handles: tuple[Store, HandleStore] | None = None
        self._windows_by_phone: dict[str, Windows] = {}
        # Per validity and per number: the second a moment was worked out for, and the moment.
        self._valid_until_cache: dict[timedelta, tuple[datetime, datetime, datetime]] = {}
        self._min_valid_cache: dict[str, tuple[datetime, datetime, datetime]] = {}

    @property
    def handles(self) -> HandleStore:
        """The template header handles of the store (made again if the store was swapped)."""
        if self._handles is None or self._handles[0] is not self.store:
            self._handles = (self.store, HandleStore(self.store.backend))
        return self._handles[1]

    def phone(self, phone_number_id: str | None) -> str:
        """The number to upload for: the one given, else the configured one."""
        phone = phone_number_id or self.settings.phone_number_id
        if not phone:
            raise ConfigError(
                "no phone number ID: set WHATSAPP_PHONE_NUMBER_ID or pass phone_number_id="
            )
        return phone

    def windows(self, phone: str) -> Windows:
        """The TTL and validity windows of one number, worked out once."""
        windows = self._windows_by_phone.get(phone)
        if windows is None:
            windows = self._windows_by_phone[phone] = self.settings.windows(phone)
        return windows

    def cutoffs(self, now: datetime, window: Literal["refresh_before", "min_validity"]) -> Cutoffs:
        """``now`` plus that window, per number: "expiring" (refresh_before) means the same to
        refresh and stats, and a number with its own TTL has its own, narrower, window."""
        by_phone = tuple((phone, now + getattr(self.windows(phone), window))
                         for phone in sorted(self.settings.ttl_by_phone_number))
        return Cutoffs(now + getattr(self.settings, window), by_phone)

    def valid_until(self, validity: timedelta) -> datetime:
        """``now + validity``, computed once per second: this is on every URL cache hit."""
        now = self.clock()
        cached = self._valid_until_cache.get(validity)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        return _remember(self._valid_until_cache, validity, now, validity)

    def min_valid_until(self, phone: str) -> datetime:
        """The expiry an ID served now for ``phone`` must be beyond, computed once per second
        and number: this is on every cache hit."""
        now = self.clock()
        cached = self._min_valid_cache.get(phone)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        return _remember(self._min_valid_cache, phone, now, self.windows(phone).min_validity)


def _remember(cache: dict[K, tuple[datetime, datetime, datetime]], key: K, now: datetime,
              validity: timedelta) -> datetime:
    """The end of ``now``'s second plus ``validity`` (never less strict than the exact time
    would be), kept in ``cache`` for the rest of that second."""
    second = datetime.fromtimestamp(int(now.timestamp()), timezone.utc)
    end = second + ONE_SECOND
    cache[key] = (second, end, end + validity)
    return end + validity


def wall_clock() -> datetime:
    """The real time, whatever clock the registry runs on: a fingerprint's recording time is
    compared with the file's own timestamps (the racily-clean rule)."""
    return datetime.now(timezone.utc)
