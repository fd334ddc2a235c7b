"""What a hostile user or an unlucky day does to a PostgreSQL registry: malformed URLs and
passwords that must never show, servers restarted under long-lived processes, odd settings.
Each test was a defect once; all run against a real PostgreSQL server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from media_registry import ConfigError, MediaRegistry, RegistryCorrupt, RegistryUnreachable
from media_registry.config import load_settings
from media_registry.store import Store
from media_registry.store.postgres import PostgresBackend
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, PNG, run_cli, settle, wait_for
from pg_server import PostgresServer, create_database


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


# -- a long-lived process and a server restart ---------------------------------------------------


def test_the_first_call_after_a_long_outage_works_in_a_long_lived_process(
    postgres_server: PostgresServer,
) -> None:
    store = Store(PostgresBackend(create_database(postgres_server.url()), host_id="app-1", busy_timeout=1))
    try:
        assert store.sourced_contents() == []
        postgres_server.stop()
        for _ in range(10):  # the pool's reconnection backoff grows with each failed attempt
            with pytest.raises(RegistryUnreachable, match="cannot reach the server"):
                store.sourced_contents()
        postgres_server.start()
        assert store.sourced_contents() == []
    finally:
        store.close()


def test_a_daemon_rides_out_a_restart_keeping_its_host_lock_and_one_log_line_per_failed_pass(
    postgres_server: PostgresServer, api: FakeGraphAPI, tmp_path: Path,
) -> None:
    env = {"PATH": os.environ["PATH"], "WHATSAPP_TOKEN": api.token,
           "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "WHATSAPP_API_BASE": api.base_url,
           "MEDIA_REGISTRY_DB": create_database(postgres_server.url()),
           "MEDIA_REGISTRY_BUSY_TIMEOUT": "1", "MEDIA_REGISTRY_HOST_ID": "app-1"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(CLI), "daemon", "--refresh-every", "1", "--purge-every", "1",
                                   "--metrics-port", str(port)], env=env, stdout=out, stderr=out)
    try:
        wait_for(lambda: "refresh done" in log.read_text(), "the first refresh pass")
        postgres_server.stop()
        wait_for(lambda: log.read_text().count("refresh failed") >= 3, "failed passes while it is down")
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        assert scraped.status_code == 503, scraped.text
        assert scraped.json()["error"]["message"].startswith("RegistryUnreachable: The PostgreSQL server could not")
        assert "cannot reach the server" in log.read_text()  # the details, in the log only
        postgres_server.start()
        done = log.read_text().count("refresh done")
        wait_for(lambda: log.read_text().count("refresh done") > done, "a pass after the restart")
        assert daemon.poll() is None
        # The restart ended the session holding this host's daemon lock: the pass took it again.
        second = run_cli("daemon", env=env)
        assert second.returncode == 1 and "another media-registry daemon already serves host app-1" in second.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    lines = log.read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in lines), lines  # no traceback, no hints
    assert postgres_server.password not in log.read_text()


# -- a database that is not ours ---------------------------------------------------------------


@pytest.mark.parametrize("statements", [
    ["CREATE TABLE users (id int)"],  # another application's database
    ["CREATE TABLE migrations (id serial, migration text, batch int)",  # Laravel's bookkeeping
     "INSERT INTO migrations (migration, batch) VALUES ('2014_10_12_create_users', 1)"],
    ["CREATE TABLE migrations (id serial, timestamp bigint, name text)",  # TypeORM's
     "INSERT INTO migrations (timestamp, name) VALUES (1, 'AddUsers1700000000')"],
], ids=["unrelated table", "laravel migrations", "typeorm migrations"])
def test_another_applications_database_is_left_untouched(postgres_url: str, statements: list[str]) -> None:
    with psycopg.connect(postgres_url) as con:
        for statement in statements:
            con.execute(statement)
    with pytest.raises(RegistryCorrupt, match="not a media-registry registry .left untouched.; point"):
        Store(PostgresBackend(postgres_url, host_id="app-1"))
    assert registry_db.query(postgres_url, "SELECT count(*) FROM information_schema.tables "
                                           "WHERE table_schema = 'public'") == [(1,)]


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host_id", [" ", "app-1\nERROR forged log line", "app\t1", " app-1"])
def test_a_host_id_that_would_break_a_log_line_is_refused(host_id: str, tmp_path: Path) -> None:
    result = run_cli("stats", env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_HOST_ID": host_id,
                                   "MEDIA_REGISTRY_DB": str(tmp_path / "registry.db")})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "invalid MEDIA_REGISTRY_HOST_ID" in result.stderr and "plain name such as app-1" in result.stderr


# -- uploads in flight and cache hits --------------------------------------------------------------


def test_uploads_in_flight_never_starve_cache_hits_of_connections(
    postgres_url: str, api: FakeGraphAPI, make_file: Callable[..., Path],
) -> None:
    registry = MediaRegistry(db=postgres_url, token=api.token, phone_number_id=api.phone_number_id,
                             api_base=api.base_url, pg_pool_size=2, busy_timeout=1)
    try:
        known = make_file("known.png")
        registry.get_or_upload(known)
        settle(known)
        known_id = registry.get_or_upload(known)  # now a trusted fingerprint: a hit
        api.fail(delay=5, method="POST", times=2)  # two slow uploads, each holding its claim
        slow = [threading.Thread(target=registry.get_or_upload, args=(make_file(f"slow-{i}.png"),))
                for i in range(2)]
        for thread in slow:
            thread.start()
        wait_for(lambda: api.count("POST") == 3, "both uploads to reach the API")
        assert registry.get_or_upload(known) == known_id
        assert registry.get_or_upload(known.read_bytes(), mime_type=PNG) == known_id
        for thread in slow:
            thread.join()
    finally:
        registry.close()


def test_a_read_only_role_inspects_the_registry_and_writes_nothing(
    postgres_url: str, api: FakeGraphAPI, make_file: Callable[..., Path],
) -> None:
    env = {"PATH": os.environ["PATH"], "WHATSAPP_TOKEN": api.token, "MEDIA_REGISTRY_HOST_ID": "app-1",
           "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "WHATSAPP_API_BASE": api.base_url,
           "MEDIA_REGISTRY_DB": postgres_url}
    assert run_cli("upload", str(make_file("a.png")), env=env).returncode == 0
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-pw-123'")
        con.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        parts = urlsplit(postgres_url)
        reader = parts._replace(netloc=f"{role}:reader-pw-123@{parts.hostname}:{parts.port}").geturl()
        hosts = registry_db.query(postgres_url, "SELECT * FROM hosts")
        for command in ("stats", "ls"):
            result = run_cli(command, env={**env, "MEDIA_REGISTRY_DB": reader, "MEDIA_REGISTRY_HOST_ID": "inspector"})
            assert result.returncode == 0, result.stderr
        assert registry_db.query(postgres_url, "SELECT * FROM hosts") == hosts
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"DROP OWNED BY {role}")
            con.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("url", ["PostgreSQL://app:Secret-pw-42@db/reg", "postgresql+psycopg://app:Secret-pw-42@db/reg",
                                 " postgresql://app:Secret-pw-42@db/reg", "mysql://app:Secret-pw-42@db/reg"])
def test_a_database_url_of_another_form_is_no_file_path(url: str, tmp_path: Path) -> None:
    result = run_cli("init", env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": url}, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "Secret-pw-42" not in result.stderr
    assert "is neither a file path nor a postgresql:// URL" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("password", ["registry", "postgres", "12345678"])
def test_a_dictionary_password_does_not_mangle_and_so_reveal_itself_in_messages(password: str) -> None:
    url = f"postgresql://postgres:{password}@127.0.0.1:1/registry"
    result = run_cli("stats", env={"PATH": os.environ["PATH"], "MEDIA_REGISTRY_DB": url})
    assert result.returncode == 1
    assert "<password>" not in result.stderr  # the words "registry", "postgresql" stay as they are
    assert result.stderr.startswith(
        "media-registry: error: PostgreSQL registry postgresql://postgres@127.0.0.1:1/registry: "
        "cannot reach the server (Connection refused)"), result.stderr
