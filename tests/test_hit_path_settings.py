"""The command line's lean cache hit never serves an ID under settings the full path
refuses: the same exit code and message for every bad value, and the hit still served under
plain good ones."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import ConfigError
from media_registry.app._quick import hit_settings
from media_registry.config import load_settings

from conftest import run_cli, settle

BAD = [
    ("MEDIA_REGISTRY_MIN_VALIDITY", "0.0000001"),  # zero at a duration's microsecond resolution
    ("MEDIA_REGISTRY_MIN_VALIDITY", "0"),
    ("MEDIA_REGISTRY_TIMEOUT", "abc"),
    ("MEDIA_REGISTRY_URL_REVALIDATE", "x"),
    ("MEDIA_REGISTRY_REPAIR_WINDOW", "x"),
    ("MEDIA_REGISTRY_REPAIR_WINDOW", "0"),
    ("MEDIA_REGISTRY_PG_POOL_SIZE", "0"),
    ("WHATSAPP_PHONE_NUMBER_ID", "1" * 33),
]
# Refused too, checked without a process each.
ALSO_BAD = [
    ("MEDIA_REGISTRY_HOST_ID", ""), ("MEDIA_REGISTRY_HOST_ID", " app"),
    ("MEDIA_REGISTRY_USER_AGENT", "bad\tagent"),
    ("MEDIA_REGISTRY_TTL", "3600"),  # shorter than the default MIN_VALIDITY
    ("MEDIA_REGISTRY_REFRESH_INTERVAL", "P30D"),  # longer than the host retention
    ("MEDIA_REGISTRY_BUSY_TIMEOUT", "1" * 400), ("MEDIA_REGISTRY_MAX_RETRIES", "21"),
    ("MEDIA_REGISTRY_UPLOADS_PER_SECOND", "0.001"), ("MEDIA_REGISTRY_DB", "mysql://u:p@h/d"),
    ("MEDIA_REGISTRY_DB", "host=h dbname=d"), ("WHATSAPP_TOKEN", " "),
    ("WHATSAPP_API_BASE", "http://example.com"),
]


@pytest.mark.sqlite_only  # the lean hit of a registry file; a PostgreSQL URL takes the full path
@pytest.mark.parametrize(("name", "value"), BAD)
def test_the_hit_path_refuses_every_setting_the_full_path_refuses(
    cli_env: dict[str, str], make_file: Callable[..., Path], name: str, value: str
) -> None:
    banner = make_file("banner.png")
    settle(banner)
    assert run_cli("upload", str(banner), env=cli_env).returncode == 0
    # A lower-case MEDIA_REGISTRY_ name (which pydantic-settings reads) forces the full path.
    full = run_cli("upload", str(banner), env={**cli_env, name: value, "media_registry_force_full": "1"})
    assert full.returncode == 1 and name in full.stderr, full.stderr
    quick = run_cli("upload", str(banner), env={**cli_env, name: value})
    assert (quick.returncode, quick.stdout, quick.stderr) == (1, "", full.stderr)


@pytest.mark.sqlite_only
def test_the_hit_is_still_served_under_plain_good_settings(
    cli_env: dict[str, str], make_file: Callable[..., Path]
) -> None:
    banner = make_file("banner.png")
    settle(banner)
    first = run_cli("upload", str(banner), env=cli_env)
    good = {"MEDIA_REGISTRY_TIMEOUT": "30", "MEDIA_REGISTRY_PG_POOL_SIZE": "4",
            "MEDIA_REGISTRY_REPAIR_WINDOW": "600", "MEDIA_REGISTRY_URL_REVALIDATE": "0",
            "MEDIA_REGISTRY_HOST_ID": "app-1", "MEDIA_REGISTRY_MIGRATE_TO": "postgresql://x@h/d"}
    hit = run_cli("upload", str(banner), env={**cli_env, **good})
    assert hit.returncode == 0 and hit.stdout == first.stdout.replace("uploaded", "cached")


def _hit_and_full(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> tuple[bool, bool]:
    """Whether the lean hit, and the full settings, take ``name=value`` in a plain environment
    (the hit refusing a value in the full settings' words)."""
    for variable in ("WHATSAPP_TOKEN", "WHATSAPP_API_BASE", "MEDIA_REGISTRY_DB"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", "106540352242922")
    monkeypatch.setenv(name, value)
    try:
        load_settings()
    except ConfigError as exc:
        return _hit_served(str(exc)), False
    return _hit_served(None), True


def _hit_served(refused: str | None) -> bool:
    """Whether the lean hit serves under the environment; a refusal must be ``refused``."""
    try:
        return hit_settings(os.environ, None, None) is not None
    except ConfigError as exc:
        assert str(exc) == refused
        return False


@pytest.mark.parametrize(("name", "value"), BAD + ALSO_BAD)
def test_the_hit_refuses_what_the_full_settings_refuse(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    assert _hit_and_full(monkeypatch, name, value) == (False, False)


@pytest.mark.parametrize(("name", "value"), [
    ("MEDIA_REGISTRY_MIN_VALIDITY", "0.0000005"), ("MEDIA_REGISTRY_MIN_VALIDITY", "0.0000025"),
    ("MEDIA_REGISTRY_TTL", "300000.0000015"), ("MEDIA_REGISTRY_MAX_RETRIES", "2.0"),
    ("MEDIA_REGISTRY_TTL", "P30D"), ("MEDIA_REGISTRY_HOST_ID", "app-1"),
])
def test_a_value_the_hit_cannot_read_plainly_goes_the_full_path(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # Accepted by the full settings, in a form (ISO 8601, a fraction of a microsecond) whose
    # reading only pydantic can tell: no hit unless the lean reading is certain.
    hit, full = _hit_and_full(monkeypatch, name, value)
    assert full and (hit == (name == "MEDIA_REGISTRY_HOST_ID"))
