"""The full settings and the command line's lean cache hit check every setting alike: each
bad value refused by both in the same one line (or left by the hit to the full settings,
for a form only they read), each good value accepted by both. The settings come from the
settings model, so a new one fails here until it is given bad and good values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from media_registry import ConfigError, defaults
from media_registry.app._quick import FIELDS, PREFIXES, HitSettings, hit_settings
from media_registry.config import Settings, load_settings
from media_registry.setting_checks import variable

from conftest import run_cli

PHONE = "106540352242922"
# Bad values in plain text, which the lean hit reads: it refuses each itself.
BAD = {
    "token": [" \n", "EAAG first\nsecond", "two words"],
    "phone_number_id": ["+1 555", "1" * 33, "abc", ""],
    "db": ["mysql://u:p@h/d", "host=h dbname=d", "PostgreSQL://u:p@h/d"],
    "ttl": ["0", "-1", "3600"],  # 3600: shorter than the minimum validity
    "min_validity": ["0", "-5", "2592000"],  # 30 days: not shorter than the TTL
    "refresh_before": ["0", "2592000"],
    "user_agent": ["media-registry/0.1 (+https://pypi.org/)", "", "curl"],
    "download_user_agent": ["", "bad\tagent", "caf\u00e9"],
    "timeout": ["0", "-1", "86401"],
    "download_deadline": ["0", "86400.5"],
    "max_retries": ["-1", "21"],
    "retry_backoff": ["-0.5"],
    "refresh_concurrency": ["0", "65"],
    "refresh_interval": ["0", "2592000"],  # 30 days: longer than the host retention
    "purge_interval": ["-1", "1209600"],
    "busy_timeout": ["0", "-1", "1" * 20],
    "lease_seconds": ["0", "100000"],
    "uploads_per_second": ["0.001", "0"],
    "url_revalidate": ["-1", "-0.000001"],
    "repair_window": ["0", "-1"],
    "pg_pool_size": ["0", "1", "1001"],
    "local_cache_size": ["-1", "100000001"],
    "host_id": ["", " app", "app\t1", "a" * 201],
    "host_retention": ["0", "60", "3600"],  # not longer than a daemon pass (an hour)
    "archive": ["s3://", "s3://Bad_Bucket/x", "s3:/bucket"],
    "s3_checksum": ["crc32", "SHA256", ""],
    "repair_codes": ["", "131053;100", "abc", "1,-2"],
    "sent_retention": ["0", "-1"],
    "app_id": ["abc", "1" * 33, "", "+1"],
    "handle_ttl": ["0", "-1"],
}
# Bad values in forms only the full settings read (ISO 8601, exponents, JSON, URLs that are
# not plainly good): the hit leaves them to the full path, which refuses them.
BAD_UNPLAIN = {
    "api_base": ["http://example.com", "graph.facebook.com", "http://10.0.0.8:8080/v26.0", "ftp://x"],
    "ttl": ["banana", "P100000000D", "1e3x", "0.0000001"],  # zero at a duration's resolution
    "ttl_by_phone_number": ["123=3600", '{"abc": 3600}', '{"1": 59}'],
    "min_validity": ["P40D"],
    "timeout": ["abc", "1e308", "1" * 400, "nan", "inf"],
    "max_retries": ["2.5", "1e3"],
    "media_hosts": ['["fbsbx.com"]', ".example.com", '[".com"]'],
    "refresh_interval": ["P30D"],
    "lease_seconds": ["1e12"],
    "url_revalidate": ["P100000000D", "3153600001"],
    "repair_window": ["0.0000001"],
}
# Settings that take any text: no bad value (an empty one is left to the full settings).
ANY_TEXT = {"blob_dir", "service_token", "url_ignore_query", "app_secret", "webhook_verify_token",
            "s3_endpoint_url"}
# Good values in plain text: the hit serves under each.
GOOD = {
    "token": ["EAAGtoken", "EAAGtoken\n"],
    "phone_number_id": ["1", "1" * 32],
    "api_base": ["https://graph.facebook.com/v26.0", "http://127.0.0.1:8080/v26.0/"],
    "db": ["registry.db", "./host=x.db"],
    "blob_dir": ["blobs"],
    "ttl": ["345601", "2592000.5"],
    "min_validity": ["60", "0.000001"],
    "refresh_before": ["3600"],
    "user_agent": ["my-app/1.2.3"],
    "download_user_agent": ["Mozilla/5.0 (compatible)"],
    "timeout": ["0.5", "86400", " 30 "],
    "download_deadline": ["600"],
    "max_retries": ["0", "20"],
    "retry_backoff": ["0", "100000"],
    "refresh_concurrency": ["1", "64"],
    "refresh_interval": ["60"],
    "purge_interval": ["1209599"],
    "busy_timeout": ["0.001"],
    "lease_seconds": ["5"],
    "service_token": ["s3cret"],
    "uploads_per_second": ["0.01", "1000"],
    "url_revalidate": ["0", "600"],
    "repair_window": ["0.000001"],
    "url_ignore_query": ["sig, X-Goog-*"],
    "pg_pool_size": ["2", "1000"],
    "local_cache_size": ["0", "100000"],
    "host_id": ["app-1", "a" * 200],
    "host_retention": ["3601"],
    "app_secret": ["0123456789abcdef"],
    "webhook_verify_token": ["verify-me-please"],
    "archive": ["archive-folder", "s3://media-bucket/inbound", "s3://media-bucket"],
    "s3_endpoint_url": ["http://127.0.0.1:9000"],
    "s3_checksum": ["sha256", "off"],
    "repair_codes": ["131053", "131053, 131052"],
    "sent_retention": ["86400"],
    "app_id": ["847021592371350"],
    "handle_ttl": ["3600", "604800"],
}
# Good values in forms only the full settings read: the hit leaves them to the full path.
GOOD_UNPLAIN = {
    "ttl_by_phone_number": ['{"106540352242922": 3600}'],
    "media_hosts": ['[".example.com"]'],
}


def _settings(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    """An environment with the phone number ID and ``field`` set to ``value``, and no other setting."""
    for name in os.environ:
        if name.upper().startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", PHONE)
    monkeypatch.setenv(variable(field), value)


def _full_refusal() -> str | None:
    try:
        load_settings()
    except ConfigError as exc:
        return str(exc)
    return None


def _hit() -> HitSettings | str | None:
    """What the lean hit makes of the environment: its settings, its refusal, or None."""
    try:
        return hit_settings(os.environ, None, None)
    except ConfigError as exc:
        return str(exc)


def _cases(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(field, value) for field, values in table.items() for value in values]


def test_every_setting_has_bad_and_good_values() -> None:
    fields = set(Settings.model_fields)
    assert set(BAD) | set(BAD_UNPLAIN) | ANY_TEXT == fields
    assert set(GOOD) | set(GOOD_UNPLAIN) == fields


def test_the_hit_reads_the_settings_in_their_order() -> None:
    # The full settings tell the first refusal in the order of their fields; so does the hit.
    assert FIELDS == tuple(Settings.model_fields)


def test_every_default_is_the_one_in_defaults() -> None:
    for field, info in Settings.model_fields.items():
        if info.default not in (None, {}):
            default = getattr(defaults, field.upper())
            assert info.default == (Path(default) if isinstance(info.default, Path) else default), field


@pytest.mark.parametrize(("field", "value"), _cases(BAD))
def test_a_bad_plain_value_is_refused_by_both_in_the_same_words(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    _settings(monkeypatch, field, value)
    refused = _full_refusal()
    assert refused is not None and variable(field).removeprefix("MEDIA_REGISTRY_") in refused
    assert _hit() == refused


@pytest.mark.parametrize(("field", "value"), _cases(BAD_UNPLAIN))
def test_a_bad_value_in_another_form_is_left_to_the_full_settings(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    _settings(monkeypatch, field, value)
    assert _full_refusal() is not None
    assert _hit() is None


@pytest.mark.parametrize(("field", "value"), _cases(GOOD) + _cases(GOOD_UNPLAIN))
def test_a_good_value_is_accepted_by_both(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    _settings(monkeypatch, field, value)
    assert _full_refusal() is None
    assert isinstance(_hit(), HitSettings if field in GOOD else type(None))


def test_the_first_refusal_in_the_settings_order_is_the_one_told(monkeypatch: pytest.MonkeyPatch) -> None:
    _settings(monkeypatch, "host_id", "")
    monkeypatch.setenv("MEDIA_REGISTRY_TIMEOUT", "0")
    monkeypatch.setenv("WHATSAPP_TOKEN", " ")
    refused = _full_refusal()
    assert refused is not None and refused.startswith("invalid WHATSAPP_TOKEN")
    assert _hit() == refused


def test_the_db_flag_stands_for_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _settings(monkeypatch, "db", "mysql://u:p@h/d")
    hit = hit_settings(os.environ, str(tmp_path / "r.db"), None)
    assert hit is not None and hit.db == str(tmp_path / "r.db")
    assert load_settings(db=tmp_path / "r.db").db == tmp_path / "r.db"


def test_the_command_line_says_the_full_settings_words(tmp_path: Path) -> None:
    # One bad value of each setting, through a real process: refused by the lean hit, or by
    # the full path it leaves the value to, in the one line the full settings write.
    base = {name: text for name, text in os.environ.items() if not name.upper().startswith(PREFIXES)}
    base["WHATSAPP_PHONE_NUMBER_ID"] = PHONE
    for field, values in {**BAD_UNPLAIN, **BAD}.items():
        env = {**base, variable(field): values[0]}
        with pytest.MonkeyPatch.context() as monkeypatch:
            _settings(monkeypatch, field, values[0])
            refused = _full_refusal()
        result = run_cli("upload", "x.png", env=env, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (1, ""), field
        assert result.stderr == f"media-registry: error: {refused}\n", field
