"""The PostgreSQL store on a real server: its schema and migrations, its fleet rules (paths per
host, claims that die with their session, DELETEs claimed once), and how it fails (server
down, wrong password, missing database, restarts) in one line that never shows the password."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from media_registry import RegistryCorrupt, RegistryError, RegistryUnreachable, SchemaTooNew
from media_registry.app.migrate import migrate_to_postgres
from media_registry.content.hashing import Fingerprint
from media_registry.store import Cutoffs, LeaseStatus, NewMedia, Recorded, Store, UrlSource, migrations
from media_registry.store.postgres import PostgresBackend

import registry_db
from pg_server import PostgresServer, create_database, drop_database

SHA = "ab" * 32
PHONE = "1555"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def pg_store(url: str, **options: Any) -> Store:
    """A Store over the PostgreSQL backend, with the backend's own options."""
    return Store(PostgresBackend(url, **options))


@pytest.fixture
def open_store(postgres_url: str) -> Iterator[Callable[..., Store]]:
    """Open stores on the test's database, as host ``host_id``; closed after the test."""
    opened: list[Store] = []

    def open_(host_id: str = "host-a", url: str = postgres_url, **options: object) -> Store:
        store = pg_store(url, host_id=host_id, busy_timeout=3, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def fingerprint(path: str = "/srv/media/a.png", inode: int = 7) -> Fingerprint:
    return Fingerprint(path, 10, 1_700_000_000_000_000_000, 1_700_000_000_000_000_000, inode, 2049)


def lease(store: Store, owner: str, valid_until: datetime = NOW + DAY) -> LeaseStatus:
    return store.take_lease(SHA, PHONE, owner, NOW, valid_until, timedelta(hours=1)).status


def new_media(media_id: str = "900") -> NewMedia:
    return NewMedia(media_id, SHA, PHONE, "image/png", 10, NOW, NOW + 30 * DAY, "/srv/media/a.png")


def table(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(sql).fetchall()


# -- schema ---------------------------------------------------------------------------------


def test_the_schema_is_postgresql_native_with_named_migrations(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    open_store()
    assert [row[0] for row in table(postgres_url, "SELECT name FROM migrations")] == [
        name for name, _ in migrations.POSTGRES
    ]
    types = dict(table(postgres_url, "SELECT column_name || '.' || table_name, data_type "
                                     "FROM information_schema.columns WHERE table_schema = 'public'"))
    assert types["expires_at.media"] == "timestamp with time zone"
    assert types["size_bytes.contents"] == "bigint"
    assert types["ctime_ns.paths"] == types["device.paths"] == "bigint"
    views = {row[0] for row in table(postgres_url, "SELECT table_name FROM information_schema.views "
                                                   "WHERE table_schema = 'public'")}
    assert views == {"live_media", "expiring_soon"}


def test_one_current_id_per_content_and_number_is_enforced_by_the_schema(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    store = open_store()
    store.remember_path(fingerprint(), SHA, "image/png", NOW)
    assert lease(store, "one") is LeaseStatus.ACQUIRED
    assert store.record_upload(new_media("900"), "one") is Recorded.CURRENT
    with psycopg.connect(postgres_url) as con, pytest.raises(psycopg.errors.UniqueViolation):
        con.execute("INSERT INTO media (media_id, sha256, phone_number_id, uploaded_at, expires_at) "
                    "VALUES ('901', %s, %s, now(), now() + interval '1 day')", (SHA, PHONE))


def test_first_opens_from_many_processes_at_once_apply_each_migration_once(postgres_url: str) -> None:
    script = textwrap.dedent(f"""
        from media_registry.store import open_store
        open_store({postgres_url!r}, host_id="h").close()
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, errors
    assert table(postgres_url, "SELECT count(*) FROM migrations") == [(len(migrations.POSTGRES),)]


def test_a_registry_of_the_first_schema_gains_url_sources_and_invalidated_ids(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    first_name = migrations.POSTGRES[0].name
    with psycopg.connect(postgres_url) as con:
        con.execute(migrations.schema("store/schema_postgres.sql"))
        con.execute("INSERT INTO migrations (name) VALUES (%s)", (first_name,))
        con.execute("INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
                    "VALUES (%s, 'image/png', 10, now())", (SHA,))
        con.execute("INSERT INTO media (media_id, sha256, phone_number_id, uploaded_at, expires_at) "
                    "VALUES ('900', %s, %s, now(), now() + interval '30 days')", (SHA, PHONE))
    store = open_store()
    assert [row[0] for row in table(postgres_url, "SELECT name FROM migrations ORDER BY applied_at, name")] \
        == [name for name, _ in migrations.POSTGRES]
    assert store.invalidate_media("900", NOW, "refused at send time")
    assert table(postgres_url, "SELECT media_id, state FROM media") == [("900", "invalidated")]
    store.remember_url(UrlSource("https://cdn.example/a.png", SHA, '"v1"', None, NOW, True))
    assert store.url_sources(SHA)[0].etag == '"v1"'


def test_url_mappings_are_shared_by_every_host(open_store: Callable[..., Store]) -> None:
    here, there = open_store("host-a"), open_store("host-b")
    here.remember_content(SHA, "image/png", 10, NOW)
    here.remember_url(UrlSource("https://cdn.example/a.png", SHA, None, "Tue, 24 Nov 2026", NOW, True))
    assert there.url_source("https://cdn.example/a.png") == here.url_source("https://cdn.example/a.png")
    there.forget_url("https://cdn.example/a.png", NOW, "404 from the source")
    assert here.url_sources(SHA) == []


def test_a_read_only_open_never_creates_a_registry(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    with pytest.raises(RegistryError, match="no media-registry registry in .*media-registry init"):
        open_store(create=False)
    assert table(postgres_url, "SELECT count(*) FROM information_schema.tables "
                               "WHERE table_schema = 'public'") == [(0,)]


def test_a_database_of_someone_else_is_left_untouched(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as con:
        con.execute("CREATE TABLE media (id int)")
    with pytest.raises(RegistryCorrupt, match="not a media-registry registry"):
        open_store()
    assert table(postgres_url, "SELECT count(*) FROM information_schema.tables "
                               "WHERE table_schema = 'public'") == [(1,)]


def test_a_registry_from_a_newer_version_is_refused(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    open_store().close()
    with psycopg.connect(postgres_url) as con:
        con.execute("INSERT INTO migrations (name) VALUES ('a change from the future')")
    with pytest.raises(SchemaTooNew, match="a change from the future.*pip install -U"):
        open_store()


# -- fleet rules ----------------------------------------------------------------------------


def test_paths_belong_to_their_host(open_store: Callable[..., Store]) -> None:
    a, b = open_store("host-a"), open_store("host-b")
    a.remember_path(fingerprint(), SHA, "image/png", NOW)
    assert a.lookup_path(fingerprint(), PHONE, NOW) is not None
    assert b.lookup_path(fingerprint(), PHONE, NOW) is None
    assert b.source_paths(SHA) == [] and b.sourced_contents() == []
    assert a.sourced_contents() == [SHA]
    assert b.resolve("/srv/media/a.png") is None and a.resolve("/srv/media/a.png") == SHA


def test_a_claim_is_single_flight_across_hosts_and_frees_when_recorded(
    open_store: Callable[..., Store],
) -> None:
    a, b = open_store("host-a"), open_store("host-b")
    a.remember_path(fingerprint(), SHA, "image/png", NOW)
    assert lease(a, "a-1") is LeaseStatus.ACQUIRED
    assert lease(b, "b-1") is LeaseStatus.WAIT
    assert lease(a, "a-2") is LeaseStatus.WAIT  # another thread of the same process too
    assert a.stats(NOW, Cutoffs(NOW)).leases == 1
    assert a.record_upload(new_media(), "a-1") is Recorded.CURRENT
    assert b.take_lease(SHA, PHONE, "b-1", NOW, NOW + DAY, timedelta(hours=1)).media_id == "900"
    assert a.stats(NOW, Cutoffs(NOW)).leases == 0


def test_a_claim_dies_with_its_session_whatever_the_lease_period(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    open_store("host-b").remember_path(fingerprint(), SHA, "image/png", NOW)
    script = textwrap.dedent(f"""
        import time
        from datetime import datetime, timedelta, timezone
        from media_registry.store import open_store
        store = open_store({postgres_url!r}, host_id="host-a")
        now = datetime.now(timezone.utc)
        outcome = store.take_lease({SHA!r}, {PHONE!r}, "doomed", now, now, timedelta(days=365))
        print(outcome.status.value, flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "acquired"
    b = open_store("host-b")
    assert lease(b, "b-1") is LeaseStatus.WAIT
    holder.kill()
    holder.wait(timeout=10)
    while lease(b, "b-1") is LeaseStatus.WAIT:  # the test's timeout bounds the wait
        time.sleep(0.05)
    assert b.record_upload(new_media(), "b-1") is Recorded.CURRENT


def test_a_delete_revokes_the_upload_in_flight(open_store: Callable[..., Store]) -> None:
    a, b = open_store("host-a"), open_store("host-b")
    a.remember_path(fingerprint(), SHA, "image/png", NOW)
    assert lease(a, "a-1") is LeaseStatus.ACQUIRED
    b.mark_deleted(SHA, NOW, "delete on another host")
    assert a.record_upload(new_media(), "a-1") is Recorded.CONTENT_DELETED
    assert [row.media_id for row in a.pending_deletes()] == ["900"]
    assert a.lookup_path(fingerprint(), PHONE, NOW) is None  # every host's paths are gone


def test_each_owed_delete_is_claimed_by_one_host(open_store: Callable[..., Store]) -> None:
    a, b = open_store("host-a"), open_store("host-b")
    a.remember_path(fingerprint(), SHA, "image/png", NOW)
    for media_id in ("900", "901", "902"):
        assert lease(a, media_id, valid_until=NOW + 60 * DAY) is LeaseStatus.ACQUIRED  # refreshes
        a.record_upload(new_media(media_id), media_id)
    a.mark_deleted(SHA, NOW, "test")
    first = a.claim_deletes(None, timedelta(minutes=5))
    assert [row.media_id for row in first] == ["900", "901", "902"]
    assert b.claim_deletes(None, timedelta(minutes=5)) == []
    assert len(b.pending_deletes()) == 3  # still owed, for people to see


def test_a_host_unseen_for_the_retention_period_loses_its_paths(
    open_store: Callable[..., Store], postgres_url: str
) -> None:
    gone = open_store("gone-host")
    gone.remember_path(fingerprint(), SHA, "image/png", NOW)
    with psycopg.connect(postgres_url) as con:
        con.execute("UPDATE hosts SET last_seen_at = now() - interval '15 days' WHERE host_id = 'gone-host'")
    open_store("host-b", host_retention=timedelta(days=14)).sourced_contents()  # purge's first step
    assert table(postgres_url, "SELECT host_id FROM hosts") == [("host-b",)]
    assert table(postgres_url, "SELECT count(*) FROM paths") == [(0,)]
    assert table(postgres_url, "SELECT count(*) FROM contents") == [(1,)]  # the content stays


# -- bad conditions -------------------------------------------------------------------------


def test_a_server_that_is_down(postgres_server: PostgresServer) -> None:
    postgres_server.stop()
    with pytest.raises(RegistryUnreachable) as caught:
        pg_store(postgres_server.url(), host_id="h")
    message = str(caught.value)
    assert "127.0.0.1" in message and "Connection refused" in message and "start PostgreSQL" in message
    assert postgres_server.password not in message and "\n" not in message


def test_a_wrong_password(postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RegistryError) as caught:
        pg_store(postgres_server.url(password="not-the-password"), host_id="h")
    assert "refused the password" in str(caught.value)
    assert "not-the-password" not in str(caught.value) + caplog.text


def test_a_missing_database(postgres_server: PostgresServer) -> None:
    with pytest.raises(RegistryError, match='database "nope" does not exist; create it') as caught:
        pg_store(postgres_server.url("nope"), host_id="h")
    assert postgres_server.password not in str(caught.value)


def test_the_next_call_after_a_restart_works(postgres_server: PostgresServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = create_database(postgres_server.url())
    store = pg_store(url, host_id="h", pool_size=4)
    try:
        store.remember_path(fingerprint(), SHA, "image/png", NOW)
        postgres_server.stop()
        postgres_server.start()
        assert store.lookup_path(fingerprint(), PHONE, NOW) is not None  # every pooled session died
        postgres_server.stop()
        with pytest.raises(RegistryUnreachable, match="cannot reach the server"):
            store.lookup_path(fingerprint(), PHONE, NOW)
        postgres_server.start()
        assert store.sourced_contents()
    finally:
        store.close()
    assert postgres_server.password not in caplog.text


def test_a_restart_during_an_upload_leaves_no_claim_behind(postgres_server: PostgresServer) -> None:
    url = create_database(postgres_server.url())
    a = pg_store(url, host_id="a")
    try:
        a.remember_path(fingerprint(), SHA, "image/png", NOW)
        assert lease(a, "a-1") is LeaseStatus.ACQUIRED
        postgres_server.stop()  # the upload is on its way to the API meanwhile
        postgres_server.start()
        # The claim died with its session: another uploader may start while this one records.
        assert lease(a, "a-2") is LeaseStatus.ACQUIRED
        assert a.record_upload(new_media("900"), "a-1") is Recorded.CLAIM_LOST
        assert a.record_upload(new_media("901"), "a-2") is Recorded.CURRENT
        assert a.stats(NOW, Cutoffs(NOW)).leases == 0
        assert [row.media_id for row in a.pending_deletes()] == ["900"]  # never lost, never served
    finally:
        a.close()
        drop_database(postgres_server.url(), url)


def test_the_password_never_shows_in_stats(open_store: Callable[..., Store], postgres_url: str) -> None:
    password = psycopg.conninfo.conninfo_to_dict(postgres_url)["password"]
    stats = open_store().stats(NOW, Cutoffs(NOW))
    assert str(password) not in repr(stats)
    assert stats.backend["db"] == postgres_url.replace(f":{password}@", "@")


def test_migrate_copies_a_first_schema_registry_and_leaves_it_byte_identical(
    postgres_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "registry-v1.db"
    shutil.copy(Path(__file__).parent / "data" / "registry-v1.db", db)
    before = db.read_bytes()
    copies = {copy.table: copy for copy in migrate_to_postgres(db, postgres_url, host_id="old-host")}
    assert db.read_bytes() == before
    assert all(copy.copied == copy.source_rows for copy in copies.values())
    assert copies["contents"].source_rows == 3 and copies["url_sources"].source_rows == 0
    states = "SELECT state, count(*) FROM media GROUP BY state ORDER BY 1"
    assert registry_db.query(postgres_url, states) == registry_db.query(str(db), states)
    assert {host for (host,) in table(postgres_url, "SELECT DISTINCT host_id FROM paths")} == {"old-host"}
