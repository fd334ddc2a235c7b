"""Meta's Graph API versions and the day each stops answering, and the check of the
configured one.

A version past its end is refused (one line, before any request); one within
:data:`WARN_WITHIN` of it is warned about once per process; a version with no published end
(Meta sets it when the next version ships) or newer than this table is accepted silently.
The check takes the registry's clock, so tests pin the day.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import date, datetime, timedelta
from typing import NamedTuple

from ..errors import ConfigError

log = logging.getLogger("media_registry.versions")

CURRENT = "v26.0"
# Meta's changelog (developers.facebook.com/docs/graph-api/changelog/versions): the last day
# each version answers ("available until"), or None while Meta has set none.
END_DATES: dict[str, date | None] = {
    "v26.0": None,
    "v25.0": date(2028, 7, 29),
    "v24.0": date(2028, 2, 18),
    "v23.0": date(2027, 10, 8),
    "v22.0": date(2027, 5, 20),
    "v21.0": date(2027, 1, 21),
    "v20.0": date(2026, 9, 24),
    "v19.0": date(2026, 5, 21),
    "v18.0": date(2026, 1, 26),
    "v17.0": date(2025, 9, 12),
    "v16.0": date(2025, 5, 14),
    "v15.0": date(2024, 11, 20),
    "v14.0": date(2024, 9, 17),
    "v13.0": date(2024, 5, 28),
    "v12.0": date(2024, 2, 8),
}
# The oldest version the table knows: anything older is long retired.
OLDEST = (12, 0)
WARN_WITHIN = timedelta(days=90)
_VERSION = re.compile(r"/v(\d+)\.(\d+)/?$")
_warned: set[str] = set()
_warned_lock = threading.Lock()


class VersionStatus(NamedTuple):
    """What the table says of a version on a day: ``state`` is ``ok`` (no end date, unknown
    or newer), ``near`` (ends within 90 days) or ``retired``; ``ends`` its last day if known."""

    version: str | None
    state: str
    ends: date | None


def version_of(api_base: str) -> str | None:
    """The ``vNN.N`` an API base ends with, or None (a base without one)."""
    match = _VERSION.search(api_base)
    return None if match is None else f"v{int(match[1])}.{int(match[2])}"


def status(api_base: str, now: datetime) -> VersionStatus:
    """The version of ``api_base`` on the day ``now``."""
    version = version_of(api_base)
    if version is None:
        return VersionStatus(None, "ok", None)
    ends = END_DATES.get(version)
    major, minor = (int(part) for part in version[1:].split("."))
    if version not in END_DATES and (major, minor) < OLDEST:
        return VersionStatus(version, "retired", None)
    if ends is None:
        return VersionStatus(version, "ok", None)
    today = now.date()
    if today > ends:
        return VersionStatus(version, "retired", ends)
    return VersionStatus(version, "near" if today + WARN_WITHIN >= ends else "ok", ends)


def describe(found: VersionStatus) -> str:
    """One line for people: the version and its end, and what to do."""
    if found.version is None:
        return "the API base names no version; Meta's is the last part of WHATSAPP_API_BASE"
    fix = f"set WHATSAPP_API_BASE to end in /{CURRENT} (the current version)"
    if found.state == "retired":
        since = f" on {_day(found.ends)}" if found.ends else ""
        return f"Graph API {found.version} was retired by Meta{since}; {fix}"
    if found.state == "near":
        return f"Graph API {found.version} stops working on {_day(found.ends)}; {fix}"
    if found.ends is None:
        return f"Graph API {found.version}: no end date published yet"
    return f"Graph API {found.version}: works until {_day(found.ends)}"


def check(api_base: str, now: datetime) -> None:
    """ConfigError for a retired version; a warning, once per process and version, for one
    that ends within 90 days; nothing otherwise."""
    found = status(api_base, now)
    if found.state == "retired":
        raise ConfigError(describe(found))
    if found.state == "near":
        with _warned_lock:
            first = found.version not in _warned
            _warned.add(str(found.version))
        if first:
            log.warning("%s", describe(found))


def _day(day: date | None) -> str:
    return "" if day is None else f"{day.day} {day:%B %Y}"
