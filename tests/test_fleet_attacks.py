"""What a hostile user or an unlucky day does to a PostgreSQL registry: malformed URLs and
passwords that must never show, servers restarted under long-lived processes, odd settings.
Each test was a defect once; all run against a real PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from media_registry import ConfigError, MediaRegistry
from media_registry.config import load_settings

import registry_db
from conftest import PNG, run_cli


def test_stats_counts_each_phone_numbers_live_expiring_and_expired_ids(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path], registry_db_value: str,
) -> None:
    registry = make_registry()
    for name in ("a.png", "b.png", "c.png"):
        registry.get_or_upload(make_file(name, PNG))
    registry_db.execute(registry_db_value, "UPDATE media SET expires_at = ? WHERE media_id IN "
                        "(SELECT media_id FROM media ORDER BY media_id LIMIT 1)",
                        registry_db.stamp(datetime.now(timezone.utc)))
    stats = registry.stats()
    assert stats["by_phone_number"] == {
        registry.settings.phone_number_id: {"live_ids": 2, "expiring_ids": 0, "expired_ids": 1}
    }


# -- the password never shows, however the URL is written --------------------------------------

RAW_PASSWORD = "Se@cr:et%2Fpw#1?x"  # every character a URL gives a meaning to, unencoded
PIECES = ("Se@cr", "cr:et", "et%2Fpw", "pw#1", "1?x")


@pytest.mark.parametrize("url", [
    f"postgresql://app:{RAW_PASSWORD}@127.0.0.1:5432/registry",
    f"postgresql://app@127.0.0.1:5432/registry?password={RAW_PASSWORD}",
    f"postgres://app:{RAW_PASSWORD}@/registry?host=/nowhere",
])
def test_an_unencoded_password_never_shows(url: str, tmp_path: Path) -> None:
    for args in (("stats",), ("--debug", "stats"), ("ls",)):
        result = run_cli(*args, env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": url,
                                     "MEDIA_REGISTRY_BUSY_TIMEOUT": "1"}, cwd=tmp_path)
        assert result.returncode == 1
        assert not [piece for piece in PIECES if piece in result.stdout + result.stderr], result.stderr
        if "--debug" not in args:
            assert result.stderr.count("\n") == 1, result.stderr
    try:
        shown = repr(load_settings(db=url))
    except ConfigError as exc:
        shown = str(exc)
    assert not [piece for piece in PIECES if piece in shown]


def test_a_url_without_a_host_says_which_socket_it_tried(tmp_path: Path) -> None:
    for url in ("postgresql:///registry", f"postgresql://app:s3cret-pw@/registry?host={tmp_path}"):
        result = run_cli("stats", env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": url})
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "s3cret-pw" not in result.stderr
        assert f"PostgreSQL registry {url.replace(':s3cret-pw', '')}: cannot reach the server" in result.stderr
        assert ".s.PGSQL.5432" in result.stderr and "start PostgreSQL" in result.stderr


def test_repr_of_settings_hides_a_query_password() -> None:
    settings = load_settings(db="postgresql://app@db.example:5432/registry?password=hunter2-pw&sslmode=require")
    assert "hunter2-pw" not in repr(settings) + str(settings.db)
    assert str(settings.db) == "postgresql://app@db.example:5432/registry?sslmode=require"
