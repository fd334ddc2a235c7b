"""The installed ``media-registry`` command, run as real processes."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, PDF, run_cli, settle


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("media-registry: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_upload_prints_the_media_id_first(cli_env: dict[str, str], api: FakeGraphAPI,
                                          make_file: Callable[..., Path]) -> None:
    path = make_file("banner.png")
    first = run_cli("upload", str(path), env=cli_env)
    assert first.returncode == 0, first.stderr
    media_id, status, printed = first.stdout.strip().split("\t")
    assert (status, printed) == ("uploaded", str(path)) and api.live(media_id)
    second = run_cli("upload", str(path), env=cli_env)
    assert second.stdout == f"{media_id}\tcached\t{path}\n"
    assert api.uploads == 1


def test_control_characters_in_a_file_name_cannot_forge_output_lines(
        cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    path = make_file("evil\n1000000000000001\tuploaded\t\x1b[31mforged.png")
    escaped = str(path).replace("\n", "\\n").replace("\t", "\\t").replace("\x1b", "\\x1b")
    settle(path)  # the second upload is then a hit of the fast path
    for status in ("uploaded", "cached"):
        result = run_cli("upload", str(path), env=cli_env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("\n") == 1 and result.stdout.split("\t")[1:] == [status, escaped + "\n"]
    for command in (("ls",), ("show", str(path))):
        printed = run_cli(*command, env=cli_env).stdout
        assert escaped in printed and "\x1b" not in printed and "\tuploaded" not in printed


def test_upload_json_lines(cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    paths = [make_file("a.png"), make_file("b.pdf", PDF)]
    result = run_cli("upload", "--json", *map(str, paths), env=cli_env)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    assert all(line["status"] == "uploaded" and line["media_id"].isdigit() for line in lines)


def test_one_bad_file_does_not_stop_the_others(cli_env: dict[str, str], make_file: Callable[..., Path],
                                               tmp_path: Path) -> None:
    good = make_file("good.png")
    result = run_cli("upload", str(tmp_path / "missing.png"), str(good), env=cli_env)
    assert result.returncode == 1
    assert result.stdout.endswith(f"\tuploaded\t{good}\n")
    assert_one_line_error(result, "missing.png: no such file")


def test_errors_are_one_line_without_traceback(cli_env: dict[str, str], tmp_path: Path,
                                               make_file: Callable[..., Path]) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("not sqlite")
    assert_one_line_error(run_cli("--db", str(not_a_db), "ls", env=cli_env), "not an SQLite database")
    bad_token = {**cli_env, "WHATSAPP_TOKEN": "EAAbadtoken"}
    result = run_cli("upload", str(make_file("a.png")), env=bad_token)
    assert_one_line_error(result, "WHATSAPP_TOKEN")
    assert "EAAbadtoken" not in result.stdout + result.stderr
    bad_env = {**cli_env, "MEDIA_REGISTRY_TTL": "soon"}
    assert_one_line_error(run_cli("ls", env=bad_env), "MEDIA_REGISTRY_TTL")


def test_debug_shows_the_traceback(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("--debug", "upload", str(tmp_path / "missing.png"), env=cli_env)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_usage_errors_exit_2(cli_env: dict[str, str]) -> None:
    assert run_cli(env=cli_env).returncode == 2
    assert run_cli("upload", env=cli_env).returncode == 2
    assert run_cli("frobnicate", env=cli_env).returncode == 2


def test_a_bad_phone_number_id_is_a_usage_error_that_leaves_the_registry_alone(
        cli_env: dict[str, str], make_file: Callable[..., Path]) -> None:
    path = str(make_file("banner.png"))
    assert run_cli("upload", path, env=cli_env).returncode == 0
    assert run_cli("delete", path, env=cli_env).returncode == 0
    for bad in ("abc", "10654035224292x", "\u0661\u0662"):
        refused = run_cli("upload", "--phone-number-id", bad, path, env=cli_env)
        assert refused.returncode == 2 and "is not a phone number ID" in refused.stderr
    assert run_cli("ls", "--json", env=cli_env).stdout == ""  # the deleted content stays gone


def test_ls_show_stats_and_init(cli_env: dict[str, str], make_file: Callable[..., Path],
                                tmp_path: Path) -> None:
    init = run_cli("init", env=cli_env)
    assert init.returncode == 0 and "registry ready" in init.stdout
    path = make_file("brochure.pdf", PDF)
    media_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]

    listing = run_cli("ls", env=cli_env).stdout.splitlines()
    assert listing[0].split()[:5] == ["PHONE", "NUMBER", "SHA256", "MEDIA", "ID"]
    assert media_id in listing[1] and "application/pdf" in listing[1] and str(path) in listing[1]
    records = [json.loads(line) for line in run_cli("ls", "--json", env=cli_env).stdout.splitlines()]
    assert records[0]["media_id"] == media_id and records[0]["paths"] == [str(path)]
    expiring = run_cli("ls", "--expiring", "1", env=cli_env)
    assert expiring.stdout == "" and "no media ID expires within 1 days" in expiring.stderr

    for target in (str(path), media_id, records[0]["sha256"]):
        shown = run_cli("show", target, env=cli_env)
        assert shown.returncode == 0 and f"media ID:     {media_id}" in shown.stdout
        assert "upload" in shown.stdout.split("history:")[1]
    assert_one_line_error(run_cli("show", "nothing-like-this", env=cli_env), "not in the registry")

    stats = json.loads(run_cli("stats", "--json", env=cli_env).stdout)
    assert (stats["contents"], stats["live_ids"], stats["uploads"]) == (1, 1, 1)


def test_six_processes_uploading_the_same_file_make_one_upload(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_file("same.png")  # and no registry yet: the processes race to create it too
    api.fail(delay=0.5, method="POST")  # the winner's upload is still in flight as others ask
    processes = [
        subprocess.Popen([str(CLI), "upload", str(path)], env=cli_env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [p.returncode for p in processes] == [0] * 6, outputs
    ids = {out.split("\t")[0] for out, _ in outputs}
    statuses = sorted(out.split("\t")[1] for out, _ in outputs)
    assert len(ids) == 1 and statuses == ["cached"] * 5 + ["uploaded"]
    assert api.uploads == 1 and api.count("POST") == 1

    # The same bytes through a copy and through the Python API give the same ID.
    copy = tmp_path / "copy-of-same.png"
    shutil.copy(path, copy)
    assert run_cli("upload", str(copy), env=cli_env).stdout.startswith(ids.pop())
    assert registry_db.count(cli_env["MEDIA_REGISTRY_DB"], "media") == 1


def test_demo_runs_end_to_end_in_its_own_registry(tmp_path: Path) -> None:
    result = subprocess.run([str(CLI), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "uploaded  brochure.pdf as application/pdf" in result.stdout
    assert "logo.jpg as image/png" in result.stdout
    assert "refused" in result.stdout and "image/gif" in result.stdout
    assert "refreshed" in result.stdout and "vanished" in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


@pytest.mark.parametrize("argv", [
    ["upload", "a.pdf", "-q"], ["--db", "ls", "ls", "--json"], ["--db=x.db", "--debug", "--json", "stats"],
    ["serve", "--port", "9", "--allow-root", "/srv"], ["--json", "show", "abcdef12"], ["migrate", "--to-file", "f"],
])
def test_the_parser_built_for_one_command_parses_as_the_whole_one(argv: list[str]) -> None:
    from media_registry.app.cli import _command_given, _parser

    only = _command_given(argv)
    assert only is not None and vars(_parser(only).parse_args(argv)) == vars(_parser().parse_args(argv))
    help_of = {name: sub.format_help() for name, sub in _subparsers(_parser()).items()}
    assert {name: sub.format_help() for name, sub in _subparsers(_parser(only)).items()} == {only: help_of[only]}


@pytest.mark.parametrize("argv", [[], ["-h", "ls"], ["--he", "ls"], ["--", "ls"], ["--d", "x", "ls"], ["bogus"],
                                  ["--version"], ["--db"]])
def test_help_prefixes_and_unknown_commands_build_every_command(argv: list[str]) -> None:
    from media_registry.app.cli import _command_given

    assert _command_given(argv) is None


# Plain runs that the arguments' fast reader takes, and runs it leaves to argparse (help, an
# abbreviation, an option it does not read, an error of argparse's: each keeps argparse's message).
PLAIN_RUNS = [
    ["upload", "a.pdf"], ["upload", "a.pdf", "-", "b c.png", "-q"], ["--db", "x.db", "--json", "upload", "a"],
    ["upload", "--db=y", "--quiet", "a", "--debug"], ["ls"], ["--debug", "ls", "--json"], ["show", "abcdef12"],
    ["show", "--json", "--db", "ls", "upload"], ["stats", "--db="], ["--json", "stats", "--debug", "--db", "z"],
    ["--db", "", "ls"], ["upload", ""], ["upload", "-", "é.png", " -x"], ["--json", "--json", "ls", "--json"],
    ["show", "--db=-x", "--db", "a=b", "t"], ["upload", "-q", "--quiet", "a", "-q"], ["--db=ls", "show", "stats"],
]
ARGPARSE_RUNS = [
    [], ["ls", "-h"], ["upload", "--jso", "a"], ["upload", "a", "--json", "b"], ["upload"], ["show"],
    ["show", "a", "b"], ["ls", "x"], ["ls", "--expiring", "3"], ["upload", "-r", "dir"],
    ["upload", "--mime-type", "image/png", "a"],
    ["stats", "--db"], ["stats", "--db", "-x"], ["stats", "-q"], ["show", "--", "-5"], ["inbox"], ["--version"],
    ["--js", "ls"], ["ls", "--"], ["upload", "--", "-q"], ["--db", "-", "ls"], ["show", "-x y"], ["show", "-5"],
    ["upload", "--debug=1", "a"], ["ls", "--json=1"], ["-", "ls"], ["", "ls"], ["upload", "a", "--db", "x", "b"],
    ["-q", "upload", "a"], ["--d", "x", "ls"], ["upload", "-qr", "a"], ["--DB", "x", "ls"], ["stats", "--jsonx"],
]


@pytest.mark.parametrize("argv", PLAIN_RUNS + ARGPARSE_RUNS)
def test_plain_runs_are_read_as_argparse_reads_them(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from media_registry.app._argv import plain_args
    from media_registry.app.cli import _parser

    fast = plain_args(argv)
    assert (fast is not None) == (argv in PLAIN_RUNS)
    try:
        parsed = vars(_parser().parse_args(argv))
    except SystemExit:
        parsed = None
    assert fast is None or vars(fast) == parsed


ARGUMENTS = ["upload", "ls", "show", "stats", "inbox", "--db", "--db=", "--db=-x", "x", "", "é", "-", "--", "-5",
             "a b", "-a b", "--json", "--js", "--json=1", "--debug", "--debug=", "-q", "--quiet", "--q", "-qq", "-r",
             "--d", "-h", "--version", "--expiring", "3", "--mime-type", "---", "--="]


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(ARGUMENTS), max_size=7))
def test_any_run_the_plain_reader_takes_is_read_as_argparse_reads_it(argv: list[str]) -> None:
    from media_registry.app._argv import plain_args
    from media_registry.app.cli import _parser

    fast = plain_args(argv)
    if fast is not None:
        assert vars(fast) == vars(_parser().parse_args(argv))


@pytest.mark.parametrize("columns", [None, "100", "0", "x"])
def test_help_is_as_wide_as_shutil_measures_the_terminal(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    from media_registry.app.cli import _columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _columns() == shutil.get_terminal_size().columns


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(dict(action.choices) for action in parser._actions if isinstance(action, argparse._SubParsersAction))
