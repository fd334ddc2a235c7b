"""The lifecycle through real processes: the daemon under signals, kill -9 in mid-refresh,
and the CLI with the system clock shifted by libfaketime."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from freezegun import freeze_time

from media_registry import MediaRegistry
from media_registry.app.scheduler import only_daemon
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, PDF, run_cli, wait_for


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([str(CLI), "daemon"], env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sigterm_lets_the_upload_in_flight_finish_and_be_recorded(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_file("menu.pdf", PDF)
    old_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    registry_db.age_ids(cli_env["MEDIA_REGISTRY_DB"], days_left=2)
    api.fail(delay=1.5, method="POST")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cli_env, log)
    wait_for(lambda: api.count("POST") == 2, "the refresh upload to start")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    text = log.read_text()
    assert "SIGTERM received" in text and f"refreshed {old_id} -> " in text and "daemon stopped" in text
    new_id = text.split(f"refreshed {old_id} -> ")[1].split()[0]
    assert registry_db.media_states(cli_env["MEDIA_REGISTRY_DB"]) == [(old_id, "superseded"), (new_id, "current")]
    assert "Traceback" not in text


@pytest.mark.sqlite_only  # on PostgreSQL: one daemon per host, tests/test_fleet.py
def test_only_one_daemon_per_registry(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_cli("init", env=cli_env)
    first = start_daemon(cli_env, tmp_path / "first.log")
    lock = Path(cli_env["MEDIA_REGISTRY_DB"] + ".daemon-lock")
    wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), "the first daemon's lock")
    second = run_cli("daemon", env=cli_env)
    assert second.returncode == 1
    assert f"another media-registry daemon (pid {first.pid}) already serves" in second.stderr
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 0


@pytest.mark.sqlite_only  # the lock file beside an SQLite registry
def test_a_daemon_started_through_a_symlink_finds_the_same_lock(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_cli("init", env=cli_env)
    first = start_daemon(cli_env, tmp_path / "first.log")
    lock = Path(cli_env["MEDIA_REGISTRY_DB"] + ".daemon-lock")
    wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), "the first daemon's lock")
    (tmp_path / "linked").mkdir()
    by_file = tmp_path / "linked" / "other-name.db"
    by_file.symlink_to(cli_env["MEDIA_REGISTRY_DB"])
    by_folder = tmp_path / "folder-link"
    by_folder.symlink_to(tmp_path, target_is_directory=True)
    for name in (by_file, by_folder / "registry.db"):
        log = tmp_path / "second.log"
        second = start_daemon({**cli_env, "MEDIA_REGISTRY_DB": str(name)}, log)

        def ended_or_started(second: subprocess.Popen[bytes] = second, log: Path = log) -> bool:
            return second.poll() is not None or "daemon started" in log.read_text()

        wait_for(ended_or_started, "the second daemon to start or stop")
        if second.poll() is None:
            second.kill()
        assert second.wait(timeout=30) == 1, log.read_text()
        assert f"another media-registry daemon (pid {first.pid}) already serves {name}" in log.read_text()
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 0
    assert list((tmp_path / "linked").iterdir()) == [by_file]  # no lock of its own beside the link


@pytest.mark.sqlite_only  # the lock on an SQLite registry file
def test_a_daemon_started_through_a_hard_link_finds_the_same_lock(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    run_cli("init", env=cli_env)
    first = start_daemon(cli_env, tmp_path / "first.log")
    lock = Path(cli_env["MEDIA_REGISTRY_DB"] + ".daemon-lock")
    wait_for(lambda: lock.exists() and lock.read_text() == str(first.pid), "the first daemon's lock")
    (tmp_path / "other").mkdir()
    hard = tmp_path / "other" / "same-file.db"
    hard.hardlink_to(cli_env["MEDIA_REGISTRY_DB"])  # the same inode: the same registry
    log = tmp_path / "second.log"
    second = start_daemon({**cli_env, "MEDIA_REGISTRY_DB": str(hard)}, log)

    def ended_or_started() -> bool:
        return second.poll() is not None or "daemon started" in log.read_text()

    wait_for(ended_or_started, "the second daemon to start or stop")
    if second.poll() is None:
        second.kill()
    # Two daemons (and two -wal files) on one SQLite file: the second is refused.
    assert second.wait(timeout=30) == 1, log.read_text()
    assert f"another media-registry daemon already serves {hard} under another name" in log.read_text()
    assert "Traceback" not in log.read_text()
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 0


def _locks_on(path: Path) -> list[str]:
    """This process's locks on ``path`` as /proc/locks lists them: kind and access."""
    inode = f":{path.stat().st_ino} "
    return sorted(" ".join(line.split()[1:4]) for line in Path("/proc/locks").read_text().splitlines()
                  if inode in line and line.split()[4] == str(os.getpid()))


@pytest.mark.sqlite_only  # SQLite's own POSIX locks on its file
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_the_daemon_lock_leaves_sqlite_s_own_locks_alone(registry: MediaRegistry) -> None:
    db = Path(str(registry.settings.db))
    registry.stats()  # a connection open in WAL mode holds a shared POSIX lock on the file
    assert _locks_on(db) == ["POSIX ADVISORY READ"]
    with only_daemon(registry):
        assert _locks_on(db) == ["FLOCK ADVISORY WRITE", "POSIX ADVISORY READ"]
    assert _locks_on(db) == ["POSIX ADVISORY READ"]  # SQLite's lock outlives the daemon's


def test_daemon_intervals_take_seconds_or_iso_8601(cli_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(CLI), "daemon", "--refresh-every", "90", "--purge-every", "PT2M"],
                                  env=cli_env, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: "daemon started" in log.read_text(), "the daemon to start")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert "refresh every 0:01:30, purge every 0:02:00" in log.read_text()
    bad = run_cli("daemon", "--refresh-every", "soon", env=cli_env)
    assert bad.returncode == 1 and "invalid MEDIA_REGISTRY_REFRESH_INTERVAL" in bad.stderr


def test_an_api_outage_is_logged_and_does_not_stop_the_daemon(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    run_cli("upload", str(make_file("a.pdf", PDF)), env=cli_env)
    registry_db.age_ids(cli_env["MEDIA_REGISTRY_DB"], days_left=2)
    api.fail(status=503, times=100)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cli_env, log)
    wait_for(lambda: "refresh done: 1 failed" in log.read_text(), "the failed refresh to be logged")
    assert daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert "WARNING failed" in log.read_text() and "HTTP 503" in log.read_text()


def test_kill_9_during_refresh_loses_nothing_and_serves_nothing_dead(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_file("price-list.pdf", PDF)
    old_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    db = cli_env["MEDIA_REGISTRY_DB"]
    registry_db.age_ids(db, days_left=2)
    api.fail(delay=20, method="POST")  # stall the refresh's upload, then kill it
    refresh = subprocess.Popen([str(CLI), "refresh"], env=cli_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: api.count("POST") == 2, "the refresh upload to start")
    refresh.send_signal(signal.SIGKILL)
    refresh.wait(timeout=10)

    registry_db.check_consistent(db)
    assert registry_db.count(db, "leases") == 1  # left by the dead
    assert registry_db.media_states(db) == [(old_id, "current")]  # nothing recorded was lost

    # An hour-long lease: only recognising the dead owner (not its expiry) lets this finish
    # before the test's timeout.
    with MediaRegistry(db=db, token=api.token, phone_number_id=api.phone_number_id,
                       api_base=api.base_url, lease_seconds=3600) as registry:
        assert registry.get_or_upload(path) == old_id  # two days left: still served
        report = registry.refresh_expiring()
        assert report.count("refreshed") == 1
        new_id = report.actions[0].new_media_id
        with freeze_time(datetime.now(timezone.utc) + timedelta(days=3)):
            assert registry.get_or_upload(path) == new_id  # never the dead old one


needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None, reason="needs libfaketime (apt-get install faketime)"
)


def cli_at(hours: float, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a process whose system clock runs ``hours`` ahead."""
    return subprocess.run(["faketime", "-f", f"+{hours}h", str(CLI), *args], env=env,
                          capture_output=True, text=True, timeout=60)


@needs_faketime
def test_the_whole_life_through_the_cli_with_a_shifted_clock(
    cli_env: dict[str, str], make_file: Callable[..., Path]
) -> None:
    path = make_file("catalogue.pdf", PDF)
    first_id = cli_at(0, "upload", str(path), env=cli_env).stdout.split("\t")[0]
    assert cli_at(10 * 24, "refresh", env=cli_env).stdout == "nothing to do\n"
    day_27_5 = cli_at(27.5 * 24, "refresh", env=cli_env)
    assert day_27_5.returncode == 0, day_27_5.stderr
    assert day_27_5.stdout.startswith(f"refreshed {first_id} -> ")
    new_id = day_27_5.stdout.split("-> ")[1].strip()
    assert cli_at(28 * 24, "upload", str(path), env=cli_env).stdout == f"{new_id}\tcached\t{path}\n"
    assert cli_at(31 * 24, "upload", str(path), env=cli_env).stdout == f"{new_id}\tcached\t{path}\n"


@needs_faketime
def test_on_day_31_without_a_refresh_the_cli_uploads_again(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("catalogue.pdf", PDF)
    first_id = cli_at(0, "upload", str(path), env=cli_env).stdout.split("\t")[0]
    media_id, status, _ = cli_at(31 * 24, "upload", str(path), env=cli_env).stdout.split("\t")
    assert status == "uploaded" and media_id != first_id and api.uploads == 2
