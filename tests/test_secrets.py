"""The token never appears in output, logs, errors or the registry, whatever the command."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, PDF, run_cli, wait_for
from registry_db import age_ids

TOKEN = "EAAG" + secrets.token_urlsafe(48).replace("-", "x").replace("_", "y")


@pytest.fixture
def secret_api() -> Iterator[FakeGraphAPI]:
    with FakeGraphAPI(token=TOKEN) as api:
        yield api


def test_no_command_reveals_the_token(secret_api: FakeGraphAPI, cli_env: dict[str, str],
                                      tmp_path: Path) -> None:
    env = {**cli_env, "WHATSAPP_TOKEN": TOKEN, "WHATSAPP_API_BASE": secret_api.base_url,
           "WHATSAPP_PHONE_NUMBER_ID": secret_api.phone_number_id}
    brochure, leaflet = tmp_path / "brochure.pdf", tmp_path / "leaflet.pdf"
    brochure.write_bytes(sample_media(PDF, salt="brochure"))
    leaflet.write_bytes(sample_media(PDF, salt="leaflet"))
    inbound = secret_api.add_media(sample_media("image/jpeg"), "image/jpeg")
    webhook = json.dumps({"entry": [{"changes": [{"value": {"messages": [
        {"from": "1", "id": "wamid.S", "type": "image", "image": {"id": inbound}}]}}]}]})
    outputs: list[str] = []

    def cli(*args: str, stdin: str | None = None, extra: dict[str, str] | None = None) -> None:
        result = run_cli(*args, env={**env, **(extra or {})}, stdin=stdin)
        outputs.append(f"{args}: {result.returncode}\n{result.stdout}{result.stderr}")

    cli("init")
    cli("upload", str(brochure), str(leaflet))
    cli("upload", "--json", str(brochure))
    cli("ls"), cli("ls", "--json"), cli("show", str(brochure)), cli("stats", "--json")
    age_ids(env["MEDIA_REGISTRY_DB"], days_left=2)
    cli("refresh"), cli("refresh", "--dry-run")
    cli("delete", str(leaflet)), cli("purge"), cli("purge", "--dry-run")
    cli("download", inbound, "--out", str(tmp_path / "in"))
    cli("download", "--webhook", "-", "--out", str(tmp_path / "in"), stdin=webhook)
    cli("download", "404404", "--out", str(tmp_path / "in"))
    cli("upload", str(tmp_path / "missing.pdf"))
    secret_api.fail(status=400, code=100, message=f"echoing {TOKEN} back")  # a careless proxy
    (tmp_path / "echo.pdf").write_bytes(sample_media(PDF, salt="echo"))
    cli("--debug", "upload", str(tmp_path / "echo.pdf"))
    wrong = TOKEN[::-1]
    cli("--debug", "upload", str(leaflet), extra={"WHATSAPP_TOKEN": wrong})
    cli("upload", str(leaflet), extra={"WHATSAPP_API_BASE": "http://127.0.0.1:9/v26.0",
                                         "MEDIA_REGISTRY_MAX_RETRIES": "0"})

    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(CLI), "daemon"], env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: "purge done" in log.read_text() and "refresh done" in log.read_text(), "a daemon pass")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0

    everything = "\n".join(outputs) + log.read_text()
    assert "uploaded" in everything and "downloaded" in everything  # the commands did run
    assert TOKEN not in everything and wrong not in everything
    assert TOKEN[:20] not in everything
    for stored in tmp_path.glob("registry.db*"):
        assert TOKEN.encode() not in stored.read_bytes(), stored.name
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in secret_api.received)
