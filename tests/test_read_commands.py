"""``ls``, ``show`` and ``stats`` start as lean as a cached upload (the store alone: neither
pydantic nor httpx) and print exactly what the full registry's records print."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from media_registry import MediaRegistry
from media_registry.app.console import print_json
from media_registry.testing import FakeGraphAPI
from test_cli_shell import HEAVY, START_UP, imported_modules

from conftest import PDF, run_cli

# A lower-case name, which only pydantic-settings reads, makes every command take the full path.
FULL = {"media_registry_force_full": "1"}


def printed_json(*dumps: dict[str, Any]) -> str:
    """The JSON lines the command line printed for these model dumps before it read rows itself."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for dump in dumps:
            print_json(dump)
    return out.getvalue()


@pytest.fixture
def filled(make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path],
           api: FakeGraphAPI) -> MediaRegistry:
    """A registry holding a content on two numbers, a deleted one, and paths that need escaping."""
    api.add_phone_number("42")
    registry = make_registry()
    banner = make_file("banner.png")
    registry.get_or_upload(banner)
    registry.get_or_upload(banner, phone_number_id="42")
    registry.get_or_upload(make_file("caf\u00e9\tmenu.png", salt="menu"))
    gone = make_file("gone.pdf", PDF)
    registry.get_or_upload(gone)
    api.fail(method="DELETE", status=500, times=10)  # its remote DELETE owed: listed as deleted
    registry.delete(str(gone))
    assert sorted(record.state for record in registry.records()) == ["current"] * 3 + ["deleted"]
    return registry


@pytest.mark.sqlite_only  # a PostgreSQL URL takes the full path (its pool, its host's row)
def test_read_commands_import_nothing_heavy(cli_env: dict[str, str], filled: MediaRegistry) -> None:
    sha256 = next(filled.records()).sha256
    for command in (["ls"], ["ls", "--json"], ["ls", "--expiring", "40"], ["show", sha256[:10]],
                    ["show", "--json", sha256], ["stats"], ["stats", "--json"]):
        loaded = imported_modules(*command, env=cli_env)
        assert "media_registry.store" in loaded and not loaded & HEAVY, (command, loaded & HEAVY)
        # argparse reads --expiring; the JSON listing has its own row reader.
        if "--expiring" not in command and command != ["ls", "--json"]:
            assert not loaded & START_UP, (command, loaded & START_UP)
    # The probe sees them when the full path loads them.
    assert {"httpx", "pydantic"} <= imported_modules("ls", env={**cli_env, **FULL})


def test_ls_and_show_print_the_records_json(cli_env: dict[str, str], filled: MediaRegistry, tmp_path: Path) -> None:
    records = list(filled.records())
    listed = run_cli("ls", "--json", env=cli_env)
    assert listed.stdout == printed_json(*(record.model_dump(exclude={"history"}) for record in records))
    for target in (records[-1].sha256, str(tmp_path / "caf\u00e9\tmenu.png")):
        record = filled.lookup(target)
        assert record is not None and record.history
        assert run_cli("show", "--json", target, env=cli_env).stdout == printed_json(record.model_dump())


@pytest.mark.sqlite_only  # on PostgreSQL both are the full path
def test_the_lean_and_the_full_path_print_the_same(cli_env: dict[str, str], filled: MediaRegistry) -> None:
    prefix = next(filled.records()).sha256[:8]
    for command in (["ls"], ["ls", "--json"], ["ls", "--expiring", "40"], ["show", prefix],
                    ["show", "nothing-known"], ["stats"], ["stats", "--json"]):
        lean, full = run_cli(*command, env=cli_env), run_cli(*command, env={**cli_env, **FULL})
        assert (lean.returncode, lean.stdout, lean.stderr) == (full.returncode, full.stdout, full.stderr), command


def test_a_json_line_is_the_line_print_json_writes(filled: MediaRegistry, make_file: Callable[..., Path]) -> None:
    """Paths needing escapes (a tab, quotes, a backslash, a newline) and not, several paths to
    a content, no time, on each backend: the listing's own line, written from its text rows,
    is what print_json writes for the same row's record, in the same order."""
    from media_registry.app.reads import json_line, record_fields
    from media_registry.store.listing import listed_rows

    for name in ('"q",.png', "back\\slash.png", "new\nline.png", "plain-copy.png"):
        filled.get_or_upload(make_file(name, salt="menu"))  # the menu's content, more paths
    rows = list(filled.store.content_rows())
    assert max(len(row.paths) for row in rows) == 5
    # The content without a current ID first on both backends (SQLite sorts NULL first, PostgreSQL last).
    phones = [row.phone_number_id for row in rows]
    assert phones[0] is None and phones[1:] == sorted(phone for phone in phones[1:] if phone is not None)
    assert [json_line(row) for row in listed_rows(filled.store)] == [printed_json(record_fields(row)) for row in rows]
    soon = min(row.expires_at for row in rows if row.expires_at is not None)
    expiring = [json_line(row) for row in listed_rows(filled.store, expiring_before=soon + timedelta(seconds=1))]
    assert expiring and expiring == [printed_json(record_fields(row))
                                     for row in filled.store.content_rows(expiring_before=soon + timedelta(seconds=1))]


def test_ls_json_writes_awkward_values_as_print_json_does(cli_env: dict[str, str], filled: MediaRegistry,
                                                          make_file: Callable[..., Path], api: FakeGraphAPI,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Quotes, backslashes, control and non-ASCII characters (a newline, DEL, U+2028) in paths
    and types, several numbers and paths per content, a deleted content, one without a current
    ID, times not stored in their printed form: ``ls --json`` prints what print_json prints for
    each row's record, to a pipe as to a text stream."""
    from media_registry.app.cli import main
    from media_registry.app.reads import record_fields

    for name in ('"q",.png', "back\\slash.png", "new\nline.png", "caf\u00e9\u2028\x7f.png", "\x01ctl \u65e5.png"):
        filled.get_or_upload(make_file(name, salt="menu"))  # the menu's content, more paths
    api.add_phone_number("9")
    menu, lonely, skewed = (make_file(name, salt=salt) for name, salt in (
        ("caf\u00e9\tmenu.png", "menu"), ("lonely.png", "lonely"), ("skewed.png", "skewed")))
    filled.get_or_upload(menu, phone_number_id="9")
    for path in (lonely, skewed):
        filled.get_or_upload(path)
    edits = [("UPDATE contents SET mime_type = :value WHERE sha256 = :sha256",
              'image/png; name="caf\u00e9\\\x01\n\x7f\u2028"', menu),
             ("UPDATE media SET state = 'invalidated' WHERE sha256 = :sha256 AND :value = :value", "", lonely),
             # An offset and a fraction: read back and printed as UTC to the second.
             ("UPDATE media SET uploaded_at = :value WHERE sha256 = :sha256", "2026-03-01T10:00:00.75+02:00",
              skewed)]
    for sql, value, path in edits:
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        filled.store.backend.write(lambda tx, sql=sql, value=value, sha256=sha256:
                                   tx.execute(sql, {"value": value, "sha256": sha256}))
    rows = list(filled.store.content_rows())
    assert max(len(row.paths) for row in rows) == 6 and len({row.phone_number_id for row in rows}) == 4
    assert [row.media_id for row in rows if lonely.name in "".join(row.paths)] == [None]
    expected = printed_json(*(record_fields(row) for row in rows))
    assert run_cli("ls", "--json", env=cli_env).stdout == expected
    within = run_cli("ls", "--json", "--expiring", "40", env=cli_env).stdout
    listed = filled.store.content_rows(expiring_before=datetime.now(timezone.utc) + timedelta(days=40))
    assert within == printed_json(*(record_fields(row) for row in listed))
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ls", "--json"]) == 0
    assert out.getvalue() == expected
