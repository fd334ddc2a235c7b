"""The command line's cache hit, without loading the full settings.

A shell script, cron job or PHP/Node app that runs ``media-registry upload FILE`` pays the
process's start-up on every call. A cache hit needs only the registry file, the phone number
ID and ``min_validity``: those are read here from the environment with the standard library,
and the hit is answered by the same store query the registry uses (one ``stat``, one indexed
query). Anything unusual (a setting this module does not parse, a per-number TTL, a missing
registry, a miss, a value the full settings might refuse) returns None, and the caller takes
the full path, which validates every setting with pydantic-settings and reports errors the
usual way: the hit is never served under settings every other command refuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from .. import hashing
from ..dburl import is_postgres_url, refuse_other_url
from ..errors import MediaRegistryError
from ..setting_checks import (
    DURATIONS,
    PHONE_NUMBER_ID,
    RANGES,
    check_host_id,
    check_phone_number_id,
    check_positive_duration,
    check_revalidate,
    check_token,
    plain_seconds,
)
from ..store import BUSY_TIMEOUT_SECONDS, Store, open_store

DEFAULT_DB = "media-registry.db"
PREFIXES = ("MEDIA_REGISTRY_", "WHATSAPP_")
# Variables of these prefixes that are no setting, which the full settings ignore too.
NOT_SETTINGS = frozenset({"MEDIA_REGISTRY_MIGRATE_TO"})
# An API base the full settings surely accept: https to a plain host name, or http to loopback.
_LABEL = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"
PLAIN_API_BASE = re.compile(rf"(https://{_LABEL}(\.{_LABEL})*|http://(127\.0\.0\.1|localhost|\[::1\]))"
                            r"(:(?P<port>[1-9][0-9]{0,4}))?(/[A-Za-z0-9._~-]+)*/?")


class HitSettings(NamedTuple):
    """What a cache hit reads: where the registry is, for which number, how long an ID must last."""

    db: Path
    phone_number_id: str
    min_validity: timedelta
    busy_timeout: float


def hit_settings(environ: Mapping[str, str], db: str | None, phone_number_id: str | None) -> HitSettings | None:
    """The hit's settings from the environment and the command's flags, or None when any
    setting given is one this module cannot tell, with setting_checks, that the full
    Settings validation accepts."""
    given = {name: text for name, text in environ.items()
             if name.upper().startswith(PREFIXES) and name not in NOT_SETTINGS}
    if any(name != name.upper() for name in given):
        return None  # lower-case names: pydantic-settings reads those
    durations = _durations(given)
    phone = phone_number_id or given.get("WHATSAPP_PHONE_NUMBER_ID") or ""
    busy_timeout = given.get("MEDIA_REGISTRY_BUSY_TIMEOUT", str(BUSY_TIMEOUT_SECONDS))
    if (durations is None or not PHONE_NUMBER_ID.fullmatch(phone)
            or not all(_plainly_valid(name, text) for name, text in given.items())):
        return None  # missing, out of range or unusual: the full path says what is wrong
    path = Path(db if db is not None else given.get("MEDIA_REGISTRY_DB", DEFAULT_DB))
    return HitSettings(path, phone, durations["min_validity"], float(busy_timeout))


def _durations(given: Mapping[str, str]) -> dict[str, timedelta] | None:
    """Every duration setting, if each is plain seconds the full settings accept, else None."""
    durations = dict(DURATIONS)
    for name in DURATIONS:
        text = given.get(f"MEDIA_REGISTRY_{name.upper()}")
        value = durations[name] if text is None else plain_seconds(text)
        check = check_revalidate if name == "url_revalidate" else check_positive_duration
        try:
            if value is None:
                return None  # ISO 8601, or a fraction of a microsecond: the full path reads it
            durations[name] = check(value)
        except ValueError:
            return None
    passes = max(durations["refresh_interval"], durations["purge_interval"])
    ttl = durations["ttl"]
    if not (durations["min_validity"] < ttl and durations["refresh_before"] < ttl
            and durations["host_retention"] > passes):
        return None
    return durations


def _plainly_valid(name: str, text: str) -> bool:
    """Whether a setting other than a duration is one the full settings accept (any doubt: False)."""
    field = name.removeprefix("MEDIA_REGISTRY_").lower()
    try:
        if field in DURATIONS:
            return True  # checked by _durations
        if field in RANGES:
            return RANGES[field].accepts(text)
        if name == "WHATSAPP_API_BASE":
            api_base = PLAIN_API_BASE.fullmatch(text)
            return api_base is not None and int(api_base["port"] or 443) <= 65535
        return name in _TEXT_CHECKS and _TEXT_CHECKS[name](text) is not None
    except ValueError:
        return False


def _check_file_db(text: str) -> str:
    """``text``, naming an SQLite file; ValueError for a URL (a PostgreSQL registry is the full
    path's) or a libpq keyword string."""
    refuse_other_url(text)
    if is_postgres_url(text) or not text:
        raise ValueError("not a plain file name")
    return text


# The settings given as text that the hit checks as the full settings do; any other (a user
# agent, media hosts, per-number TTLs) takes the full path.
_TEXT_CHECKS: dict[str, Callable[[str], object]] = {
    "WHATSAPP_TOKEN": check_token, "WHATSAPP_PHONE_NUMBER_ID": check_phone_number_id,
    "MEDIA_REGISTRY_HOST_ID": check_host_id, "MEDIA_REGISTRY_DB": _check_file_db,
    "MEDIA_REGISTRY_SERVICE_TOKEN": str}


class CacheHits:
    """Serves cache hits from one registry file until closed; :meth:`media_id` says None on a miss."""

    def __init__(self, settings: HitSettings) -> None:
        self._settings = settings
        self._valid_until = datetime.now(timezone.utc) + settings.min_validity
        self._store: Store | None = None

    def media_id(self, path: str) -> str | None:
        """The current media ID of an unchanged, registered file, or None (use the registry)."""
        try:
            if self._store is None:
                if not self._settings.db.is_file():
                    return None  # creating a registry is the full path's job
                self._store = open_store(self._settings.db, create=False,
                                         busy_timeout=self._settings.busy_timeout)
            fp = hashing.fingerprint(path)
            hit = self._store.lookup_path(fp, self._settings.phone_number_id, self._valid_until)
        except MediaRegistryError:
            return None  # the full path raises it again, with the registry's own wording
        if hit is None or hashing.racily_clean(fp, hit.recorded_at):
            return None  # new, changed, or to be hashed again: the registry's job
        return hit.media_id

    def close(self) -> None:
        """Close the registry file, if it was opened."""
        if self._store is not None:
            self._store.close()

