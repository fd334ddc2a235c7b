"""The command line as shell users and other languages live on it: start-up, forgiving input,
output that pipes, and the local Graph API in the foreground. Every test runs real processes."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import ConfigError, MediaRegistry
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, PDF, run_cli, settle

HEAVY = {"httpx", "pydantic", "pydantic_settings", "rich", "apscheduler", "tenacity", "filetype"}
# What a plain cache hit or read command starts without (its start-up is most of its cost).
START_UP = {"argparse", "typing", "hashlib", "threading", "media_registry.store.handles"}


def imported_modules(*args: str, env: dict[str, str]) -> set[str]:
    """The modules a real run of the CLI imports, as ``-X importtime`` reports them."""
    result = run_cli(*args, env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("media-registry: error: "), result.stderr
    return lines[0]


# -- start-up ---------------------------------------------------------------------------


@pytest.mark.sqlite_only  # a PostgreSQL URL takes the full path (its pool, its host's row)
def test_a_cache_hit_imports_nothing_heavy(cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    banner = make_file("banner.png")
    settle(banner)  # a fingerprint recorded in the file's own second is hashed again: no hit
    path = str(banner)
    miss = imported_modules("upload", path, env=cli_env)
    assert {"httpx", "pydantic_settings"} <= miss  # the probe sees them when they are loaded
    hit = imported_modules("upload", path, env=cli_env)
    assert "media_registry.store" in hit and not hit & (HEAVY | START_UP), hit & (HEAVY | START_UP)
    assert not imported_modules("--version", env=cli_env) & HEAVY
    assert not imported_modules("--help", env=cli_env) & HEAVY
    assert not imported_modules("upload", "--help", env=cli_env) & HEAVY


def test_the_hit_path_honours_min_validity_and_falls_back_on_unusual_settings(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = str(make_file("banner.png"))
    media_id = run_cli("upload", path, env=cli_env).stdout.split("\t")[0]
    # An ISO duration is for the full settings to parse: same answer, the slow way.
    iso_env = {**cli_env, "MEDIA_REGISTRY_MIN_VALIDITY": "P1D"}
    assert run_cli("upload", path, env=iso_env).stdout == f"{media_id}\tcached\t{path}\n"
    assert "pydantic_settings" in imported_modules("upload", path, env=iso_env)
    # An ID that would not last min_validity is never served, on the fast path either.
    strict = {**cli_env, "MEDIA_REGISTRY_TTL": str(60 * 86400), "MEDIA_REGISTRY_MIN_VALIDITY": str(40 * 86400)}
    renewed = run_cli("upload", path, env=strict)
    assert renewed.stdout.split("\t")[1] == "uploaded" and api.uploads == 2
    # Another number has no ID yet: a miss, uploaded for that number.
    api.add_phone_number("42")
    other = run_cli("upload", "--phone-number-id", "42", path, env=cli_env)
    assert other.stdout.split("\t")[1] == "uploaded" and api.uploads == 3


@pytest.mark.sqlite_only  # the lean hit of a registry file; a PostgreSQL URL takes the full path
@pytest.mark.parametrize(("odd", "named"), [
    ({"MEDIA_REGISTRY_MIN_VALIDITY": "\u00b2"}, "MEDIA_REGISTRY_MIN_VALIDITY"),
    ({"MEDIA_REGISTRY_TTL": "9" * 20, "MEDIA_REGISTRY_MIN_VALIDITY": "9" * 19}, "MEDIA_REGISTRY_TTL"),
    ({"MEDIA_REGISTRY_BUSY_TIMEOUT": "1" + "0" * 400}, "MEDIA_REGISTRY_BUSY_TIMEOUT"),
    ({"WHATSAPP_API_BASE": "http://graph.example.com/v26.0"}, "WHATSAPP_API_BASE"),
    ({"WHATSAPP_TOKEN": ""}, "WHATSAPP_TOKEN"),
])
def test_the_hit_path_refuses_what_the_full_path_refuses(
    cli_env: dict[str, str], make_file: Callable[..., Path], odd: dict[str, str], named: str
) -> None:
    banner = make_file("banner.png")
    settle(banner)
    assert run_cli("upload", str(banner), env=cli_env).returncode == 0
    assert run_cli("upload", str(banner), env=cli_env).stdout.split("\t")[1] == "cached"
    refused = run_cli("upload", str(banner), env={**cli_env, **odd})
    assert refused.returncode == 1 and refused.stdout == ""
    assert one_error_line(refused).startswith(f"media-registry: error: invalid {named}: ")


@pytest.mark.sqlite_only  # the lean hit of a registry file; a PostgreSQL URL takes the full path
def test_a_caller_shelling_out_200_times_makes_one_upload(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_file("brochure.pdf", PDF)
    script = f'for i in $(seq 200); do "{CLI}" upload -q "{path}" || exit 1; done'
    result = subprocess.run(["sh", "-c", script], env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids = result.stdout.splitlines()
    assert len(ids) == 200 and len(set(ids)) == 1 and ids[0].isdigit()
    assert api.uploads == 1 and api.count("POST") == 1


# -- forgiving input --------------------------------------------------------------------


def test_show_and_delete_take_a_path_id_sha256_or_unique_prefix(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("brochure.pdf", PDF)
    media_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    sha256 = json.loads(run_cli("ls", "--json", env=cli_env).stdout)["sha256"]
    printed = run_cli("ls", env=cli_env).stdout.splitlines()[1].split()[1]
    assert sha256.startswith(printed) and len(printed) == 12
    for target in (str(path), media_id, sha256, sha256.upper(), printed, sha256[:8]):
        shown = run_cli("show", target, env=cli_env)
        assert shown.returncode == 0 and f"media ID:     {media_id}" in shown.stdout, target
    assert "not in the registry" in one_error_line(run_cli("show", sha256[:7], env=cli_env))
    deleted = run_cli("delete", sha256[:10], env=cli_env)
    assert deleted.returncode == 0 and not api.live(media_id)


def test_an_ambiguous_prefix_lists_the_candidates(cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    run_cli("init", env=cli_env)
    twins = ["abcdef01" + "0" * 56, "abcdef01" + "1" * 56]
    for sha in twins:
        registry_db.execute(cli_env["MEDIA_REGISTRY_DB"],
                            "INSERT INTO contents VALUES (?, 'application/pdf', 1, '2026-01-01T00:00:00Z', NULL)", sha)
    for command in ("show", "delete"):
        line = one_error_line(run_cli(command, "abcdef01", env=cli_env))
        assert "more than one" in line and twins[0] in line and twins[1] in line and "more digits" in line
    assert twins[1] in run_cli("show", "abcdef011", env=cli_env).stdout
    assert registry_db.count(cli_env["MEDIA_REGISTRY_DB"], "contents", "deleted_at IS NULL") == 2  # none deleted


def test_a_path_wins_over_an_id_of_the_same_spelling(
    cli_env: dict[str, str], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    first = make_file("first.png")
    first_id = run_cli("upload", str(first), env=cli_env).stdout.split("\t")[0]
    # A file named like the first file's media ID, holding other bytes.
    named_like_id = make_file(first_id, PDF)
    second_id = run_cli("upload", str(named_like_id), env=cli_env).stdout.split("\t")[0]
    shown = run_cli("show", first_id, env=cli_env, cwd=tmp_path)
    assert f"media ID:     {second_id}" in shown.stdout
    shown_elsewhere = run_cli("show", first_id, env=cli_env, cwd=tmp_path.parent)
    assert f"media ID:     {first_id}" in shown_elsewhere.stdout


def test_global_options_go_before_or_after_the_command(
    cli_env: dict[str, str], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    path = str(make_file("a.png"))
    other_db = str(tmp_path / "other.db")
    env = {k: v for k, v in cli_env.items() if k != "MEDIA_REGISTRY_DB"}
    assert run_cli("upload", path, "--db", other_db, env=env).returncode == 0
    for args in (("--db", other_db, "ls", "--json"), ("ls", "--db", other_db, "--json"),
                 ("--json", "--db", other_db, "ls"), ("ls", "--json", "--db", other_db)):
        assert json.loads(run_cli(*args, env=env).stdout)["paths"] == [path], args
    missing = str(tmp_path / "missing.png")
    assert "Traceback" in run_cli("upload", missing, "--debug", env=cli_env).stderr
    assert "Traceback" in run_cli("--debug", "upload", missing, env=cli_env).stderr
    assert "Traceback" not in run_cli("upload", missing, env=cli_env).stderr
    wrong = run_cli("--json", "init", env=cli_env)
    assert wrong.returncode == 2 and "--json does not apply to init" in one_error_line(wrong)


def test_a_folder_needs_recursive(cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path],
                                  tmp_path: Path) -> None:
    good = [make_file("media/a.png"), make_file("media/deep/b.pdf", PDF)]
    (tmp_path / "media" / "deep" / "animation.gif").write_bytes(b"GIF89a" + bytes(64))
    make_file("media/.cache/hidden.png")
    refused = run_cli("upload", str(tmp_path / "media"), env=cli_env)
    assert refused.returncode == 2 and refused.stdout == "" and api.uploads == 0
    assert "is a folder; pass --recursive (-r)" in one_error_line(refused)
    for flag in ("--recursive", "-r"):
        result = run_cli("upload", flag, str(tmp_path / "media"), env=cli_env)
        assert result.returncode == 1
        assert [line.split("\t")[2] for line in result.stdout.splitlines()] == [str(p) for p in good]
        assert "animation.gif" in one_error_line(result) and "does not accept" in result.stderr
    assert api.uploads == 2


def test_hints_speak_cli_in_the_cli_and_python_in_the_library(
    cli_env: dict[str, str], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_file("a.png")
    env = {k: v for k, v in cli_env.items() if k != "WHATSAPP_PHONE_NUMBER_ID"}
    line = one_error_line(run_cli("upload", str(path), env=env))
    assert "--phone-number-id" in line and "WHATSAPP_PHONE_NUMBER_ID" in line and "phone_number_id=" not in line
    no_token = {k: v for k, v in cli_env.items() if k != "WHATSAPP_TOKEN"}
    line = one_error_line(run_cli("upload", str(path), env=no_token))
    assert "WHATSAPP_TOKEN" in line and "token=" not in line
    with MediaRegistry(db=tmp_path / "lib.db") as registry, pytest.raises(ConfigError, match="phone_number_id="):
        registry.get_or_upload(path)


# -- output people can pipe -------------------------------------------------------------


def test_every_json_output_is_json_lines_of_the_records_keys(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    kept, dropped = make_file("kept.png"), make_file("dropped.pdf", PDF)
    uploads = [json.loads(line) for line in
               run_cli("upload", "--json", str(kept), str(dropped), env=cli_env).stdout.splitlines()]
    assert [set(u) for u in uploads] == [{"media_id", "status", "path"}] * 2
    deletes = run_cli("delete", "--json", str(dropped), env=cli_env).stdout.splitlines()
    assert json.loads(deletes[0])["action"] == "deleted" and not api.live(uploads[1]["media_id"])
    [record] = [json.loads(line) for line in run_cli("ls", "--json", env=cli_env).stdout.splitlines()]
    assert record["paths"] == [str(kept)]
    assert set(record) == {"sha256", "mime_type", "size_bytes", "phone_number_id", "media_id", "uploaded_at",
                           "expires_at", "deleted_at", "state", "paths"}
    assert len(record["sha256"]) == 64 and record["state"] == "current" and record["size_bytes"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["expires_at"])
    shown = json.loads(run_cli("show", "--json", str(kept), env=cli_env).stdout)
    assert shown["history"][0]["action"] == "upload" and shown["history"][0]["at"].endswith("Z")
    assert len(json.loads(run_cli("stats", "--json", env=cli_env).stdout.strip().splitlines()[0])) > 5


def test_deleted_content_is_listed_with_its_state(cli_env: dict[str, str], api: FakeGraphAPI,
                                                  make_file: Callable[..., Path]) -> None:
    path = make_file("gone.pdf", PDF)
    run_cli("upload", str(path), env=cli_env)
    api.fail(status=503, times=10, method="DELETE")  # the remote DELETE stays owed
    run_cli("delete", str(path), env=cli_env)
    [record] = [json.loads(line) for line in run_cli("ls", "--json", env=cli_env).stdout.splitlines()]
    assert record["state"] == "deleted" and record["media_id"] is None and record["deleted_at"].endswith("Z")
    assert "  deleted  " in run_cli("ls", env=cli_env).stdout.splitlines()[1]


def test_ls_on_an_empty_registry_says_so_on_stderr(cli_env: dict[str, str]) -> None:
    run_cli("init", env=cli_env)
    for args in (("ls",), ("ls", "--json")):
        result = run_cli(*args, env=cli_env)
        assert result.returncode == 0 and result.stdout == "" and "registry is empty" in result.stderr


def test_ls_streams_into_a_pipe_that_closes_early(cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    for i in range(3):
        run_cli("upload", str(make_file(f"{i}.png")), env=cli_env)
    result = subprocess.run(f'"{CLI}" ls --json | head -n 1', shell=True, env=cli_env, capture_output=True,
                            text=True, timeout=60)
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


def test_quiet_prints_only_the_media_ids(cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    paths = [str(make_file("a.png")), str(make_file("b.pdf", PDF))]
    first = run_cli("upload", "-q", *paths, env=cli_env).stdout.splitlines()
    assert len(first) == 2 and all(line.isdigit() for line in first)
    assert run_cli("upload", "--quiet", *paths, env=cli_env).stdout.splitlines() == first
    assert run_cli("upload", "-q", "--json", *paths, env=cli_env).returncode == 2


def test_progress_on_a_terminal_shows_total_and_rate(cli_env: dict[str, str],
                                                     make_file: Callable[..., Path]) -> None:
    paths = [str(make_file(f"{i}.png")) for i in range(3)]
    primary, replica = pty.openpty()
    process = subprocess.Popen([str(CLI), "upload", *paths], env={**cli_env, "TERM": "xterm"},
                               stdout=subprocess.PIPE, stderr=replica, text=True)
    os.close(replica)
    stdout, _ = process.communicate(timeout=60)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal's other end is closed: all read
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    assert process.returncode == 0 and len(stdout.splitlines()) == 3
    assert re.search(rb"uploading \d/3, \d+/s", terminal), terminal


# -- the local Graph API in the foreground ----------------------------------------------


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_fake_api_serves_until_stopped(stop_with: signal.Signals, make_file: Callable[..., Path],
                                       tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    server = subprocess.Popen([str(CLI), "fake-api"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        exports = [server.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        names = [re.fullmatch(r"export (\w+)=(\S+)\n", line) for line in exports]
        assert all(names), exports
        cli_env = {**env, **{m[1]: m[2] for m in names if m}, "MEDIA_REGISTRY_DB": str(tmp_path / "r.db")}
        assert set(cli_env) >= {"WHATSAPP_TOKEN", "WHATSAPP_API_BASE", "WHATSAPP_PHONE_NUMBER_ID"}
        path = str(make_file("a.png"))
        uploaded = run_cli("upload", path, env=cli_env)
        assert uploaded.returncode == 0 and uploaded.stdout.split("\t")[1] == "uploaded", uploaded.stderr
        assert run_cli("upload", path, env=cli_env).stdout.split("\t")[1] == "cached"
    finally:
        server.send_signal(stop_with)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in stderr


def test_fake_api_on_a_busy_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("fake-api", "--port", port, env=dict(os.environ))  # returns: it does not serve
    assert result.returncode == 1 and f"port {port}" in one_error_line(result) and "--port" in result.stderr


@pytest.mark.parametrize("port", ["-1", "70000", "80x"])
def test_fake_api_on_an_impossible_port_is_a_usage_error(port: str) -> None:
    result = run_cli("fake-api", "--port", port, env=dict(os.environ))
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
        f"media-registry fake-api: error: argument --port: {port!r} is not a port from 0 to 65535")


def test_fake_api_with_a_given_port(make_file: Callable[..., Path]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(CLI), "fake-api", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        assert f"WHATSAPP_API_BASE=http://127.0.0.1:{port}/" in "".join(lines)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert server.returncode == 0

