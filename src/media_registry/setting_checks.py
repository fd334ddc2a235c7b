"""Checks of single settings, in the standard library alone.

The pydantic settings (config.py) call them to refuse a value, and the command line's lean
cache hit (_quick.py) to tell, without loading pydantic, that a value given as plain text is
one the full settings accept: one definition of each rule, so the two never disagree.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import NamedTuple

# Bounds that keep every wait and date computable (a huge value overflowed a C int or a date).
MAX_SECONDS = 86400.0
MAX_DURATION = timedelta(days=36500)
# A phone number ID as Meta gives it, and as the service's paths accept it.
PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")
_PLAIN_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)")


class Range(NamedTuple):
    """The values a numeric setting takes: ``low`` excluded when ``low_open``, ``high`` included."""

    low: float
    high: float
    low_open: bool = False
    whole: bool = False

    def accepts(self, text: str) -> bool:
        """Whether ``text`` is a plain number in this range (any doubt: False)."""
        text = text.strip()
        if not (re.fullmatch(r"[0-9]+", text) if self.whole else _PLAIN_NUMBER.fullmatch(text)):
            return False
        value = float(text)
        above = value > self.low if self.low_open else value >= self.low
        return math.isfinite(value) and above and value <= self.high


# The numeric settings, by field name (config.py builds its Field constraints from these).
RANGES = {
    "timeout": Range(0, MAX_SECONDS, low_open=True),
    "download_deadline": Range(0, MAX_SECONDS, low_open=True),
    "busy_timeout": Range(0, MAX_SECONDS, low_open=True),
    "lease_seconds": Range(0, MAX_SECONDS, low_open=True),
    "max_retries": Range(0, 20, whole=True),
    "refresh_concurrency": Range(1, 64, whole=True),
    "pg_pool_size": Range(2, 1000, whole=True),
    "retry_backoff": Range(0, math.inf),
    "uploads_per_second": Range(0.01, math.inf),  # a tinier rate overflowed the wait
}
# The durations and their defaults; all must be positive but url_revalidate, which may be
# zero (always revalidate).
DURATIONS = {"ttl": timedelta(days=30), "min_validity": timedelta(days=1),
             "refresh_before": timedelta(days=3), "refresh_interval": timedelta(hours=1),
             "purge_interval": timedelta(hours=1), "host_retention": timedelta(days=14),
             "repair_window": timedelta(minutes=10), "url_revalidate": timedelta(minutes=5)}
POSITIVE_DURATIONS = tuple(name for name in DURATIONS if name != "url_revalidate")


def check_positive_duration(value: timedelta) -> timedelta:
    """``value``, or ValueError unless it is positive and at most 36500 days (zero at the
    microsecond resolution of a duration, e.g. 0.0000001 seconds, is refused like 0)."""
    if not timedelta(0) < value <= MAX_DURATION:
        raise ValueError("must be a positive duration up to 36500 days")
    return value


def check_revalidate(value: timedelta) -> timedelta:
    """``value``, or ValueError unless it is zero or positive, up to 36500 days."""
    if not timedelta(0) <= value <= MAX_DURATION:
        raise ValueError("must be zero (always revalidate) or a positive duration up to 36500 days")
    return value


def check_phone_number_id(value: str) -> str:
    """``value``, or ValueError unless it is 1 to 32 ASCII digits."""
    if not PHONE_NUMBER_ID.fullmatch(value):
        raise ValueError("must be the digits of the phone number ID from Meta's app dashboard "
                         "(1 to 32 digits)")
    return value


def check_token(token: str | None) -> str | None:
    """The token without surrounding whitespace (a pasted newline); ValueError if it holds
    whitespace inside, which no token does."""
    if token is None:
        return None
    token = token.strip()
    if not token:  # e.g. `export WHATSAPP_TOKEN=$(cmd)` where the command failed
        raise ValueError("is empty; set it to the access token, or leave it unset for cache hits only")
    if any(char.isspace() for char in token):
        raise ValueError("must be the token alone, without spaces or line breaks inside")
    return token


def check_host_id(value: str) -> str:
    """``value``, or ValueError unless 1 to 200 characters without spaces around them or
    control characters."""
    # It is printed in log lines and `stats`, and names this host's rows in the registry.
    if not 1 <= len(value) <= 200:
        raise ValueError("must be 1 to 200 characters, such as app-1")
    if value != value.strip() or not value.isprintable():
        raise ValueError(f"{value!r} has spaces around it or control characters (a line break, "
                         "a tab); give a plain name such as app-1")
    return value


def plain_seconds(text: str) -> timedelta | None:
    """A duration given as plain seconds, as a timedelta; None for any other form, and for a
    fraction of a microsecond (pydantic and timedelta round those differently)."""
    text = text.strip()
    if not _PLAIN_NUMBER.fullmatch(text) or abs(float(text)) > MAX_DURATION.total_seconds():
        return None
    if len(text.partition(".")[2]) > 6:
        return None
    return timedelta(seconds=float(text))  # a whole number of microseconds: read alike
