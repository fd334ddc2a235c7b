"""Settings: read from the environment once, validated, overridable by arguments."""

from __future__ import annotations

import difflib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .dburl import PostgresURL, is_postgres_url, refuse_other_url
from .errors import ConfigError, register_secret
from .graph.base import DOWNLOAD_DEADLINE, DOWNLOAD_USER_AGENT, MEDIA_HOST_SUFFIXES
from .graph.checks import USER_AGENT, check_api_base, check_media_hosts, check_user_agent
from .setting_checks import (
    DURATIONS,
    PHONE_NUMBER_ID,
    POSITIVE_DURATIONS,
    RANGES,
    check_host_id,
    check_phone_number_id,
    check_positive_duration,
    check_revalidate,
    check_token,
)

# Meta retires a Graph API version about two years after its release.
DEFAULT_API_BASE = "https://graph.facebook.com/v23.0"
# S3 and GCS presigned URLs: the signature and the parameters that change with it.
DEFAULT_URL_IGNORE_QUERY = (
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Security-Token",
    "X-Amz-Signature", "X-Amz-SignedHeaders", "X-Goog-*",
)


def _ranged(default: float, field: str) -> Any:
    """A numeric field within its range of setting_checks.RANGES."""
    low, high, low_open, whole = RANGES[field]
    return Field(default, gt=low if low_open else None, ge=None if low_open else low, le=high,
                 allow_inf_nan=None if whole else False)


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
    api_base: str = _env("WHATSAPP_API_BASE", DEFAULT_API_BASE)
    # A file path (SQLite) or a postgresql://user:password@host:port/dbname URL (a fleet).
    db: Path | PostgresURL = Path("media-registry.db")
    blob_dir: Path = Path("media-blobs")
    ttl: timedelta = DURATIONS["ttl"]
    # Numbers in No-Storage mode keep media a shorter time, asked for at upload (ttl_minutes).
    ttl_by_phone_number: dict[str, timedelta] = {}
    min_validity: timedelta = DURATIONS["min_validity"]
    refresh_before: timedelta = DURATIONS["refresh_before"]
    # Graph API requests carry the project's own (Meta's spec constrains it); downloads from
    # the media hosts a browser-like one.
    user_agent: str = USER_AGENT
    download_user_agent: str = Field(DOWNLOAD_USER_AGENT, pattern=r"^[\x20-\x7e]+$")
    timeout: float = _ranged(60.0, "timeout")
    # A download as a whole, however slowly the server sends it.
    download_deadline: float = _ranged(DOWNLOAD_DEADLINE, "download_deadline")
    max_retries: int = _ranged(4, "max_retries")
    retry_backoff: float = _ranged(0.5, "retry_backoff")
    # Host suffixes that may receive the token over https for downloads, besides the API base.
    media_hosts: tuple[str, ...] = MEDIA_HOST_SUFFIXES
    refresh_concurrency: int = _ranged(4, "refresh_concurrency")
    refresh_interval: timedelta = DURATIONS["refresh_interval"]
    purge_interval: timedelta = DURATIONS["purge_interval"]
    # How long to wait for another writer before RegistryLocked.
    busy_timeout: float = _ranged(10.0, "busy_timeout")
    # Seconds between lease heartbeats is a third of this; a dead owner frees it after this.
    lease_seconds: float = _ranged(60.0, "lease_seconds")
    # The bearer token clients of `serve` must send; required when it binds beyond loopback.
    service_token: SecretStr | None = None
    # Upload starts per second per phone number, across a process's threads and tasks.
    uploads_per_second: float = _ranged(20.0, "uploads_per_second")
    # How long a URL source's remembered content is trusted before a conditional GET.
    url_revalidate: timedelta = DURATIONS["url_revalidate"]
    # send_with_media uploads a content again for a number at most once within this long.
    repair_window: timedelta = DURATIONS["repair_window"]
    # Query parameters left out of a URL source's key, and never printed or stored: a signed
    # URL's signature changes on every request (comma-separated; "X-Goog-*" matches a prefix).
    url_ignore_query: Annotated[tuple[str, ...], NoDecode] = DEFAULT_URL_IGNORE_QUERY
    # PostgreSQL only: connections per process, this host's name in the fleet (stable across
    # restarts, unlike a Kubernetes pod's hostname), and how long an unseen host keeps its paths.
    pg_pool_size: int = _ranged(10, "pg_pool_size")
    host_id: str = Field(default_factory=lambda: os.uname().nodename, min_length=1, max_length=200)
    host_retention: timedelta = DURATIONS["host_retention"]

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

    @field_validator("api_base")
    @classmethod
    def _check_api_base(cls, value: str) -> str:
        return check_api_base(value)

    @field_validator("media_hosts")
    @classmethod
    def _check_media_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_media_hosts(value)

    @field_validator("user_agent")
    @classmethod
    def _check_user_agent(cls, value: str) -> str:
        return check_user_agent(value)

    @field_validator("phone_number_id")
    @classmethod
    def _check_phone_number_id(cls, value: str | None) -> str | None:
        return None if value is None else check_phone_number_id(value)

    @field_validator("host_id")
    @classmethod
    def _check_host_id(cls, value: str) -> str:
        return check_host_id(value)

    @field_validator("ttl", "min_validity", "refresh_before", "refresh_interval", "purge_interval",
                     "url_revalidate", "host_retention", "repair_window", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return _seconds_as_number(value)

    @field_validator("url_revalidate")
    @classmethod
    def _check_not_negative(cls, value: timedelta) -> timedelta:
        return check_revalidate(value)

    @field_validator("url_ignore_query", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("ttl_by_phone_number", mode="before")
    @classmethod
    def _seconds_per_number(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {phone: _seconds_as_number(ttl) for phone, ttl in value.items()}
        return value

    @field_validator(*POSITIVE_DURATIONS)
    @classmethod
    def _check_positive(cls, value: timedelta) -> timedelta:
        return check_positive_duration(value)

    @field_validator("host_retention")
    @classmethod
    def _check_retention(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        # A host is seen again at each pass of its daemon: a retention shorter than a pass
        # would drop the paths of hosts that are alive.
        passes = [info.data[name] for name in ("refresh_interval", "purge_interval") if name in info.data]
        if passes and value <= max(passes):
            raise ValueError("must be longer than MEDIA_REGISTRY_REFRESH_INTERVAL and "
                             "MEDIA_REGISTRY_PURGE_INTERVAL (a live host is seen once a pass); "
                             "the default is 14 days")
        return value

    @field_validator("ttl_by_phone_number")
    @classmethod
    def _check_ttls(cls, value: dict[str, timedelta]) -> dict[str, timedelta]:
        for phone, ttl in value.items():
            if not PHONE_NUMBER_ID.fullmatch(phone):
                raise ValueError(f"{phone!r} is not a phone number ID (digits)")
            if not MIN_UPLOAD_TTL <= ttl <= MAX_UPLOAD_TTL or ttl.total_seconds() % 60:
                raise ValueError(f"TTL for {phone} must be whole minutes from 60 to 43200")
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


def _seconds_as_number(value: Any) -> Any:
    # Environment values arrive as text, and pydantic reads "86400" as a malformed ISO
    # duration rather than as seconds.
    # A negative number too, so that it gets the range's message rather than a parser's.
    if isinstance(value, str) and re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", value.strip()):
        return float(value)
    return value


class Windows(NamedTuple):
    """How long a number's media IDs live and when they stop being served or get refreshed."""

    ttl: timedelta
    min_validity: timedelta
    refresh_before: timedelta
    ttl_minutes: int | None  # sent with the upload when the number has its own TTL


MIN_UPLOAD_TTL = timedelta(minutes=60)
MAX_UPLOAD_TTL = timedelta(minutes=43200)

_ENV_NAMES = {
    "token": "WHATSAPP_TOKEN",
    "phone_number_id": "WHATSAPP_PHONE_NUMBER_ID",
    "api_base": "WHATSAPP_API_BASE",
}


def _variable(field: str) -> str:
    """The environment variable of a settings field."""
    return _ENV_NAMES.get(field, field.upper() if field.upper().startswith("WHATSAPP_")
                          else f"MEDIA_REGISTRY_{field.upper()}")


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
        settings = Settings(**{_ENV_NAMES.get(k, k): v for k, v in given.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = _variable(str(error["loc"][0])) if error["loc"] else "a setting"
        message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix says nothing
        raise ConfigError(f"invalid {name}: {message}; fix the variable or argument") from None
    except SettingsError as exc:  # a structured value that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        if field is None:
            raise ConfigError(f"invalid setting: {exc}; fix the environment") from None
        raise ConfigError(
            f"invalid {_variable(field[1])}: not JSON; write {_expected_form(field[1])}"
        ) from None
    for name in ("min_validity", "refresh_before"):
        if getattr(settings, name) >= settings.ttl:
            raise ConfigError(
                f"MEDIA_REGISTRY_{name.upper()} must be shorter than MEDIA_REGISTRY_TTL; lower it"
            )
    return settings
