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
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from . import hashing
from .errors import MediaRegistryError
from .store import BUSY_TIMEOUT_SECONDS, Store, open_store

DEFAULT_DB = "media-registry.db"
# Each duration read here, with its default and the most the full settings accept (seconds).
DURATIONS = {"MEDIA_REGISTRY_TTL": ("2592000", 36500 * 86400.0),
             "MEDIA_REGISTRY_MIN_VALIDITY": ("86400", 36500 * 86400.0),
             "MEDIA_REGISTRY_BUSY_TIMEOUT": (str(BUSY_TIMEOUT_SECONDS), 86400.0)}
PREFIXES = ("MEDIA_REGISTRY_", "WHATSAPP_")
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
    """The hit's settings from the environment and the command's flags, or None when any of
    them is unusual enough to need the full Settings validation."""
    if "MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER" in environ or any(
        name != name.upper() and name.upper().startswith(PREFIXES) for name in environ
    ):
        return None  # per-number windows, or lower-case names (pydantic-settings reads those)
    ttl, min_validity, busy_timeout = (_seconds(environ.get(name, default), most)
                                       for name, (default, most) in DURATIONS.items())
    phone = phone_number_id or environ.get("WHATSAPP_PHONE_NUMBER_ID") or ""
    if not (phone.isascii() and phone.isdigit() and 0 < min_validity < ttl and busy_timeout > 0
            and _plainly_valid(environ)):
        return None  # missing, out of range or unusual: the full path says what is wrong
    path = Path(db if db is not None else environ.get("MEDIA_REGISTRY_DB", DEFAULT_DB))
    return HitSettings(path, phone, timedelta(seconds=min_validity), busy_timeout)


def _seconds(text: str, most: float) -> float:
    """A duration given as plain seconds up to ``most``, as config.py reads it; NaN for
    anything else (ISO 8601 durations, other digits, huge values go the full path)."""
    text = text.strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]*)?", text) or float(text) > most:
        return float("nan")
    return float(text)


def _plainly_valid(environ: Mapping[str, str]) -> bool:
    """Whether the API base and token are ones the full settings accept (any doubt: False)."""
    token = environ.get("WHATSAPP_TOKEN")
    if token is not None and (not token.strip() or any(char.isspace() for char in token.strip())):
        return False
    api_base = PLAIN_API_BASE.fullmatch(environ.get("WHATSAPP_API_BASE", "https://graph.facebook.com"))
    return api_base is not None and int(api_base["port"] or 443) <= 65535


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

