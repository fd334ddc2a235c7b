"""The Store contract's conformance suite on every backend, what only the schema can show, and
the SQLite file's own promises: named migrations from version 1, refusing what is not a
registry, linear listings."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from media_registry import ConfigError, RegistryError
from media_registry.content.hashing import Fingerprint
from media_registry.errors import RegistryCorrupt
from media_registry.store import LeaseStatus, NewMedia, Recorded, Store, migrations, open_store
from media_registry.testing.store import StoreConformance, mapping

import registry_db

V1 = Path(__file__).parent / "data" / "registry-v1.db"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
PHONE = "106540352242922"
SHA = "a" * 64


@pytest.fixture
def store(registry_db_value: str) -> Iterator[Store]:
    opened = open_store(registry_db_value)
    yield opened
    opened.close()


def fp(path: str, size: int = 10) -> Fingerprint:
    return Fingerprint(path, size, 1, 2, 3, 4)


def new_media(media_id: str, sha256: str = SHA, **changes: object) -> NewMedia:
    media = NewMedia(media_id, sha256, PHONE, "image/png", 10, NOW, NOW + timedelta(days=30))
    return media._replace(**changes)


def upload(store: Store, media_id: str, sha256: str = SHA) -> Recorded:
    outcome = store.take_lease(sha256, PHONE, "me", NOW, NOW + timedelta(days=60), timedelta(minutes=5))
    assert outcome.status is LeaseStatus.ACQUIRED
    return store.record_upload(new_media(media_id, sha256), "me")


# -- the contract --------------------------------------------------------------------------


class TestStoreContract(StoreConformance):
    """The conformance suite, on each backend the tests run on."""

    @pytest.fixture
    def store(self, registry_db_value: str) -> Iterator[Store]:
        opened = open_store(registry_db_value)
        yield opened
        opened.close()



def test_one_current_id_per_content_and_number(store: Store, registry_db_value: str) -> None:
    store.remember_path(fp("/srv/a.png"), SHA, "image/png", NOW)
    upload(store, "111")
    upload(store, "222")
    assert registry_db.media_states(registry_db_value) == [("111", "superseded"), ("222", "current")]
    # The schema itself refuses a second current ID, whoever writes it.
    with pytest.raises(Exception, match="UNIQUE|unique"):
        registry_db.execute(registry_db_value, "UPDATE media SET state = 'current' WHERE media_id = '111'")
    with pytest.raises(Exception, match="CHECK|check"):
        registry_db.execute(registry_db_value, "UPDATE media SET state = 'lost' WHERE media_id = '111'")
    with pytest.raises(Exception, match="FOREIGN KEY|foreign key"):
        registry_db.execute(registry_db_value, "INSERT INTO media (media_id, sha256, phone_number_id, state, "
                            "uploaded_at, expires_at) VALUES ('9', ?, ?, 'current', ?, ?)",
                            "b" * 64, PHONE, registry_db.stamp(NOW), registry_db.stamp(NOW))
    assert registry_db.media_states(registry_db_value)[-1] == ("222", "current")


def test_deletion_wins_even_when_the_content_is_already_gone(store: Store, registry_db_value: str) -> None:
    store.remember_path(fp("/srv/a.png"), SHA, "image/png", NOW)
    upload(store, "111")
    store.take_lease(SHA, PHONE, "me", NOW, NOW - timedelta(days=40), timedelta(minutes=5))
    store.mark_deleted(SHA, NOW, "delete")
    store.forget_media("111", NOW, "deleted")  # the remote DELETE done: the content goes
    assert registry_db.count(registry_db_value, "contents") == 0
    assert store.record_upload(new_media("444"), "me") is Recorded.CONTENT_DELETED
    assert [row.media_id for row in store.pending_deletes()] == ["444"]
    registry_db.check_consistent(registry_db_value)


def test_postgres_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "media_registry.store.postgres", raising=False)
    monkeypatch.delitem(sys.modules, "media_registry.store._pg_pool", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'media-registry\[postgres\]'"):
        open_store("postgresql://app:secret@db.example:5432/media")


# -- SQLite: named migrations ----------------------------------------------------------------


def test_a_version_1_registry_is_upgraded_in_place_keeping_every_id(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(V1, db)
    media = "SELECT media_id, sha256, phone_number_id, state, uploaded_at, expires_at FROM media ORDER BY 1"
    media_before = registry_db.query(db, media)
    events_before = registry_db.query(db, "SELECT * FROM events ORDER BY id")
    inbound_before = registry_db.query(db, "SELECT * FROM inbound")
    open_store(db, create=False).close()
    assert registry_db.query(db, media) == media_before
    assert registry_db.query(db, "SELECT * FROM events ORDER BY id") == events_before
    assert registry_db.query(db, "SELECT * FROM inbound") == inbound_before
    names = [name for name, _ in registry_db.query(db, "SELECT name, applied_at FROM migrations ORDER BY name")]
    assert names == [m.name for m in migrations.MIGRATIONS]
    assert registry_db.query(db, "PRAGMA user_version") == [(migrations.SCHEMA_VERSION,)]
    # Upgraded step by step, it has exactly the schema a new registry gets.
    fresh = tmp_path / "fresh.db"
    open_store(fresh).close()
    assert registry_db.schema(db) == registry_db.schema(fresh)


def test_a_version_1_registry_takes_url_sources_and_invalidated_ids(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(V1, db)
    current = registry_db.query(db, "SELECT media_id, sha256 FROM media WHERE state = 'current' ORDER BY media_id")
    media_id, sha256 = current[0]
    store = open_store(db)
    try:
        assert store.invalidate_media(media_id, NOW, "refused")
        store.remember_url(mapping(sha256=sha256))
        assert store.url_sources(sha256) == [mapping(sha256=sha256)]
    finally:
        store.close()
    assert registry_db.media_states(db).count((media_id, "invalidated")) == 1


def test_an_upgrade_stopped_half_way_resumes(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(V1, db)
    registry_db.upgrade_partly(db, steps=2)
    open_store(db).close()
    assert registry_db.query(db, "PRAGMA user_version") == [(migrations.SCHEMA_VERSION,)]
    assert registry_db.count(db, "migrations") == len(migrations.MIGRATIONS)


# -- SQLite: never touch what is not ours ----------------------------------------------------


def test_a_missing_registry_is_not_created_in_read_mode(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no registry at .*media-registry init"):
        open_store(tmp_path / "nothing.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_someone_elses_sqlite_file_stays_byte_identical(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    registry_db.make_foreign_database(db)
    before = db.read_bytes()
    for create in (False, True):
        with pytest.raises(RegistryCorrupt, match="not a media-registry registry \\(left untouched\\)"):
            open_store(db, create=create)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "registry.db"
    os.mkfifo(fifo)
    with pytest.raises(RegistryCorrupt, match="not a regular file"):
        open_store(fifo)


def test_the_listing_plan_reads_its_indexes_alone(tmp_path: Path) -> None:
    """Contents walked in one covering index, each content's current IDs and paths looked up
    in covering indexes of the same order: no table row read, media never scanned."""
    open_store(tmp_path / "registry.db").close()
    plan = registry_db.content_rows_plan(tmp_path / "registry.db").splitlines()
    assert plan[:2] == ["SCAN c USING COVERING INDEX contents_listed",
                        "SEARCH m USING COVERING INDEX media_listed (sha256=? AND state=?) LEFT-JOIN"]
    assert "SEARCH p USING COVERING INDEX paths_listed (sha256=?)" in plan
    assert not any("SCAN m" in step for step in plan)
