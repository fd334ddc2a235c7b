"""A registry file name holding a character that means something in a URI (``#``, ``?``,
``%``, a space) names that file and no other, on every command."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import run_cli


@pytest.mark.parametrize("name", ["reg#2.db", "a?b 100%41.db"])
def test_every_command_uses_the_file_named_and_no_other(
    name: str, tmp_path: Path, api: FakeGraphAPI, postgres_url: str, make_file: Callable[..., Path],
) -> None:
    folder = tmp_path / "registries"
    folder.mkdir()
    db = folder / name
    media = make_file("card.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    env.update(WHATSAPP_TOKEN=api.token, WHATSAPP_PHONE_NUMBER_ID=api.phone_number_id,
               WHATSAPP_API_BASE=api.base_url, MEDIA_REGISTRY_HOST_ID="app-1")
    commands = [("init",), ("upload", str(media)), ("ls",), ("show", str(media)), ("stats",),
                ("refresh", "--dry-run"), ("purge", "--dry-run"), ("migrate", "--to", postgres_url)]
    outputs = {}
    for command in commands:
        result = run_cli("--db", str(db), *command, env=env)
        assert result.returncode == 0, (command, result.stderr)
        outputs[command[0]] = result.stdout
        assert {path.name for path in folder.iterdir()} <= {name, f"{name}-wal", f"{name}-shm"}, command
    media_id = outputs["upload"].split("\t")[0]
    assert media_id in outputs["ls"] and media_id in outputs["show"]
    assert registry_db.media_ids(str(db), "current") == [media_id]
    assert registry_db.media_ids(postgres_url, "current") == [media_id]
    assert api.uploads == 1
