"""Secrets are redacted from every error, log line and traceback, whatever path produced it."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from media_registry import DownloadError, GraphAPIError, MediaRegistry, RegistryError
from media_registry.config import load_settings
from media_registry.dburl import PostgresURL
from media_registry.errors import RedactingFilter, register_secret
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import run_cli

TOKEN = "EAAG" + secrets.token_urlsafe(48).replace("-", "x").replace("_", "y")


@pytest.fixture
def secret_api() -> Iterator[FakeGraphAPI]:
    with FakeGraphAPI(token=TOKEN) as api:
        yield api


@pytest.fixture
def env(secret_api: FakeGraphAPI, cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "WHATSAPP_TOKEN": TOKEN, "WHATSAPP_API_BASE": secret_api.base_url,
            "WHATSAPP_PHONE_NUMBER_ID": secret_api.phone_number_id}


@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize(("before", "after"), [((), ()), ((), ("--json",)), (("--debug",), ())])
def test_a_media_host_echoing_the_token_is_redacted_in_the_cli(
    secret_api: FakeGraphAPI, env: dict[str, str], tmp_path: Path, status: int,
    before: tuple[str, ...], after: tuple[str, ...],
) -> None:
    media_id = secret_api.add_media(sample_media("image/jpeg"), "image/jpeg")
    secret_api.fail(path="/download/", status=status, code=190, message=f"bad token {TOKEN}", times=10)
    result = run_cli(*before, "download", media_id, "--out", str(tmp_path / "in"), *after, env=env)
    assert result.returncode == 1
    assert "<token>" in result.stderr  # the server's message is shown, the token is not
    assert TOKEN not in result.stdout + result.stderr and TOKEN[:20] not in result.stderr
    if before:
        assert "Traceback" in result.stderr
    else:
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_download_error_never_carries_the_token(secret_api: FakeGraphAPI, tmp_path: Path) -> None:
    media_id = secret_api.add_media(b"hello", "text/plain")
    secret_api.fail(path="/download/", status=500, message=f"upstream said Bearer {TOKEN}")
    with MediaRegistry(db=tmp_path / "r.db", token=TOKEN, api_base=secret_api.base_url,
                       phone_number_id=secret_api.phone_number_id, max_retries=0) as registry:
        with pytest.raises(GraphAPIError) as caught:
            registry.download(media_id, tmp_path / "in")
    error = caught.value
    assert TOKEN not in str(error) and TOKEN not in repr(error) and TOKEN not in repr(error.args)


def test_a_registered_database_password_is_redacted_like_the_token() -> None:
    password = "pg-" + secrets.token_hex(12)
    register_secret(password, "password")
    error = RegistryError(f"cannot connect to postgresql://app:{password}@db:5432/media")
    assert password not in str(error) and "app:<password>@db" in str(error)


def test_short_values_are_not_registered_as_secrets() -> None:
    register_secret("t", "token")  # replacing every "t" would make every message unreadable
    assert str(DownloadError("the transfer stopped")) == "the transfer stopped"


def test_log_lines_and_their_tracebacks_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + secrets.token_hex(12)
    register_secret(password, "password")
    logger = logging.getLogger("media_registry.test")
    redacting = RedactingFilter()
    logger.addFilter(redacting)
    try:
        try:
            raise ValueError(f"server said {password}")  # an unforeseen error, not ours
        except ValueError:
            logger.exception("job failed with %s", password)
    finally:
        logger.removeFilter(redacting)
    record = caplog.records[-1]
    text = logging.Formatter().format(record)
    assert password not in text and "job failed with <password>" in text
    assert "server said <password>" in text


@pytest.mark.parametrize("command", [("stats",), ("upload", "card.png")])
def test_a_libpq_keyword_string_is_refused_without_echoing_it(
    command: tuple[str, ...], secret_api: FakeGraphAPI, tmp_path: Path,
) -> None:
    (tmp_path / "card.png").write_bytes(sample_media("image/png"))
    db = "host=127.0.0.1 port=5432 dbname=fleet user=app password=Kw-secret-42"
    result = run_cli(*command, env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": db, "WHATSAPP_TOKEN": TOKEN,
                                    "WHATSAPP_API_BASE": secret_api.base_url,
                                    "WHATSAPP_PHONE_NUMBER_ID": secret_api.phone_number_id}, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "libpq keyword string" in result.stderr and "give postgresql://" in result.stderr
    assert "Kw-secret-42" not in result.stdout + result.stderr and "fleet" not in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["card.png"]  # no file of that name


def test_a_password_query_key_is_redacted_whatever_its_case(tmp_path: Path) -> None:
    db = "postgresql://app@127.0.0.1:1/registry?sslmode=disable&PASSWORD=Up-secret-42"
    for args in (("stats",), ("--debug", "ls")):
        result = run_cli(*args, env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": db}, cwd=tmp_path)
        assert result.returncode == 1
        assert "Up-secret-42" not in result.stdout + result.stderr, result.stderr
        assert "postgresql://app@127.0.0.1:1/registry?sslmode=disable" in result.stderr
    assert "Up-secret-42" not in repr(load_settings(db=db.replace("PASSWORD", "Password")))


@pytest.mark.parametrize("key", ["%70assword", "pass%77ord", "PASS%57ORD"])
def test_a_percent_encoded_password_query_key_is_redacted(tmp_path: Path, key: str) -> None:
    import psycopg

    db = f"postgresql://app@127.0.0.1:1/registry?sslmode=disable&{key}=Enc-secret-42"
    if key.islower():  # libpq decodes the key, and logs in with the password it names
        assert psycopg.conninfo.conninfo_to_dict(db)["password"] == "Enc-secret-42"
    assert str(PostgresURL(db)) == "postgresql://app@127.0.0.1:1/registry?sslmode=disable"
    for args in (("stats",), ("ls",)):
        result = run_cli(*args, env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": db}, cwd=tmp_path)
        assert result.returncode == 1
        assert "Enc-secret-42" not in result.stdout + result.stderr, result.stderr
    assert run_cli("init", env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": "r.db"}, cwd=tmp_path).returncode == 0
    result = run_cli("migrate", env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": "r.db",
                                        "MEDIA_REGISTRY_MIGRATE_TO": db}, cwd=tmp_path)
    assert result.returncode == 1 and "Enc-secret-42" not in result.stdout + result.stderr, result.stderr
