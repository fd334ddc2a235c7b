"""Every check of a setting, written once, in the standard library alone.

The pydantic settings (config.py) call them from their validators, and the command line's
lean cache hit (_quick.py) on the values given as plain text, without loading pydantic: a
value is refused by both, in the same words, or by neither.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from ._tuples import NamedTuple
from .defaults import USER_AGENT

# Bounds that keep every wait and date computable (a huge value overflowed a C int or a date).
MAX_SECONDS = 86400.0
MAX_DURATION = timedelta(days=36500)
# A phone number ID as Meta gives it, and as the service's paths accept it.
PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")
# The patterns below are compiled on first use (re keeps them): the cache hit reads few settings.
# A number as plain text (no exponent, sign or separator): read alike by float() and pydantic.
PLAIN_NUMBER = r"-?([0-9]+\.?[0-9]*|\.[0-9]+)"
_PLAIN_WHOLE = r"-?[0-9]+"
_PLAIN_LENGTH = 20  # a longer number is a mistake, read by the full settings
# Meta's OpenAPI spec constrains the User-Agent of Graph API requests to this pattern.
USER_AGENT_PATTERN = (
    r"^[a-zA-Z0-9\-_]+\/[0-9]+\.[0-9]+\.[0-9]+(;[a-zA-Z0-9\-=\.]+)?(\s+[a-zA-Z0-9\-_]+\/[0-9\-\.]+)?$"
)
# The TTL a number may ask for at upload (Meta's ttl_minutes).
MIN_UPLOAD_TTL = timedelta(minutes=60)
MAX_UPLOAD_TTL = timedelta(minutes=43200)


# The settings read from a variable of their own rather than MEDIA_REGISTRY_ and their name.
ENV_NAMES = {
    "token": "WHATSAPP_TOKEN",
    "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
    "api_base": "WHATSAPP_API_BASE",
    "app_secret": "WHATSAPP_APP_SECRET",
    "app_id": "WHATSAPP_APP_ID",
}


def variable(field: str) -> str:
    """The environment variable of a settings field (or of a variable's name as pydantic gives it)."""
    return ENV_NAMES.get(field, field.upper() if field.upper().startswith("WHATSAPP_")
                         else f"MEDIA_REGISTRY_{field.upper()}")


def refusal(name: str, message: str) -> str:
    """The one line that refuses a setting's value, naming its variable ``name``."""
    return f"invalid {name}: {message}; fix the variable or argument"


class Range(NamedTuple):
    """The values a numeric setting takes: ``low`` excluded when ``low_open``, ``high`` included."""

    low: float
    high: float
    low_open: bool = False
    whole: bool = False

    def check(self, value: float) -> float:
        """``value``, or ValueError unless it is a finite number in this range."""
        above = value > self.low if self.low_open else value >= self.low
        if not (math.isfinite(value) and above and value <= self.high):
            bounds = [f"greater than {self.low:g}" if self.low_open else f"greater than or equal to {self.low:g}"]
            if math.isfinite(self.high):
                bounds.append(f"less than or equal to {self.high:g}")
            kind = "whole" if self.whole else "finite"
            raise ValueError(f"must be a {kind} number {' and '.join(bounds)}")
        return value

    def read(self, text: str) -> float | None:
        """``text`` as a checked number; None unless it is plain (e.g. ``1e3``, ``2.0`` for a
        whole number: the full settings read those)."""
        text = text.strip()
        plain = _PLAIN_WHOLE if self.whole else PLAIN_NUMBER
        if len(text) > _PLAIN_LENGTH or not re.fullmatch(plain, text):
            return None
        return self.check(int(text) if self.whole else float(text))


# The numeric settings, by field name.
RANGES = {
    "timeout": Range(0, MAX_SECONDS, low_open=True),
    "download_deadline": Range(0, MAX_SECONDS, low_open=True),
    "max_retries": Range(0, 20, whole=True),
    "retry_backoff": Range(0, math.inf),
    "refresh_concurrency": Range(1, 64, whole=True),
    "busy_timeout": Range(0, MAX_SECONDS, low_open=True),
    "lease_seconds": Range(0, MAX_SECONDS, low_open=True),
    "uploads_per_second": Range(0.01, math.inf),  # a tinier rate overflowed the wait
    "pg_pool_size": Range(2, 1000, whole=True),
    "local_cache_size": Range(0, 100_000_000, whole=True),
}


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


# The durations, by field name: each must be positive but url_revalidate, which may be zero
# (always revalidate).
DURATION_CHECKS = {name: check_positive_duration for name in (
    "ttl", "min_validity", "refresh_before", "refresh_interval", "purge_interval",
    "repair_window", "host_retention", "sent_retention", "handle_ttl")} | {"url_revalidate": check_revalidate}


# The daemon's passes, which a host's retention must outlast.
DAEMON_PASSES = ("refresh_interval", "purge_interval")


def check_retention(value: timedelta, passes: list[timedelta]) -> timedelta:
    """``value``, or ValueError unless longer than each daemon pass that is valid."""
    # A host is seen again at each pass of its daemon: a retention shorter than a pass
    # would drop the paths of hosts that are alive.
    if passes and value <= max(passes):
        raise ValueError("must be longer than MEDIA_REGISTRY_REFRESH_INTERVAL and "
                         "MEDIA_REGISTRY_PURGE_INTERVAL (a live host is seen once a pass); "
                         "the default is 14 days")
    return value


def check_windows(ttl: timedelta, min_validity: timedelta, refresh_before: timedelta) -> None:
    """ValueError, worded whole, unless both windows are shorter than the TTL (checked once
    every setting is valid)."""
    for name, window in (("min_validity", min_validity), ("refresh_before", refresh_before)):
        if window >= ttl:
            raise ValueError(f"MEDIA_REGISTRY_{name.upper()} must be shorter than MEDIA_REGISTRY_TTL; lower it")


def check_upload_ttls(value: dict[str, timedelta]) -> dict[str, timedelta]:
    """``value``, or ValueError unless each key is a phone number ID and each TTL whole
    minutes from 60 to 43200."""
    for phone, ttl in value.items():
        if not PHONE_NUMBER_ID.fullmatch(phone):
            raise ValueError(f"{phone!r} is not a phone number ID (digits)")
        if not MIN_UPLOAD_TTL <= ttl <= MAX_UPLOAD_TTL or ttl.total_seconds() % 60:
            raise ValueError(f"TTL for {phone} must be whole minutes from 60 to 43200")
    return value


def check_phone_number_id(value: str) -> str:
    """``value``, or ValueError unless it is 1 to 32 ASCII digits."""
    if not PHONE_NUMBER_ID.fullmatch(value):
        raise ValueError("must be the digits of the phone number ID from Meta's app dashboard "
                         "(1 to 32 digits)")
    return value


def check_app_id(value: str) -> str:
    """``value``, or ValueError unless it is 1 to 32 ASCII digits (an App ID)."""
    if not PHONE_NUMBER_ID.fullmatch(value):
        raise ValueError("must be the digits of the App ID from Meta's app dashboard (1 to 32 digits)")
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


def check_user_agent(user_agent: str) -> str:
    """``user_agent`` if it matches the pattern of Meta's OpenAPI spec, else ValueError."""
    if not re.match(USER_AGENT_PATTERN, user_agent):
        raise ValueError(f"must look like {USER_AGENT!r} (name/X.Y.Z, Meta's spec)")
    return user_agent


def check_download_user_agent(user_agent: str) -> str:
    """``user_agent``, or ValueError unless it is printable ASCII (a header's value)."""
    if not user_agent or not all(" " <= char <= "~" for char in user_agent):
        raise ValueError("must be printable ASCII characters, such as a browser's User-Agent")
    return user_agent


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


def check_archive(value: str | None) -> str | None:
    """``value`` (a folder, or ``s3://bucket/prefix``), or ValueError for an S3 URL without a
    bucket or with what no bucket name holds; blank means unset (the blob folder)."""
    if value is None or not value.strip():
        return None
    if value.lower().startswith("s3:"):
        bucket = value[5:].partition("/")[0] if value.startswith("s3://") else ""
        if not re.fullmatch(S3_BUCKET, bucket):
            raise ValueError("must be a folder or s3://bucket/prefix (a bucket name: 3 to 63 lower-case "
                             "letters, digits, dots and hyphens)")
    return value


def check_s3_checksum(value: str) -> str:
    """``value``: ``sha256`` or ``off``, else ValueError."""
    if value not in ("sha256", "off"):
        raise ValueError("must be sha256 (send the checksum) or off (for stores that refuse it)")
    return value


def check_repair_codes(value: str | tuple[int, ...]) -> tuple[int, ...]:
    """Comma-separated Graph error codes as a tuple of numbers, else ValueError."""
    if not isinstance(value, str):
        return value
    codes = [code.strip() for code in value.split(",") if code.strip()]
    if not codes or not all(code.isascii() and code.isdigit() and len(code) <= 9 for code in codes):
        raise ValueError("must be Graph error codes separated by commas, such as 131053")
    return tuple(int(code) for code in codes)


S3_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
# The checks of settings given as plain text that take it whole, by field name.
TEXT_CHECKS = {"user_agent": check_user_agent, "download_user_agent": check_download_user_agent,
               "host_id": check_host_id, "archive": check_archive, "s3_checksum": check_s3_checksum}


def seconds_as_number(value: object) -> object:
    """A duration given as plain-number text, as a float of seconds; any other value as is.

    pydantic reads "86400" as a malformed ISO duration rather than as seconds; a negative
    number is read too, so that it gets the range's message rather than a parser's.
    """
    if isinstance(value, str) and re.fullmatch(PLAIN_NUMBER, value.strip()):
        return float(value)
    return value


def plain_seconds(text: str) -> timedelta | None:
    """A duration given as plain seconds, as a timedelta; None for any other form, and for a
    fraction of a microsecond (pydantic and timedelta round those differently)."""
    text = text.strip()
    if not re.fullmatch(PLAIN_NUMBER, text) or abs(float(text)) > MAX_DURATION.total_seconds():
        return None
    if len(text.partition(".")[2]) > 6:
        return None
    return timedelta(seconds=float(text))  # a whole number of microseconds: read alike
