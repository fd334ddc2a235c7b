"""`media-registry doctor` against the local Graph API: a healthy setup exits 0; each broken
one (bad token, unknown number, unreachable PostgreSQL, unwritable folder, skewed clock) exits
1 with the line that says so; no secret is ever printed. Real subprocesses; the version and
clock checks also in process, on a pinned clock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from media_registry.app.doctor import (
    FAIL,
    OK,
    WARN,
    Setup,
    check_archive,
    check_clock,
    check_token,
    check_version,
    check_webhooks,
    diagnose,
)
from media_registry.config import load_settings
from media_registry.testing import FakeGraphAPI
from s3_server import CREDENTIALS, S3

from conftest import CLI, run_cli, unprivileged, wait_for

pytestmark = pytest.mark.sqlite_only  # PostgreSQL's line is checked below by URL


@pytest.fixture
def env(cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path) -> dict[str, str]:
    return {**cli_env, "WHATSAPP_APP_ID": api.app_id, "MEDIA_REGISTRY_BLOB_DIR": str(tmp_path / "blobs")}


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Each check's line by its name (the symbol first)."""
    found = {}
    for line in result.stdout.splitlines():
        symbol, _, rest = line.partition(" ")
        name, _, message = rest.partition(": ")
        if symbol in "✓!✗":
            found[name] = f"{symbol} {message}"
    return found


def test_a_healthy_setup_exits_0_with_every_check(env: dict[str, str], api: FakeGraphAPI) -> None:
    assert run_cli("init", env=env).returncode == 0
    result = run_cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    assert found["settings"] == "✓ valid"
    assert found["registry"].startswith("✓ ") and "(SQLite 3." in found["registry"]
    assert found["registry"].endswith("schema current")
    assert found["token"] == "✓ accepted by the Graph API [network]"
    assert found[f"phone number {api.phone_number_id}"].startswith("✓ +1 555-0100")
    assert found["app"].startswith(f"✓ {api.app_id}")
    assert found["api version"] == "✓ Graph API v26.0: no end date published yet"
    assert found["clock"].startswith("✓ agrees")
    assert found["download folder"].startswith("✓ ")
    assert found["archive"] == "✓ in the download folder (MEDIA_REGISTRY_ARCHIVE is not set)"
    assert found["webhooks"].startswith("! not configured")
    assert found["daemon"].startswith("! none is running")  # a warning: still exit 0
    assert api.token not in result.stdout + result.stderr
    report = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert report["healthy"] is True
    assert {check["check"]: check["network"] for check in report["checks"]}["token"] is True
    assert {check["check"]: check["status"] for check in report["checks"]}["registry"] == OK


def test_a_healthy_postgresql_registry_names_its_server(env: dict[str, str], postgres_url: str) -> None:
    pg_env = {**env, "MEDIA_REGISTRY_DB": postgres_url}
    assert run_cli("init", env=pg_env).returncode == 0
    result = run_cli("doctor", env=pg_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(PostgreSQL " in lines(result)["registry"] and "schema current" in lines(result)["registry"]


def test_a_running_daemon_is_seen_holding_the_lock(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    assert run_cli("init", env=env).returncode == 0
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(CLI), "daemon"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "refresh done" in log.read_text(), "the daemon's first pass")
        result = run_cli("doctor", env=env)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert lines(result)["daemon"] == "✓ one holds the registry's lock; no ID refreshed yet"


def test_invalid_settings_are_the_one_line(env: dict[str, str]) -> None:
    result = run_cli("doctor", env={**env, "MEDIA_REGISTRY_TTL": "0"})
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["✗ settings: invalid MEDIA_REGISTRY_TTL: must be a positive duration "
                                          "up to 36500 days; fix the variable or argument"]


def test_a_bad_token(env: dict[str, str]) -> None:
    result = run_cli("doctor", env={**env, "WHATSAPP_TOKEN": "EAAGwrong-token-value"})
    assert result.returncode == 1
    assert lines(result)["token"].startswith("✗ Graph API rejected the access token")
    assert lines(result)["clock"].startswith("✓ agrees with the Graph API's")  # the 401's Date
    assert "EAAGwrong-token-value" not in result.stdout + result.stderr


def test_the_clock_is_checked_against_a_refused_tokens_answer(api: FakeGraphAPI, tmp_path: Path) -> None:
    settings = load_settings(db=str(tmp_path / "r.db"), token="EAAGwrong-token-value",
                             phone_number_id=api.phone_number_id, api_base=api.base_url)
    skewed = Setup(settings, clock=lambda: datetime.now(timezone.utc) + timedelta(hours=2))
    token, clock = diagnose(skewed, [check_token, check_clock])
    assert (token.check, token.status) == ("token", FAIL)
    assert clock.status == FAIL and "s ahead of the Graph API's Date" in clock.message


def test_an_unknown_phone_number(env: dict[str, str]) -> None:
    result = run_cli("doctor", env={**env, "WHATSAPP_PHONE_NUMBER_ID": "999000999"})
    assert result.returncode == 1
    assert lines(result)["phone number 999000999"].startswith("✗ the token cannot read it")


def test_an_unreachable_postgresql_never_shows_its_password(env: dict[str, str]) -> None:
    url = "postgresql://registry:s3cretpw@127.0.0.1:1/registry"  # nothing listens on port 1
    result = run_cli("doctor", env={**env, "MEDIA_REGISTRY_DB": url})
    assert result.returncode == 1
    assert lines(result)["registry"].startswith("✗ cannot reach PostgreSQL at postgresql://registry@127.0.0.1:1/")
    assert "s3cretpw" not in result.stdout + result.stderr


def test_an_unwritable_download_folder(env: dict[str, str], tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    blobs.chmod(0o555)
    try:
        result = subprocess.run(unprivileged(str(CLI), "doctor"), env=env, capture_output=True, text=True,
                                timeout=60)
    finally:
        blobs.chmod(0o755)
    assert result.returncode == 1
    assert lines(result)["download folder"] == (f"✗ {blobs} is not writable (Permission denied); fix its "
                                                "permissions or set MEDIA_REGISTRY_BLOB_DIR")


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
def test_a_skewed_clock_under_faketime(env: dict[str, str]) -> None:
    result = subprocess.run(["faketime", "-f", "+2h", str(CLI), "doctor"], env={**env, **_faketime_env()},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "s ahead of the Graph API's Date" in lines(result)["clock"] and lines(result)["clock"].startswith("✗ ")


def _faketime_env() -> dict[str, str]:
    return {"FAKETIME_DONT_FAKE_MONOTONIC": "1", "PATH": os.environ.get("PATH", "")}


@pytest.mark.parametrize(("skew", "status"), [(timedelta(seconds=30), OK), (timedelta(minutes=2), WARN),
                                              (timedelta(hours=-2), FAIL)])
def test_the_clock_check_on_a_pinned_clock(api: FakeGraphAPI, tmp_path: Path, skew: timedelta, status: str) -> None:
    settings = load_settings(db=str(tmp_path / "r.db"), token=api.token, phone_number_id=api.phone_number_id,
                             api_base=api.base_url)
    findings = diagnose(Setup(settings, clock=lambda: datetime.now(timezone.utc) + skew), [check_token, check_clock])
    assert findings[-1].check == "clock" and findings[-1].status == status


@pytest.mark.parametrize(("version", "status", "message"), [
    ("v21.0", FAIL, "Graph API v21.0 was retired by Meta on 21 January 2027"),
    ("v25.0", WARN, "Graph API v25.0 stops working on 29 July 2028"),
    ("v26.0", OK, "Graph API v26.0: no end date published yet"),
])
def test_the_version_check_on_a_pinned_clock(api: FakeGraphAPI, tmp_path: Path, version: str, status: str,
                                             message: str) -> None:
    settings = load_settings(db=str(tmp_path / "r.db"), api_base=f"{api.origin}/{version}")
    day = datetime(2028, 6, 1, tzinfo=timezone.utc)
    (finding,) = diagnose(Setup(settings, clock=lambda: day), [check_version])
    assert (finding.status, finding.message.split(";")[0]) == (status, message)


def test_the_archive_folder_and_bucket(tmp_path: Path, s3: S3) -> None:
    def archive_finding(archive: str, **settings: str) -> tuple[str, str]:
        loaded = load_settings(db=str(tmp_path / "r.db"), archive=archive, **settings)
        (finding,) = diagnose(Setup(loaded), [check_archive])
        return finding.status, finding.message

    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"x")
    assert archive_finding(str(not_a_folder)) == (
        FAIL, f"{not_a_folder} is not a folder; fix its permissions or set MEDIA_REGISTRY_ARCHIVE")
    assert archive_finding(str(tmp_path / "kept"))[0] == OK
    bucket = s3.bucket()
    assert archive_finding(f"s3://{bucket}/inbox", s3_endpoint_url=s3.url) == (OK, f"s3://{bucket}/inbox reachable")
    status, message = archive_finding("s3://no-such-bucket-here/inbox", s3_endpoint_url=s3.url)
    assert status == FAIL and "no such bucket" in message
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in message


@pytest.mark.parametrize(("secrets", "status", "names"), [
    ({}, WARN, ["WHATSAPP_APP_SECRET", "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN"]),
    ({"app_secret": "app-secret-value"}, WARN, ["MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN"]),
    ({"webhook_verify_token": "verify-token-value"}, WARN, ["WHATSAPP_APP_SECRET"]),
    ({"app_secret": "app-secret-value", "webhook_verify_token": "verify-token-value"}, OK, []),
])
def test_the_webhook_secrets_are_named_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   secrets: dict[str, str], status: str, names: list[str]) -> None:
    for name in ("WHATSAPP_APP_SECRET", "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(db=str(tmp_path / "r.db"), **secrets)
    (finding,) = diagnose(Setup(settings), [check_webhooks])
    assert finding.status == status
    assert all(name in finding.message for name in names)
    assert "app-secret-value" not in finding.message and "verify-token-value" not in finding.message
