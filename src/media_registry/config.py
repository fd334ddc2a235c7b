"""Settings: read from the environment once, validated, overridable by arguments."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from . import defaults
from .dburl import PostgresURL, is_postgres_url, refuse_other_url
from .errors import ConfigError, register_secret
from .graph.checks import check_api_base, check_media_hosts
from .setting_checks import (
    DAEMON_PASSES,
    DURATION_CHECKS,
    ENV_NAMES,
    RANGES,
    TEXT_CHECKS,
    check_app_id,
    check_phone_number_id,
    check_repair_codes,
    check_retention,
    check_token,
    check_upload_ttls,
    check_windows,
    refusal,
    seconds_as_number,
    variable,
)

# The checks of the other settings given as text or lists, by field name.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    **TEXT_CHECKS, "api_base": check_api_base, "media_hosts": check_media_hosts,
    "ttl_by_phone_number": check_upload_ttls,
}


def _env(name: str, default: Any = None) -> Any:
    """A field read from ``name`` itself rather than the MEDIA_REGISTRY_ prefix."""
    return Field(default, validation_alias=AliasChoices(name, name.lower()))


class Settings(BaseSettings):
    """Every setting media-registry reads, with its environment variable and default.

    Durations take seconds (``86400``) or ISO 8601 (``P1D``, ``PT12H``).
    """

    model_config = SettingsConfigDict(env_prefix="MEDIA_REGISTRY_", extra="ignore")

    token: SecretStr | None = _env("WHATSAPP_TOKEN")
    """The bearer token (a system user's); needed only when something must be uploaded. A
    pasted trailing newline or space is stripped, whitespace inside is refused."""
    phone_number_id: str | None = _env("WHATSAPP_PHONE_NUMBER_ID")
    """The sending number's ID (1 to 32 digits)."""
    api_base: str = _env("WHATSAPP_API_BASE", defaults.API_BASE)
    """The Graph API base; ``http://`` only on a loopback host, for local test servers."""
    db: Path | PostgresURL = Path(defaults.DB)
    """The registry: an SQLite file path, or ``postgresql://user:password@host:port/dbname``
    for a fleet; the password is never printed or logged."""
    blob_dir: Path = Path(defaults.BLOB_DIR)
    """Where inbound media is stored."""
    ttl: timedelta = defaults.TTL
    """How long an uploaded ID lives at Meta."""
    ttl_by_phone_number: dict[str, timedelta] = {}
    """A JSON object of per-number TTLs for No-Storage numbers (60 to 43200 whole minutes),
    which keep media a shorter time, asked for at upload as ``ttl_minutes``."""
    min_validity: timedelta = defaults.MIN_VALIDITY
    """An ID with less left than this is never handed out."""
    refresh_before: timedelta = defaults.REFRESH_BEFORE
    """Refresh uploads again the IDs with less left than this."""
    user_agent: str = defaults.USER_AGENT
    """Sent with Graph API requests; must fit the pattern of Meta's OpenAPI spec
    (``name/X.Y.Z``)."""
    download_user_agent: str = defaults.DOWNLOAD_USER_AGENT
    """Sent when downloading from Meta's media hosts, which may refuse clients that are not
    browser-like."""
    timeout: float = defaults.TIMEOUT
    """Seconds per HTTP request."""
    download_deadline: float = defaults.DOWNLOAD_DEADLINE
    """Seconds a download (inbound media, or a URL source) may take in all, however slowly the
    server sends it."""
    max_retries: int = defaults.MAX_RETRIES
    """Retries on 5xx, 429, rate-limit codes, transient errors, timeouts and connection errors."""
    retry_backoff: float = defaults.RETRY_BACKOFF
    """The first retry's delay in seconds, doubled each time, with full jitter (capped at 30 s;
    ``Retry-After`` is honoured up to that cap)."""
    media_hosts: tuple[str, ...] = defaults.MEDIA_HOSTS
    """A JSON list of host suffixes that may receive the token over https for downloads,
    besides the API base's own origin; each is a dot and a domain."""
    refresh_concurrency: int = defaults.REFRESH_CONCURRENCY
    """Uploads at a time during refresh."""
    refresh_interval: timedelta = defaults.REFRESH_INTERVAL
    """How often the daemon (or ``serve``'s schedule) refreshes."""
    purge_interval: timedelta = defaults.PURGE_INTERVAL
    """How often the daemon (or ``serve``'s schedule) purges."""
    busy_timeout: float = defaults.BUSY_TIMEOUT
    """Seconds to wait for another writer before ``RegistryLocked`` (PostgreSQL: for a
    connection, e.g. while the server restarts)."""
    lease_seconds: float = defaults.LEASE_SECONDS
    """An upload lease lives this long unless renewed (every third of it); a dead owner on
    another host frees it after this."""
    service_token: SecretStr | None = None
    """The bearer token clients of ``serve`` must send; required when it binds beyond loopback
    (blank counts as unset). Spaces or a line break around it are refused, not stripped."""
    uploads_per_second: float = defaults.UPLOADS_PER_SECOND
    """Upload starts per second per phone number, across a process's threads and tasks and every
    process sharing the limit: a PostgreSQL registry's whole fleet, an SQLite registry's host."""
    url_revalidate: timedelta = defaults.URL_REVALIDATE
    """A URL source checked within this long is served with no request; after it, one
    conditional GET (``0``: always ask)."""
    repair_window: timedelta = defaults.REPAIR_WINDOW
    """``send_with_media`` uploads a content again for a number at most once within this long."""
    url_ignore_query: Annotated[tuple[str, ...], NoDecode] = defaults.URL_IGNORE_QUERY
    """Comma-separated query parameters left out of a URL source's key, and never printed or
    stored: a signed URL's signature changes on every request (``X-Goog-*`` matches a prefix)."""
    pg_pool_size: int = defaults.PG_POOL_SIZE
    """PostgreSQL: connections per process for queries, and as many again for uploads in
    flight."""
    host_id: str = defaults.HOST_ID
    """PostgreSQL: this host's name in the fleet (its paths are its own); set a name that is
    stable across restarts where the hostname is not (Kubernetes pods)."""
    host_retention: timedelta = defaults.HOST_RETENTION
    """PostgreSQL: a host not seen for this long is gone; purge drops its paths."""
    app_secret: SecretStr | None = _env("WHATSAPP_APP_SECRET")
    """The app secret that signs Meta's webhook deliveries (``X-Hub-Signature-256``); blank
    counts as unset; never logged."""
    webhook_verify_token: SecretStr | None = None
    """The verify token of Meta's webhook handshake; blank counts as unset; never logged."""
    archive: str | None = None
    """Where the archive worker keeps inbound files: a folder (default: ``blob_dir``), or
    ``s3://bucket/prefix`` (the ``s3`` extra)."""
    s3_endpoint_url: str | None = None
    """The endpoint of an S3-compatible store other than AWS S3 (MinIO, Ceph, R2, GCS interop)."""
    s3_checksum: str = defaults.S3_CHECKSUM
    """``sha256`` sends each object's SHA-256 checksum; ``off`` for stores that refuse the newer
    checksum headers."""
    repair_codes: Annotated[tuple[int, ...], NoDecode] = defaults.REPAIR_CODES
    """Comma-separated Graph error codes of a ``failed`` status that mean the media ID was no
    good: that ID is invalidated, so the next send uploads anew."""
    sent_retention: timedelta = defaults.SENT_RETENTION
    """How long sent messages are remembered for repairs (at most one repair per content and
    number within it)."""
    app_id: str | None = _env("WHATSAPP_APP_ID")
    """Your Meta app's App ID (digits): the app whose upload sessions make template header
    handles; nothing else needs it."""
    handle_ttl: timedelta = defaults.HANDLE_TTL
    """How long a template header handle is reused (Meta documents no lifetime for one)."""
    local_cache_size: int = defaults.LOCAL_CACHE_SIZE
    """The cache hits each process answers from memory, kept true by ``LISTEN/NOTIFY`` on
    PostgreSQL and by the file's change counter on SQLite; 0 turns it off."""

    @field_validator("db", mode="before")
    @classmethod
    def _check_db(cls, value: Any) -> Any:
        if isinstance(value, str):
            refuse_other_url(value)
        return PostgresURL(value) if is_postgres_url(value) and isinstance(value, str) else value

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = check_token(value.get_secret_value())
        register_secret(token, "token")
        return SecretStr(token or "")

    @field_validator("service_token")
    @classmethod
    def _hide_service_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            register_secret(value.get_secret_value(), "service token")
        return value

    @field_validator("app_secret", "webhook_verify_token")
    @classmethod
    def _hide_webhook_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        given = value.get_secret_value() if value is not None else ""
        if not given.strip():  # an HMAC keyed with an empty secret can be forged by anyone
            return None
        register_secret(given, str(info.field_name).replace("_", " "))
        return value

    @field_validator("repair_codes", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return check_repair_codes(value)

    @field_validator("phone_number_id")
    @classmethod
    def _check_phone_number_id(cls, value: str | None) -> str | None:
        return None if value is None else check_phone_number_id(value)

    @field_validator("app_id")
    @classmethod
    def _check_app_id(cls, value: str | None) -> str | None:
        return None if value is None else check_app_id(value)

    @field_validator("url_ignore_query", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator(*DURATION_CHECKS, mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return seconds_as_number(value)

    @field_validator("ttl_by_phone_number", mode="before")
    @classmethod
    def _seconds_per_number(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {phone: seconds_as_number(ttl) for phone, ttl in value.items()}
        return value

    @field_validator(*_CHECKS)
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        return _CHECKS[str(info.field_name)](value)

    @field_validator(*RANGES)
    @classmethod
    def _check_range(cls, value: float, info: ValidationInfo) -> float:
        return RANGES[str(info.field_name)].check(value)

    @field_validator(*DURATION_CHECKS)
    @classmethod
    def _check_duration(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        value = DURATION_CHECKS[str(info.field_name)](value)
        if info.field_name == "host_retention":  # after the passes, which come first
            return check_retention(value, [info.data[name] for name in DAEMON_PASSES if name in info.data])
        return value

    def windows(self, phone_number_id: str) -> Windows:
        """The TTL and validity windows that apply to one number.

        A number with its own (shorter) TTL gets ``min_validity`` and ``refresh_before``
        shrunk in proportion: with the defaults, a 1-hour TTL serves an ID until 2 minutes
        before its end and refreshes it 6 minutes before.
        """
        ttl = self.ttl_by_phone_number.get(phone_number_id)
        if ttl is None:
            return Windows(self.ttl, self.min_validity, self.refresh_before, None)
        scale = min(1.0, ttl / self.ttl)
        return Windows(ttl, self.min_validity * scale, self.refresh_before * scale,
                       int(ttl.total_seconds() // 60))


class Windows(NamedTuple):
    """How long a number's media IDs live and when they stop being served or get refreshed."""

    ttl: timedelta
    min_validity: timedelta
    refresh_before: timedelta
    ttl_minutes: int | None  # sent with the upload when the number has its own TTL


def _check_names(overrides: dict[str, Any]) -> None:
    """ConfigError for an argument that is no setting, naming the closest one: a misspelt
    ``min_validty=`` must not silently leave the default in force."""
    for name in overrides:
        if name not in Settings.model_fields:
            close = difflib.get_close_matches(name, Settings.model_fields, n=1)
            hint = f"did you mean {close[0]}?" if close else "see media_registry.Settings for the names"
            raise ConfigError(f"unknown setting {name!r}: {hint}")


def _expected_form(field: str) -> str:
    """How a structured setting is written in the environment."""
    if Settings.model_fields[field].annotation == tuple[str, ...]:
        return 'a JSON list of strings, e.g. [".fbsbx.com", ".whatsapp.net"]'
    return 'a JSON object, e.g. {"106540352242922": 3600}'


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, apply non-None overrides, and validate everything once.

    A bad value raises ConfigError naming the environment variable (or argument) at fault;
    an unknown argument raises ConfigError naming the closest setting.
    """
    _check_names(overrides)
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**{ENV_NAMES.get(k, k): v for k, v in given.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = variable(str(error["loc"][0])) if error["loc"] else "a setting"
        message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix says nothing
        raise ConfigError(refusal(name, message)) from None
    except SettingsError as exc:  # a structured value that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        if field is None:
            raise ConfigError(f"invalid setting: {exc}; fix the environment") from None
        raise ConfigError(
            f"invalid {variable(field[1])}: not JSON; write {_expected_form(field[1])}"
        ) from None
    try:
        check_windows(settings.ttl, settings.min_validity, settings.refresh_before)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return settings
