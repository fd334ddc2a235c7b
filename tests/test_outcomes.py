"""Outcomes at the edges: webhook payloads of the wrong shape, `ls --expiring` out of range,
a closed pipe, the exit status of a delete the API could not do, the hint for an unknown
inbound ID, and lease holders that were killed but not yet reaped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from media_registry import MediaRegistry
from media_registry._processes import alive
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, PDF, PNG, run_cli, wait_for

# -- item 9: webhook payloads of the wrong shape -----------------------------------------


def image(media_id: str, **extra: Any) -> dict[str, Any]:
    return {"from": "16505551234", "id": f"wamid.{media_id}", "type": "image",
            "image": {"id": media_id, "mime_type": PNG, **extra}}


def payload_with(*messages: Any) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "messages": list(messages)}}]}]}


def deeply_nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"more": value}
    return value


def test_bad_webhook_items_are_reported_and_the_others_downloaded(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    first = api.add_media(sample_media(PNG, salt="first"), PNG)
    last = api.add_media(sample_media(PNG, salt="last"), PNG)
    payload = payload_with(
        image(first),
        "a string where a message belongs",
        image("1111", sha256="not-a-sha256"),
        {"type": "image", "image": "a string where the media object belongs"},
        image("2222", caption=deeply_nested(2000)),
        image(last),
    )
    problems: list[str] = []
    results = registry.download_webhook(payload, tmp_path / "inbox", on_invalid=problems.append)
    assert [r.media_id for r in results] == [first, last]
    where = "webhook entry[0].changes[0].value.messages"
    assert problems == [
        f"{where}[1]: a JSON string, not an object; skipped",
        f"{where}[2]: media 1111: the sha256 'not-a-sha256' is neither hex nor base64 of 32 bytes; skipped",
        f"{where}[3]: a message of type image without a media ID; skipped",
        f"{where}[4]: media 2222: caption: input should be a valid string; skipped",
    ]
    assert api.count("GET", "/1111") == api.count("GET", "/2222") == 0


@pytest.mark.parametrize(("payload", "expected"), [
    ([payload_with()], "webhook payload: a JSON list, not an object; nothing to download"),
    ({"entry": "everything"}, "webhook entry: a JSON string, not a list; skipped"),
    ({"entry": [{"changes": [{"value": ["x"]}]}]},
     "webhook entry[0].changes[0].value: a JSON list, not an object; skipped"),
])
def test_a_payload_of_the_wrong_shape_is_one_line(
    cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path, payload: Any, expected: str
) -> None:
    result = run_cli("download", "--webhook", "-", "--out", str(tmp_path / "in"), env=cli_env,
                     stdin=json.dumps(payload))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"media-registry: error: {expected}\n"


def test_the_cli_downloads_the_good_items_and_names_the_bad_ones(
    cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    good = api.add_media(sample_media(PNG, salt="good"), PNG)
    payload = payload_with(image("3333", sha256="bad"), image(good))
    result = run_cli("download", "--webhook", "-", "--out", str(tmp_path / "in"), env=cli_env,
                     stdin=json.dumps(payload))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}\tdownloaded\t")
    assert result.stderr == ("media-registry: error: webhook entry[0].changes[0].value.messages[0]: "
                             "media 3333: the sha256 'bad' is neither hex nor base64 of 32 bytes; skipped\n")


def test_a_payload_nested_too_deeply_to_parse_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("download", "--webhook", "-", "--out", str(tmp_path / "in"), env=cli_env,
                     stdin="[" * 200_000 + "]" * 200_000)
    assert result.returncode == 1
    assert result.stderr == "media-registry: error: -: the webhook payload is nested too deeply to be a webhook\n"


# -- item 9: ls --expiring out of range, and a closed pipe -------------------------------


@pytest.mark.parametrize("days", ["nan", "inf", "-1", "1e308", "soon"])
def test_ls_expiring_takes_only_a_number_of_days(cli_env: dict[str, str], days: str) -> None:
    run_cli("init", env=cli_env)
    result = run_cli("ls", "--expiring", days, env=cli_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"media-registry ls: error: argument --expiring: '{days}' is not a number of days from 0 "
        "to 36500 (e.g. 3 or 0.5)")


def test_a_closed_pipe_ends_ls_quietly(cli_env: dict[str, str], make_file: Callable[..., Path],
                                       registry: MediaRegistry) -> None:
    for i in range(5):
        registry.get_or_upload(make_file(f"{i}.png", PNG))
    # The reader is gone before the first byte is written (as `| head -1` soon is).
    ls = subprocess.Popen([str(CLI), "ls"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert ls.stdout is not None and ls.stderr is not None
    ls.stdout.close()
    assert ls.wait(timeout=60) == 1
    assert ls.stderr.read() == b""


# -- item 12: misleading outcomes ---------------------------------------------------------


def test_delete_without_a_token_exits_1_and_says_the_delete_is_owed(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("menu.pdf", PDF)
    media_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    without_token = {k: v for k, v in cli_env.items() if k != "WHATSAPP_TOKEN"}
    result = run_cli("delete", str(path), env=without_token)
    assert result.returncode == 1
    assert result.stdout.startswith(f"pending   {media_id} (no access token: set WHATSAPP_TOKEN")
    assert result.stderr == ("media-registry: error: the content is marked deleted and never served again, "
                             "but the API could not delete every ID now (see why above); "
                             "`media-registry purge` or the daemon retries them\n")
    assert api.live(media_id)
    assert run_cli("purge", env=cli_env).stdout == f"deleted   {media_id}\n"
    assert not api.live(media_id)


def test_delete_while_the_api_is_down_exits_1_and_purge_finishes_it(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("menu.pdf", PDF)
    media_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    api.fail(status=503, times=2)  # the first try and the one retry (MAX_RETRIES=1)
    result = run_cli("delete", str(path), env=cli_env)
    assert result.returncode == 1 and result.stdout.startswith(f"pending   {media_id} (Graph API error")
    assert "`media-registry purge` or the daemon retries them" in result.stderr
    assert "deleted:      -" not in run_cli("show", str(path), env=cli_env).stdout
    assert run_cli("purge", env=cli_env).stdout == f"deleted   {media_id}\n"


def test_downloading_an_unknown_inbound_id_advises_asking_the_sender(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli("download", "123456789", "--out", str(tmp_path / "in"), env=cli_env)
    assert result.returncode == 1 and "upload the file again" not in result.stderr
    assert result.stderr == ("media-registry: error: media 123456789: the Graph API does not know this media ID "
                             "(code 100, subcode 33); inbound media IDs live 7 days: ask the sender to "
                             "send it again\n")


# -- item 14: a killed holder that was not reaped yet is dead ----------------------------


def killed_not_reaped(process: subprocess.Popen[Any]) -> None:
    """SIGKILL, then wait until it is a zombie without reaping it (WNOWAIT)."""
    process.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["sleep", "600"])
    try:
        assert alive(child.pid)
        killed_not_reaped(child)
        assert not alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert alive(os.getpid())


def test_a_lease_held_by_a_zombie_is_taken_over_at_once(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    env = {**cli_env, "MEDIA_REGISTRY_LEASE_SECONDS": "3600"}  # only death can free the lease
    path = make_file("launch.png", PNG)
    api.fail(method="POST", delay=30)
    holder = subprocess.Popen([str(CLI), "upload", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: api.count("POST") == 1, "the holder's upload to start")
        killed_not_reaped(holder)
        result = run_cli("upload", str(path), env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\t")[1] == "uploaded"
    finally:
        holder.wait()
