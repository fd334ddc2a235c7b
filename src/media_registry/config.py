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
    check_phone_number_id,
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
    phone_number_id: str | None = _env("WHATSAPP_PHONE_NUMBER_ID")
    api_base: str = _env("WHATSAPP_API_BASE", defaults.API_BASE)
    # A file path (SQLite) or a postgresql://user:password@host:port/dbname URL (a fleet).
    db: Path | PostgresURL = Path(defaults.DB)
    blob_dir: Path = Path(defaults.BLOB_DIR)
    ttl: timedelta = defaults.TTL
    # Numbers in No-Storage mode keep media a shorter time, asked for at upload (ttl_minutes).
    ttl_by_phone_number: dict[str, timedelta] = {}
    min_validity: timedelta = defaults.MIN_VALIDITY
    refresh_before: timedelta = defaults.REFRESH_BEFORE
    # Graph API requests carry the project's own (Meta's spec constrains it); downloads from
    # the media hosts a browser-like one.
    user_agent: str = defaults.USER_AGENT
    download_user_agent: str = defaults.DOWNLOAD_USER_AGENT
    timeout: float = defaults.TIMEOUT
    # A download as a whole, however slowly the server sends it.
    download_deadline: float = defaults.DOWNLOAD_DEADLINE
    max_retries: int = defaults.MAX_RETRIES
    retry_backoff: float = defaults.RETRY_BACKOFF
    # Host suffixes that may receive the token over https for downloads, besides the API base.
    media_hosts: tuple[str, ...] = defaults.MEDIA_HOSTS
    refresh_concurrency: int = defaults.REFRESH_CONCURRENCY
    refresh_interval: timedelta = defaults.REFRESH_INTERVAL
    purge_interval: timedelta = defaults.PURGE_INTERVAL
    # How long to wait for another writer before RegistryLocked.
    busy_timeout: float = defaults.BUSY_TIMEOUT
    # Seconds between lease heartbeats is a third of this; a dead owner frees it after this.
    lease_seconds: float = defaults.LEASE_SECONDS
    # The bearer token clients of `serve` must send; required when it binds beyond loopback.
    service_token: SecretStr | None = None
    # Upload starts per second per phone number, across a process's threads and tasks.
    uploads_per_second: float = defaults.UPLOADS_PER_SECOND
    # How long a URL source's remembered content is trusted before a conditional GET.
    url_revalidate: timedelta = defaults.URL_REVALIDATE
    # send_with_media uploads a content again for a number at most once within this long.
    repair_window: timedelta = defaults.REPAIR_WINDOW
    # Query parameters left out of a URL source's key, and never printed or stored: a signed
    # URL's signature changes on every request (comma-separated; "X-Goog-*" matches a prefix).
    url_ignore_query: Annotated[tuple[str, ...], NoDecode] = defaults.URL_IGNORE_QUERY
    # PostgreSQL only: connections per process, this host's name in the fleet (stable across
    # restarts, unlike a Kubernetes pod's hostname), and how long an unseen host keeps its paths.
    pg_pool_size: int = defaults.PG_POOL_SIZE
    host_id: str = defaults.HOST_ID
    host_retention: timedelta = defaults.HOST_RETENTION
    # PostgreSQL only: the hits each process answers from memory, kept true by LISTEN/NOTIFY (0: none).
    local_cache_size: int = defaults.LOCAL_CACHE_SIZE

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

    @field_validator("phone_number_id")
    @classmethod
    def _check_phone_number_id(cls, value: str | None) -> str | None:
        return None if value is None else check_phone_number_id(value)

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
