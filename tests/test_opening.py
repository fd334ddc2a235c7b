"""Opening a registry: a version-1 registry is upgraded in place by whichever command (or
Python call) opens it first, keeping every ID and time; read-only commands never create a
registry; nothing ever touches a database that is not a media-registry registry."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import MediaRegistry
from media_registry.store import migrations
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, PNG, run_cli, wait_for

V1 = Path(__file__).parent / "data" / "registry-v1.db"
CURRENT_ID = "1000371317740755"  # a current ID in the version-1 file

# Every command that opens the user's registry, with arguments that leave its rows alone.
COMMANDS = {
    "upload": ["upload", "{new_file}"],
    "ls": ["ls"],
    "ls --json": ["ls", "--json"],
    "show": ["show", CURRENT_ID],
    "refresh": ["refresh", "--dry-run"],
    "delete": ["delete", "no-such-content"],
    "purge": ["purge", "--dry-run"],
    "download": ["download", "999", "--out", "{folder}"],
    "stats": ["stats"],
    "init": ["init"],
}


def rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Everything a version-1 registry recorded, table by table."""
    return {
        "contents": registry_db.query(db, "SELECT * FROM contents ORDER BY sha256"),
        "media": registry_db.query(db, "SELECT media_id, sha256, phone_number_id, state, uploaded_at, expires_at "
                                       "FROM media ORDER BY media_id"),
        "paths": registry_db.query(db, "SELECT path, sha256, size_bytes, mtime_ns, inode, seen_at FROM paths"),
        "events": registry_db.query(db, "SELECT * FROM events WHERE id <= 10 ORDER BY id"),
        "inbound": registry_db.query(db, "SELECT * FROM inbound"),
    }


def assert_upgraded(db: Path) -> None:
    assert registry_db.query(db, "PRAGMA user_version") == [(migrations.SCHEMA_VERSION,)]
    names = [row[0] for row in registry_db.query(db, "SELECT name FROM migrations ORDER BY name")]
    assert names == [migration.name for migration in migrations.MIGRATIONS]


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    db = tmp_path / "old" / "registry.db"
    db.parent.mkdir()
    shutil.copy(V1, db)
    return db


@pytest.mark.parametrize("name", COMMANDS)
def test_any_command_upgrades_a_version_1_registry_keeping_every_id(
    name: str, v1_copy: Path, cli_env: dict[str, str], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    before = rows(v1_copy)
    args = [a.format(new_file=make_file("new.png", PNG), folder=tmp_path / "in") for a in COMMANDS[name]]
    result = run_cli(*args, env={**cli_env, "MEDIA_REGISTRY_DB": str(v1_copy)})
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 1, result.stderr
    assert_upgraded(v1_copy)
    after = rows(v1_copy)
    if name == "upload":  # one more content, ID and event; the old ones untouched
        assert set(before["media"]) < set(after["media"]) and before["events"] == after["events"]
    else:
        assert after == before
    registry_db.check_consistent(v1_copy)


def test_the_daemon_upgrades_a_version_1_registry(v1_copy: Path, cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cli_env, "MEDIA_REGISTRY_DB": str(v1_copy)}
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([str(CLI), "daemon"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: registry_db.query(v1_copy, "PRAGMA user_version")[0][0] == migrations.SCHEMA_VERSION,
                 "the daemon to upgrade the registry")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert_upgraded(v1_copy)
    registry_db.check_consistent(v1_copy)


def test_the_python_api_upgrades_a_version_1_registry(v1_copy: Path, api: FakeGraphAPI) -> None:
    before = rows(v1_copy)
    with MediaRegistry(db=v1_copy, token=api.token, phone_number_id=api.phone_number_id,
                       api_base=api.base_url) as registry:
        record = registry.lookup(CURRENT_ID)
        listed = {r.media_id for r in registry.records()}
    assert record is not None and record.media_id == CURRENT_ID
    assert record.uploaded_at is not None and record.uploaded_at.isoformat().startswith("2026-")
    assert CURRENT_ID in listed
    assert_upgraded(v1_copy)
    assert rows(v1_copy) == before


# -- read-only commands never create, nothing touches what is not ours -----------------------


@pytest.mark.parametrize("command", [["ls"], ["show", "x.png"], ["stats"]])
def test_read_only_commands_create_nothing(command: list[str], cli_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    env = {k: v for k, v in cli_env.items() if k != "MEDIA_REGISTRY_DB"}  # ./media-registry.db
    result = run_cli(*command, env=env, cwd=folder)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no registry at media-registry.db" in result.stderr and "media-registry init" in result.stderr
    assert list(folder.iterdir()) == []  # no file, no -wal, no -shm


@pytest.mark.parametrize("command", [["stats"], ["ls"], ["show", "x"], ["upload", "{file}"], ["init"]])
def test_someone_elses_database_is_refused_byte_identical(
    command: list[str], cli_env: dict[str, str], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    db = folder / "app.db"
    registry_db.make_foreign_database(db)
    before = db.read_bytes()
    args = [a.format(file=make_file("a.png")) for a in command]
    result = run_cli("--db", str(db), *args, env=cli_env)
    assert result.returncode == 1
    assert "not a media-registry registry (left untouched)" in result.stderr
    assert db.read_bytes() == before  # no tables, no user_version, no switch to WAL
    assert sorted(p.name for p in folder.iterdir()) == ["app.db"]


def test_a_fifo_as_the_registry_is_a_clear_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "registry.fifo"
    os.mkfifo(fifo)
    for command in (["stats"], ["ls"], ["init"]):
        result = run_cli("--db", str(fifo), *command, env=cli_env)  # would hang before
        assert result.returncode == 1 and "is not a regular file" in result.stderr


def test_an_empty_database_file_is_refused_with_init_as_its_fix(cli_env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    db.touch()
    for command in (["ls"], ["stats"], ["show", "x"]):
        result = run_cli("--db", str(db), *command, env=cli_env)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
        assert "is an empty SQLite database (left untouched)" in result.stderr
        assert "media-registry init" in result.stderr and db.read_bytes() == b""
    assert run_cli("--db", str(db), "init", env=cli_env).returncode == 0
    assert run_cli("--db", str(db), "ls", env=cli_env).returncode == 0
