"""The command line's cache hit, without loading the full settings.

A shell script, cron job or PHP/Node app that runs ``media-registry upload FILE`` pays the
process's start-up on every call. A cache hit needs only the registry file, the phone number
ID and ``min_validity``: the settings are read here from the environment with the standard
library and the checks the full settings call (setting_checks), and the hit is answered by
the same store query the registry uses (one ``stat``, one indexed query). A value they refuse
is refused here in their words; anything unusual (a form only pydantic-settings reads, such
as ISO 8601 or JSON, a missing registry, a miss) returns None, and the caller takes the full
path: the hit is never served under settings every other command refuses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

from .. import defaults
from .._tuples import NamedTuple
from ..content import hashing
from ..dburl import is_postgres_url, refuse_other_url
from ..errors import ConfigError, MediaRegistryError
from ..setting_checks import (
    DAEMON_PASSES,
    DURATION_CHECKS,
    PHONE_NUMBER_ID,
    RANGES,
    TEXT_CHECKS,
    check_app_id,
    check_phone_number_id,
    check_repair_codes,
    check_retention,
    check_token,
    check_windows,
    plain_seconds,
    refusal,
    variable,
)
from ..store import Store, open_store

PREFIXES = ("MEDIA_REGISTRY_", "WHATSAPP_")
# Variables of these prefixes that are no setting, which the full settings ignore too.
NOT_SETTINGS = frozenset({"MEDIA_REGISTRY_MIGRATE_TO"})
# An API base the full settings surely accept: https to a plain host name, or http to loopback.
_LABEL = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"
PLAIN_API_BASE = re.compile(rf"(https://{_LABEL}(\.{_LABEL})*|http://(127\.0\.0\.1|localhost|\[::1\]))"
                            r"(:(?P<port>[1-9][0-9]{0,4}))?(/[A-Za-z0-9._~-]+)*/?")


class HitSettings(NamedTuple):
    """What a cache hit reads: where the registry is, for which number, how long an ID must last."""

    db: str  # a file path (pathlib is not imported: start-up is most of a hit's cost)
    phone_number_id: str
    min_validity: timedelta
    busy_timeout: float


def hit_settings(environ: Mapping[str, str], db: str | None, phone_number_id: str | None) -> HitSettings | None:
    """The hit's settings from the environment and the command's flags; None when a setting
    given is one this module cannot read (the full settings read it, and say what is wrong).

    Raises ConfigError, worded as the full settings word it, for the first value (in their
    order) that they refuse.
    """
    given = given_settings(environ, db)
    if given is None:
        return None
    values = read_settings(given)
    phone = phone_number_id or given.get("WHATSAPP_PHONE_NUMBER_ID") or ""
    if values is None or not PHONE_NUMBER_ID.fullmatch(phone):
        return None
    return HitSettings(given.get("MEDIA_REGISTRY_DB", defaults.DB), phone,
                       duration(values, "min_validity"), busy_timeout(values))


def given_settings(environ: Mapping[str, str], db: str | None) -> dict[str, str] | None:
    """The settings' variables in ``environ``, with ``--db`` over the variable; None when one is
    named in lower case (pydantic-settings reads those; this module does not)."""
    given = {name: text for name, text in environ.items()
             if name.upper().startswith(PREFIXES) and name not in NOT_SETTINGS}
    if any(name != name.upper() for name in given):
        return None
    if db is not None:  # the flag stands for the variable, as an argument does in the full settings
        given["MEDIA_REGISTRY_DB"] = db
    return given


def busy_timeout(values: Mapping[str, object]) -> float:
    """How long to wait for another writer: as given, else the default."""
    value = values.get("busy_timeout", defaults.BUSY_TIMEOUT)
    assert isinstance(value, float)
    return value


def read_settings(given: Mapping[str, str]) -> dict[str, object] | None:
    """The settings given, by field name, checked as the full settings check them; None if
    one is a variable this module cannot read; ConfigError for the first they refuse."""
    if not given.keys() <= {variable(field) for field in FIELDS}:
        return None
    values: dict[str, object] = {}
    refused: dict[str, str] = {}
    for field in FIELDS:
        text = given.get(variable(field))
        if text is None:
            continue
        try:
            value = _READERS[field](text)
        except ValueError as exc:
            refused[field] = refusal(variable(field), str(exc))
            continue
        if value is None:
            return None  # a form only the full settings read, which may refuse it first
        values[field] = value
    _check_retention(values, refused)
    if refused:
        raise ConfigError(next(iter(refused.values())))
    try:
        check_windows(duration(values, "ttl"), duration(values, "min_validity"),
                      duration(values, "refresh_before"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return values


def _check_retention(values: Mapping[str, object], refused: dict[str, str]) -> None:
    """Refuse a host retention, given or default, that a valid daemon pass outlasts (the
    full settings check their defaults too)."""
    if "host_retention" in refused:
        return
    passes = [duration(values, field) for field in DAEMON_PASSES
              if field not in refused]
    try:
        check_retention(duration(values, "host_retention"), passes)
    except ValueError as exc:
        refused["host_retention"] = refusal(variable("host_retention"), str(exc))


def duration(values: Mapping[str, object], field: str) -> timedelta:
    """A duration's value: as given, else its default."""
    value = values.get(field, getattr(defaults, field.upper()))
    assert isinstance(value, timedelta)
    return value


def _plain_api_base(text: str) -> str | None:
    """``text`` if the full settings surely accept it as it is, else None (they read it)."""
    api_base = PLAIN_API_BASE.fullmatch(text)
    return text if api_base is not None and int(api_base["port"] or 443) <= 65535 else None


def _file_db(text: str) -> str | None:
    """``text``, naming an SQLite file; None for a PostgreSQL URL (the full path's) or an
    empty name; ValueError for any other database's URL or a libpq keyword string."""
    refuse_other_url(text)
    return None if is_postgres_url(text) or not text else text


def _text(text: str) -> str | None:
    """Any text but an empty one, which the full settings read their own way."""
    return text or None


def _unread(text: str) -> None:
    """A JSON value, which the full settings read."""


def _reader(field: str) -> Callable[[str], object]:
    """How this module reads a setting given as text."""
    if field in RANGES:
        return RANGES[field].read
    if field in DURATION_CHECKS:
        check = DURATION_CHECKS[field]

        def read_duration(text: str) -> timedelta | None:
            value = plain_seconds(text)
            return None if value is None else check(value)
        return read_duration
    return _TEXT_READERS.get(field, _unread)


_TEXT_READERS: dict[str, Callable[[str], object]] = {
    **TEXT_CHECKS, "token": check_token, "phone_number_id": check_phone_number_id,
    "api_base": _plain_api_base, "db": _file_db, "blob_dir": _text, "service_token": _text,
    "url_ignore_query": _text, "app_secret": _text, "webhook_verify_token": _text,
    "s3_endpoint_url": _text, "repair_codes": check_repair_codes,
    "app_id": check_app_id,
}
# Every setting, in the order of the full settings' fields: their first refusal is the one told.
FIELDS = (
    "token", "phone_number_id", "api_base", "db", "blob_dir", "ttl", "ttl_by_phone_number",
    "min_validity", "refresh_before", "user_agent", "download_user_agent", "timeout",
    "download_deadline", "max_retries", "retry_backoff", "media_hosts", "refresh_concurrency",
    "refresh_interval", "purge_interval", "busy_timeout", "lease_seconds", "service_token",
    "uploads_per_second", "url_revalidate", "repair_window", "url_ignore_query", "pg_pool_size",
    "host_id", "host_retention", "app_secret", "webhook_verify_token", "archive", "s3_endpoint_url",
    "s3_checksum", "repair_codes", "sent_retention", "app_id", "handle_ttl", "local_cache_size",
)
_READERS = {field: _reader(field) for field in FIELDS}


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
                if not os.path.isfile(self._settings.db):
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

