"""What every part of a registry shares: settings, store, Graph client, clock, windows."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar

import httpx

from ._flows import Clock, utc_now
from .config import Settings, Windows, load_settings
from .errors import ConfigError, InputError
from .pacing import shared_pacer
from .store import Cutoffs, Store, open_store

C = TypeVar("C", bound="RegistryCore")


class RegistryCore:
    """Settings, store and the helpers the rules share. Subclasses name their Graph client
    (``_client``); the concerns (sending, lifecycle, inbound, reading) are mixins on it."""

    _client: Any  # the Graph client class: GraphClient or AsyncGraphClient

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        phone_number_id: str | None = None,
        settings: Settings | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        clock: Clock = utc_now,
        create: bool = True,
        **overrides: Any,
    ) -> None:
        given = {"db": db, "token": token, "phone_number_id": phone_number_id, **overrides}
        if settings is None:
            settings = load_settings(**given)
        elif any(value is not None for value in given.values()):
            named = ", ".join(sorted(name for name, value in given.items() if value is not None))
            raise ConfigError(f"pass settings= or individual settings ({named}), not both")
        self.settings = settings
        self._clock = clock
        # create=False (read-only use) never creates a registry; an older one is upgraded.
        self.store: Store = open_store(
            self.settings.db, create=create, busy_timeout=self.settings.busy_timeout,
            host_id=self.settings.host_id, pool_size=self.settings.pg_pool_size,
            host_retention=self.settings.host_retention,
        )
        self._lease_for = timedelta(seconds=self.settings.lease_seconds)
        self._stopping = threading.Event()
        self._windows_by_phone: dict[str, Windows] = {}
        self._valid_until_cache: dict[timedelta, tuple[int, datetime]] = {}
        self.graph = self._client(transport=transport, **self._graph_options())
        self._pacer = shared_pacer(self.settings.uploads_per_second)

    @classmethod
    def from_env(cls: type[C], **overrides: Any) -> C:
        """A registry configured from the environment; keyword arguments override it."""
        return cls(**overrides)

    def _graph_options(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "token": settings.token.get_secret_value() if settings.token else None,
            "api_base": settings.api_base,
            "user_agent": settings.user_agent,
            "download_user_agent": settings.download_user_agent,
            "timeout": settings.timeout,
            "download_deadline": settings.download_deadline,
            "max_retries": settings.max_retries,
            "backoff": settings.retry_backoff,
            "media_host_suffixes": settings.media_hosts,
        }

    def stop(self) -> None:
        """Ask a running refresh to finish its current uploads and start no new ones."""
        self._stopping.set()

    def _phone(self, phone_number_id: str | None) -> str:
        """The number to upload for: the one given, else the configured one."""
        phone = phone_number_id or self.settings.phone_number_id
        if not phone:
            raise ConfigError(
                "no phone number ID: set WHATSAPP_PHONE_NUMBER_ID or pass phone_number_id="
            )
        return phone

    def _windows(self, phone: str) -> Windows:
        """The TTL and validity windows of one number, worked out once."""
        windows = self._windows_by_phone.get(phone)
        if windows is None:
            windows = self._windows_by_phone[phone] = self.settings.windows(phone)
        return windows

    def _cutoffs(self, now: datetime, window: Literal["refresh_before", "min_validity"]) -> Cutoffs:
        """``now`` plus that window, per number: "expiring" (refresh_before) means the same to
        refresh and stats, and a number with its own TTL has its own, narrower, window."""
        by_phone = tuple((phone, now + getattr(self._windows(phone), window))
                         for phone in sorted(self.settings.ttl_by_phone_number))
        return Cutoffs(now + getattr(self.settings, window), by_phone)

    def _valid_until(self, validity: timedelta) -> datetime:
        """``now + validity``, computed once per second: this is on every cache hit."""
        now: datetime = self._clock()
        second = int(now.timestamp())
        cached = self._valid_until_cache.get(validity)
        if cached is not None and cached[0] == second:
            return cached[1]
        # The end of the current second: never less strict than the exact time would be.
        moment = datetime.fromtimestamp(second + 1, timezone.utc) + validity
        self._valid_until_cache[validity] = (second, moment)
        return moment

    def resolve(self, target: str | os.PathLike[str]) -> str | None:
        """The sha256 that ``target`` names, or None: a path the registry has seen, an exact
        media ID, an exact sha256, or a unique sha256 prefix of at least 8 hex digits, tried in
        that order. An ambiguous prefix raises InputError listing the candidates."""
        text = os.fspath(target)
        sha256 = self.store.resolve(text)
        if sha256 is not None or len(text) < 8 or not all(c in "0123456789abcdefABCDEF" for c in text):
            return sha256
        candidates = self.store.sha256s_starting_with(text.lower(), limit=4)
        if len(candidates) > 1:
            listed = ", ".join(candidates[:3]) + (", ..." if len(candidates) > 3 else "")
            raise InputError(f"{text}: more than one content's sha256 starts with it ({listed}); "
                             "give more digits")
        return candidates[0] if candidates else None
