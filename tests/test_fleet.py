"""A fleet on one PostgreSQL registry: "hosts" are real processes with their own
MEDIA_REGISTRY_HOST_ID and file folders, talking to a real server and the local Graph API."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from file_server import FileServer
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PNG, run_cli, wait_for
from pg_server import PostgresServer, create_database

HOSTS = ("app-1", "app-2", "app-3")


@pytest.fixture
def fleet_env(postgres_url: str, api: FakeGraphAPI) -> dict[str, str]:
    """The environment every host shares: the fake API and one PostgreSQL registry, with
    hour-long leases, so only a claim dying with its session can free it early."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    env.update(
        WHATSAPP_TOKEN=api.token, WHATSAPP_PHONE_NUMBER_ID=api.phone_number_id,
        WHATSAPP_API_BASE=api.base_url, MEDIA_REGISTRY_DB=postgres_url,
        MEDIA_REGISTRY_RETRY_BACKOFF="0.01", MEDIA_REGISTRY_MAX_RETRIES="1",
        MEDIA_REGISTRY_LEASE_SECONDS="3600",
    )
    return env


def on(host: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of one host of the fleet."""
    return {**env, "MEDIA_REGISTRY_HOST_ID": host}


def spawn(host: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), *args], env=on(host, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def host_files(tmp_path: Path, host: str, count: int = 1) -> list[Path]:
    """The same ``count`` contents, in a folder of this host's own."""
    folder = tmp_path / host
    folder.mkdir(exist_ok=True)
    files = [folder / f"banner-{i}.png" for i in range(count)]
    for i, path in enumerate(files):
        path.write_bytes(sample_media(PNG, salt=f"shared-{i}"))
    return files


def test_3_hosts_x_4_processes_on_one_new_content_make_one_upload(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    api.fail(delay=1.0, method="POST")  # a slow first upload: everyone else arrives meanwhile
    processes = [spawn(host, "upload", str(host_files(tmp_path, host)[0]), env=fleet_env)
                 for host in HOSTS for _ in range(4)]
    results = [process.communicate(timeout=90) for process in processes]
    assert [process.returncode for process in processes] == [0] * 12, [err for _, err in results]
    media_ids = {out.split("\t")[0] for out, _ in results}
    assert len(media_ids) == 1
    assert api.uploads == 1
    assert sorted(out.split("\t")[1] for out, _ in results) == ["cached"] * 11 + ["uploaded"]


def test_a_killed_holder_frees_its_claim_for_another_host_at_once(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    api.fail(delay=60, method="POST")  # the first upload hangs until its process is killed
    holder = spawn("app-1", "upload", str(host_files(tmp_path, "app-1")[0]), env=fleet_env)
    wait_for(lambda: api.count("POST") == 1, "the first host's upload to reach the API")
    waiter = spawn("app-2", "upload", str(host_files(tmp_path, "app-2")[0]), env=fleet_env)
    time.sleep(1.0)  # it hashed the file and now polls the claim
    assert waiter.poll() is None and api.count("POST") == 1
    killed_at = time.monotonic()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    out, err = waiter.communicate(timeout=60)  # the test's timeout bounds the takeover
    takeover = time.monotonic() - killed_at
    assert waiter.returncode == 0, err
    assert out.split("\t")[1] == "uploaded"
    assert registry_db.media_ids(fleet_env["MEDIA_REGISTRY_DB"], "current") == [out.split("\t")[0]]
    print(f"takeover after SIGKILL, upload included: {takeover:.2f} s")


def test_two_daemons_on_two_hosts_refresh_50_expiring_contents_once(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    db = fleet_env["MEDIA_REGISTRY_DB"]
    for host in ("app-1", "app-2"):  # both hosts hold every file
        paths = [str(path) for path in host_files(tmp_path, host, 50)]
        assert run_cli("upload", *paths, env=on(host, fleet_env)).returncode == 0
    assert api.uploads == 50
    registry_db.age_ids(db, days_left=2)
    daemons = [spawn(host, "daemon", env=fleet_env) for host in ("app-1", "app-2")]
    try:
        wait_for(lambda: registry_db.count(db, "media", "state = 'superseded'") == 50,
                 "both daemons to finish the refresh", timeout=90)
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        outputs = [daemon.communicate(timeout=60) for daemon in daemons]
    assert [daemon.returncode for daemon in daemons] == [0, 0], outputs
    assert api.uploads == 100  # 50 first uploads, 50 refreshes: none twice
    assert registry_db.count(db, "media", "state = 'current'") == 50


def test_purge_judges_sources_per_host(fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path) -> None:
    [mine] = host_files(tmp_path, "app-1")
    assert run_cli("upload", str(mine), env=on("app-1", fleet_env)).returncode == 0
    result = run_cli("purge", env=on("app-2", fleet_env))  # app-2 has no file of it: not its call
    assert result.returncode == 0, result.stderr
    assert api.count("DELETE") == 0
    mine.unlink()
    assert run_cli("purge", env=on("app-1", fleet_env)).returncode == 0
    assert run_cli("purge", env=on("app-1", fleet_env)).returncode == 0
    assert api.count("DELETE") == 1
    assert registry_db.count(fleet_env["MEDIA_REGISTRY_DB"], "media") == 0


def test_a_hosts_purge_forgets_only_its_own_paths(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    db = fleet_env["MEDIA_REGISTRY_DB"]
    [first], [second] = host_files(tmp_path, "app-1"), host_files(tmp_path, "app-2")
    assert run_cli("upload", "-q", str(first), env=on("app-1", fleet_env)).returncode == 0
    media_id = run_cli("upload", "-q", str(second), env=on("app-2", fleet_env)).stdout.strip()
    first.unlink()
    purged = run_cli("purge", env=on("app-1", fleet_env))
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("skipped") and "another host" in purged.stdout
    assert api.count("DELETE") == 0 and api.live(media_id)  # app-2 still sends it
    assert registry_db.count(db, "paths") == 1
    again = run_cli("upload", str(second), env=on("app-2", fleet_env))
    assert again.stdout.split("\t")[:2] == [media_id, "cached"]
    second.unlink()  # the last copy goes: now the content is deleted
    assert run_cli("purge", env=on("app-2", fleet_env)).stdout.startswith("vanished")
    assert api.count("DELETE") == 1 and not api.live(media_id)


def test_a_host_silent_past_the_retention_no_longer_holds_content(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    db = fleet_env["MEDIA_REGISTRY_DB"]
    [first], [second] = host_files(tmp_path, "app-1"), host_files(tmp_path, "app-2")
    assert run_cli("upload", "-q", str(first), env=on("app-1", fleet_env)).returncode == 0
    media_id = run_cli("upload", "-q", str(second), env=on("app-2", fleet_env)).stdout.strip()
    registry_db.execute(db, "UPDATE hosts SET last_seen_at = now() - interval '15 days' WHERE host_id = 'app-2'")
    first.unlink()
    purged = run_cli("purge", env={**on("app-1", fleet_env), "MEDIA_REGISTRY_HOST_RETENTION": "P14D"})
    assert purged.stdout.startswith("vanished"), purged.stdout + purged.stderr
    assert api.count("DELETE") == 1 and not api.live(media_id)


def test_one_daemon_per_host(fleet_env: dict[str, str]) -> None:
    first = spawn("app-1", "daemon", env=fleet_env)
    other_host = spawn("app-2", "daemon", env=fleet_env)
    try:
        time.sleep(2.0)  # both took their host's lock and ran their first pass
        second = run_cli("daemon", env=on("app-1", fleet_env))
        assert second.returncode == 1
        assert "another media-registry daemon already serves host app-1" in second.stderr
        assert first.poll() is None and other_host.poll() is None
    finally:
        for daemon in (first, other_host):
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=60)


def test_migrate_then_every_file_is_a_cache_hit(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path, postgres_url: str,
    make_file: Callable[..., Path], files: FileServer,
) -> None:
    sqlite_env = {**on("app-1", fleet_env), "MEDIA_REGISTRY_DB": str(tmp_path / "registry.db")}
    url = files.add("/card.png", sample_media(PNG, salt="a URL source"))
    assert run_cli("upload", url, env=sqlite_env).returncode == 0
    paths = [str(make_file(f"file-{i}.png")) for i in range(5)]
    uploaded = run_cli("upload", *paths, env=sqlite_env).stdout.splitlines()
    api.fail(status=500, method="DELETE", times=10)  # the last one's DELETE stays owed
    run_cli("delete", paths[4], env=sqlite_env)
    sqlite_bytes = (tmp_path / "registry.db").read_bytes()
    for run in ("copied", "unchanged"):  # the second run copies nothing twice
        result = run_cli("migrate", "--to", postgres_url, env=sqlite_env)
        assert result.returncode == 0, result.stderr
        counts = dict(line.split(":", 1) for line in result.stdout.splitlines()[:-1])
        assert {table: counts[table].strip() for table in ("media", "paths", "url_sources")} == {
            table: f"{rows} rows: " + ", ".join(f"{rows if kind == run else 0} {kind}"
                                                 for kind in ("copied", "updated", "unchanged"))
            for table, rows in (("media", 6), ("paths", 4), ("url_sources", 1))}
    assert (tmp_path / "registry.db").read_bytes() == sqlite_bytes
    assert registry_db.count(postgres_url, "events") == registry_db.count(str(tmp_path / "registry.db"), "events")
    assert str(psycopg.conninfo.conninfo_to_dict(postgres_url)["password"]) not in result.stdout
    hits = run_cli("upload", *paths[:4], url, env=on("app-1", fleet_env))
    assert hits.stdout.splitlines()[:4] == [line.replace("uploaded", "cached") for line in uploaded[:4]]
    assert hits.stdout.splitlines()[4].split("\t")[1] == "cached"
    assert api.uploads == 6 and files.count("/card.png") == 1  # the URL's mapping came along
    assert registry_db.media_ids(postgres_url, "deleting") == [uploaded[4].split("\t")[0]]


def test_postgresql_stopped_and_restarted_around_calls(
    postgres_server: PostgresServer, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    env = {
        **on("app-1", {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_REGISTRY_")}),
        "WHATSAPP_TOKEN": api.token, "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id,
        "WHATSAPP_API_BASE": api.base_url, "MEDIA_REGISTRY_BUSY_TIMEOUT": "2",
        "MEDIA_REGISTRY_DB": create_database(postgres_server.url()),
    }
    first, second = make_file("first.png"), make_file("second.png")
    assert run_cli("upload", str(first), env=env).returncode == 0
    postgres_server.stop()
    for args in (("upload", str(second)), ("--debug", "stats"), ("ls",)):
        down = run_cli(*args, env=env)
        assert down.returncode == 1
        assert postgres_server.password not in down.stdout + down.stderr
        if "--debug" not in args:
            assert down.stderr.count("\n") == 1 and "cannot reach the server" in down.stderr
            assert f"127.0.0.1:{postgres_server.port}" in down.stderr
    postgres_server.start()
    back = run_cli("upload", str(first), str(second), env=env)
    assert back.returncode == 0, back.stderr
    assert [line.split("\t")[1] for line in back.stdout.splitlines()] == ["cached", "uploaded"]
    stats = run_cli("stats", env=env)
    assert postgres_server.password not in stats.stdout and f"127.0.0.1:{postgres_server.port}" in stats.stdout
    assert api.uploads == 2


def test_a_wrong_password_or_a_missing_database_on_the_command_line(
    postgres_server: PostgresServer, make_file: Callable[..., Path]
) -> None:
    path = str(make_file("a.png"))
    for url, expected in ((postgres_server.url(password="hunter2"), "refused the password"),
                          (postgres_server.url("nowhere"), 'database "nowhere" does not exist')):
        result = run_cli("--db", url, "upload", path, env={"PATH": os.environ["PATH"],
                                                           "WHATSAPP_TOKEN": "t", "WHATSAPP_PHONE_NUMBER_ID": "1"})
        assert result.returncode == 1
        assert expected in result.stderr and result.stderr.count("\n") == 1
        assert "hunter2" not in result.stderr and postgres_server.password not in result.stderr


def test_migrate_takes_the_server_from_the_environment_or_a_file_and_names_it_in_errors(
    fleet_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path, postgres_url: str, make_file: Callable[..., Path],
) -> None:
    sqlite_env = {**on("app-1", fleet_env), "MEDIA_REGISTRY_DB": str(tmp_path / "registry.db")}
    assert run_cli("upload", str(make_file("a.png")), env=sqlite_env).returncode == 0
    password = str(psycopg.conninfo.conninfo_to_dict(postgres_url)["password"])
    to_file = tmp_path / "target"
    to_file.write_text(postgres_url + "\n")
    missing = postgres_url.rsplit("/", 1)[0] + "/nowhere"
    result = run_cli("migrate", "--to", missing, env=sqlite_env)
    assert result.returncode == 1 and "or fix --to" in result.stderr and "MEDIA_REGISTRY_DB" not in result.stderr
    assert password not in result.stderr
    for args, env, named in (
        ((), {**sqlite_env, "MEDIA_REGISTRY_MIGRATE_TO": postgres_url}, "MEDIA_REGISTRY_MIGRATE_TO"),
        (("--to-file", str(to_file)), sqlite_env, f"--to-file {to_file}"),
    ):
        result = run_cli("migrate", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout and "media:" in result.stdout
        to_file.write_text(missing)
        env = {**env, "MEDIA_REGISTRY_MIGRATE_TO": missing}
        result = run_cli("migrate", *args, env=env)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert f'database "nowhere" does not exist; create it (createdb) or fix {named}' in result.stderr
        to_file.write_text(postgres_url)
    assert registry_db.count(postgres_url, "media") == 1
    usage = run_cli("migrate", "--help", env=sqlite_env).stdout
    assert "MEDIA_REGISTRY_MIGRATE_TO" in usage and "--to-file" in usage and "ps shows" in usage
