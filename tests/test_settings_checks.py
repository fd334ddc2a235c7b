"""Settings that would leak the token, break the one-line promise or be silently ignored are
refused at start, in one line naming the variable or argument."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import AsyncMediaRegistry, ConfigError, MediaRegistry
from media_registry.config import load_settings
from media_registry.graph.client import GraphClient
from media_registry.testing import FakeGraphAPI

from conftest import run_cli


@pytest.mark.parametrize("base", ["http://127.0.0.1:8080/v26.0", "http://127.8.0.1/v26.0",
                                  "http://[::1]:9/v26.0", "http://localhost:9/v26.0",
                                  "https://graph.facebook.com/v26.0/"])
def test_loopback_http_and_any_https_api_base_are_accepted(base: str) -> None:
    assert load_settings(api_base=base).api_base == base.rstrip("/")


def test_the_cli_refuses_a_suffix_without_its_dot_in_one_line(cli_env: dict[str, str]) -> None:
    result = run_cli("upload", "x.png", env={**cli_env, "MEDIA_REGISTRY_MEDIA_HOSTS": '["fbsbx.com"]'})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "media-registry: error: invalid MEDIA_REGISTRY_MEDIA_HOSTS: 'fbsbx.com' is not a "
        'host suffix: write a dot and a domain, e.g. ".fbsbx.com"; fix the variable or argument'
    ]


def test_a_graph_client_made_directly_refuses_them_too() -> None:
    with pytest.raises(ConfigError, match="MEDIA_REGISTRY_MEDIA_HOSTS"):
        GraphClient(token="secret-token", api_base="https://graph.facebook.com/v26.0",
                    media_host_suffixes=["fbsbx.com"])
    with pytest.raises(ConfigError, match="WHATSAPP_API_BASE"):
        GraphClient(token="secret-token", api_base="http://graph.facebook.com/v26.0")


@pytest.mark.parametrize("token_suffix", ["\n", " ", "\r\n", "\t"])
def test_a_token_pasted_with_a_line_break_works(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI,
    make_file: Callable[..., Path], token_suffix: str,
) -> None:
    registry = make_registry(token=api.token + token_suffix)
    assert registry.get_or_upload(make_file("a.png")).isdigit()
    assert api.uploads == 1


def test_a_token_with_a_line_break_works_from_the_environment(cli_env: dict[str, str], tmp_path: Path) -> None:
    from media_registry.testing import sample_media

    (tmp_path / "a.png").write_bytes(sample_media("image/png"))
    result = run_cli("upload", str(tmp_path / "a.png"),
                     env={**cli_env, "WHATSAPP_TOKEN": cli_env["WHATSAPP_TOKEN"] + "\n"})
    assert result.returncode == 0, result.stderr
    assert "\tuploaded\t" in result.stdout


@pytest.mark.parametrize("make", [MediaRegistry, AsyncMediaRegistry])
def test_a_misspelt_argument_names_the_closest_setting(make: type, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'min_validty': did you mean min_validity?"):
        make(db=tmp_path / "r.db", min_validty=3600)
    assert not (tmp_path / "r.db").exists()


def test_load_settings_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'refresh_befor': did you mean refresh_before?"):
        load_settings(refresh_befor=60)
    with pytest.raises(ConfigError, match="unknown setting 'colour': see media_registry.Settings"):
        load_settings(colour="blue")


def test_settings_with_other_arguments_beside_them_is_refused(tmp_path: Path) -> None:
    settings = load_settings(db=tmp_path / "r.db")
    with pytest.raises(ConfigError, match=r"pass settings= or individual settings \(min_validty\), not both"):
        MediaRegistry(settings=settings, min_validty=3600)
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize(("variables", "expected"), [
    ({"MEDIA_REGISTRY_HOST_RETENTION": "60"}, "invalid MEDIA_REGISTRY_HOST_RETENTION: must be longer than"),
    ({"MEDIA_REGISTRY_HOST_RETENTION": "P1D", "MEDIA_REGISTRY_PURGE_INTERVAL": "P2D"},
     "invalid MEDIA_REGISTRY_HOST_RETENTION: must be longer than"),
    ({"MEDIA_REGISTRY_HOST_RETENTION": "-1"}, "invalid MEDIA_REGISTRY_HOST_RETENTION: must be a positive duration"),
    ({"MEDIA_REGISTRY_TTL": "-0.5"}, "invalid MEDIA_REGISTRY_TTL: must be a positive duration"),
])
def test_a_retention_shorter_than_a_daemon_pass_or_a_negative_duration_is_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=expected):
        load_settings()


@pytest.mark.parametrize("value", ["0", "0.0", "PT0S", "0.0000001", "-1"])
def test_a_repair_window_of_zero_is_refused_like_any_non_positive_one(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MEDIA_REGISTRY_REPAIR_WINDOW", value)
    with pytest.raises(ConfigError, match="invalid MEDIA_REGISTRY_REPAIR_WINDOW: must be a positive duration"):
        load_settings()
    monkeypatch.setenv("MEDIA_REGISTRY_REPAIR_WINDOW", "0.000001")
    assert load_settings().repair_window.total_seconds() == 0.000001
    with pytest.raises(ConfigError, match="invalid MEDIA_REGISTRY_REPAIR_WINDOW: must be a positive duration"):
        load_settings(repair_window=0)
