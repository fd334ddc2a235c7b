"""``migrate`` run again converges: what changed in the SQLite file since the last run reaches
PostgreSQL, and what the fleet wrote there meanwhile stays."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from media_registry import MediaRegistry
from media_registry.app.migrate import migrate_to_postgres
from media_registry.store.inbox import Inbox, NewItem
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db


@pytest.fixture
def open_registry(api: FakeGraphAPI) -> Iterator[Callable[..., MediaRegistry]]:
    made: list[MediaRegistry] = []

    def make(db: str, **overrides: Any) -> MediaRegistry:
        made.append(MediaRegistry(db=db, token=api.token, phone_number_id=api.phone_number_id,
                                  api_base=api.base_url, retry_backoff=0.01, max_retries=1, **overrides))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


def current(db: str, sha256: str) -> list[str]:
    return [row[0] for row in registry_db.query(
        db, "SELECT media_id FROM media WHERE sha256 = ? AND state = 'current'", sha256)]


def deleted(db: str, sha256: str) -> bool:
    return registry_db.query(db, "SELECT deleted_at IS NOT NULL FROM contents WHERE sha256 = ?", sha256)[0][0]


def test_a_second_run_brings_every_change_of_the_file_and_keeps_the_fleets(
    api: FakeGraphAPI, tmp_path: Path, postgres_url: str, make_file: Callable[..., Path],
    open_registry: Callable[..., MediaRegistry],
) -> None:
    db = str(tmp_path / "registry.db")
    local = open_registry(db)
    files = {name: make_file(f"{name}.png") for name in ("refused", "gone", "owed", "back", "kept", "fleets")}
    ids = {name: local.get_or_upload(path) for name, path in files.items() if name != "fleets"}
    sha = {name: str(registry_db.query(db, "SELECT sha256 FROM paths WHERE path = ?", str(path))[0][0])
           if name != "fleets" else "" for name, path in files.items()}
    for table, column in (("contents", "first_seen_at"), ("media", "uploaded_at"), ("paths", "seen_at")):
        # The file last used "kept" long before the fleet deletes it (a tie goes to the file).
        registry_db.execute(db, f"UPDATE {table} SET {column} = '2020-01-01T00:00:00Z' WHERE sha256 = ?",
                            sha["kept"])
    for name in ("back", "owed"):  # their DELETEs stay owed
        api.fail(status=500, method="DELETE", path=ids[name], times=100)
    local.delete(files["back"])  # deleted before the first run, uploaded again after it
    migrate_to_postgres(db, postgres_url, host_id="app-1")
    assert registry_db.count(postgres_url, "media") == 5 and deleted(postgres_url, sha["back"])

    local.invalidate(ids["refused"])
    local.delete(files["gone"])  # its DELETE done: the file forgets the ID and the content
    local.delete(files["owed"])
    back = local.get_or_upload(files["back"])
    fleet = open_registry(postgres_url, host_id="app-2")
    fleets = fleet.get_or_upload(files["fleets"])
    fleet.delete(sha["kept"])  # the fleet's deletion is newer than the file's last word on it

    second = {copy.table: copy for copy in migrate_to_postgres(db, postgres_url, host_id="app-1")}
    assert registry_db.query(postgres_url, "SELECT state FROM media WHERE media_id = ?", ids["refused"]) == [
        ("invalidated",)]
    assert current(postgres_url, sha["gone"]) == [] and deleted(postgres_url, sha["gone"])
    assert ids["owed"] in registry_db.media_ids(postgres_url, "deleting") and deleted(postgres_url, sha["owed"])
    assert current(postgres_url, sha["back"]) == [back] and not deleted(postgres_url, sha["back"])
    assert deleted(postgres_url, sha["kept"]) and current(postgres_url, sha["kept"]) == []
    assert fleets in registry_db.media_ids(postgres_url, "current")
    assert sorted(registry_db.media_ids(postgres_url, "current")) == sorted([back, fleets])
    # Copied: the new upload, and the ID the fleet forgot with its content (as invalidated);
    # updated: the refused ID (the owed one went to deleting with its content).
    assert second["media"][2:] == (2, 1, 2)
    # Copied: the content the fleet dropped (as deleted); updated: "back" and "owed".
    assert second["contents"][2:] == (1, 2, 1)

    third = migrate_to_postgres(db, postgres_url, host_id="app-1")
    assert [copy[2:4] for copy in third] == [(0, 0)] * 9, third


def test_the_inbox_and_the_header_handles_come_along_and_a_second_run_keeps_the_fleets(
    api: FakeGraphAPI, tmp_path: Path, postgres_url: str, open_registry: Callable[..., MediaRegistry],
) -> None:
    db, now, hour = str(tmp_path / "registry.db"), datetime.now(timezone.utc), timedelta(hours=1)
    local = open_registry(db, app_id=api.app_id)
    inbox = Inbox(local.store.backend)
    inbox.record([NewItem(media_id, api.phone_number_id, "image/png", None, None, f"wamid.{media_id}",
                          now, now + 720 * hour) for media_id in ("retried", "fleets")])
    [retried] = inbox.claim("worker-1", now, now, hour, limit=1)  # claimed in the file, mid-download
    inbox.record_sent("wamid.out", "4490", api.phone_number_id, now)
    data = sample_media("image/png", salt="a header")
    handle = local.get_header_handle(data)
    first = {copy.table: copy[1:] for copy in migrate_to_postgres(db, postgres_url, host_id="app-1")}
    assert [first[table] for table in ("inbound_items", "sent_messages", "header_handles")] == [
        (2, 2, 0, 0), (1, 1, 0, 0), (1, 1, 0, 0)]

    fleet = open_registry(postgres_url, host_id="app-2", app_id=api.app_id)
    fleet_inbox = Inbox(fleet.store.backend)
    claimed = fleet_inbox.claim("worker-2", now, now, hour, limit=5)  # the file's claim stayed behind
    assert sorted((item.media_id, item.state) for item in claimed) == [("fleets", "pending"), ("retried", "pending")]
    fleet_inbox.archived(claimed[[i.media_id for i in claimed].index("fleets")], "ab" * 32, "/blobs/x.png", now)
    assert fleet_inbox.sent("wamid.out") == ("4490", api.phone_number_id)
    assert fleet.get_header_handle(data) == handle and api.sessions.count() == 1  # served, not made again
    fleet.invalidate_handle(handle)
    newer = fleet.get_header_handle(data)
    inbox.failed(retried, "worker-1", "timed out", now, now + hour)  # the file's own news since

    second = {copy.table: copy[2:] for copy in migrate_to_postgres(db, postgres_url, host_id="app-1")}
    assert [second[table] for table in ("inbound_items", "sent_messages", "header_handles")] == [
        (0, 1, 1), (0, 0, 1), (0, 0, 1)]
    assert registry_db.query(postgres_url, "SELECT media_id, state, attempts FROM inbound_items ORDER BY 1") == [
        ("fleets", "archived", 0), ("retried", "failed", 1)]
    assert fleet.get_header_handle(data) == newer != handle
    third = migrate_to_postgres(db, postgres_url, host_id="app-1")
    assert [copy[2:4] for copy in third] == [(0, 0)] * 9, third
