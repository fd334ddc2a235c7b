"""`media-registry fake-api` serves the numbers it is given (No-Storage ones with their TTL) and
kills an ID on `POST /_fake/media/ID/kill`, so the refused-ID path can be tried from a shell."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, PNG, run_cli


def exports(server: subprocess.Popen[str]) -> tuple[list[str], dict[str, str]]:
    """The lines fake-api printed up to the one naming its numbers, and the variables they set."""
    lines: list[str] = []
    for line in iter(server.stdout.readline, ""):  # type: ignore[union-attr]
        lines.append(line.rstrip("\n"))
        if line.startswith("# phone numbers:"):
            break
    settings = dict(shlex.split(line)[1].split("=", 1) for line in lines if line.startswith("export "))
    return lines, settings


def test_fake_api_serves_the_numbers_given_and_kills_an_id_on_request(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    server = subprocess.Popen([str(CLI), "fake-api", "--phone-number-id", "111222333",
                               "--phone-number-id", "444555666:90", "--phone-number-id", "777"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines, settings = exports(server)
        assert lines[-1] == "# phone numbers: 111222333 444555666 777 (the first is the default)"
        assert settings["WHATSAPP_PHONE_NUMBER_ID"] == "111222333"
        assert json.loads(settings["MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER"]) == {"444555666": "PT90M"}
        cli_env = {**env, **settings, "MEDIA_REGISTRY_DB": str(tmp_path / "r.db")}
        (tmp_path / "logo.png").write_bytes(sample_media(PNG))
        ids = {phone: run_cli("upload", "-q", "logo.png", "--phone-number-id", phone, env=cli_env,
                              cwd=tmp_path).stdout.strip() for phone in ("111222333", "444555666", "777")}
        assert all(ids.values()) and len(set(ids.values())) == 3, ids
        assert run_cli("upload", "logo.png", "--phone-number-id", "106540352242922", env=cli_env,
                       cwd=tmp_path).returncode == 1  # the built-in number is not served
        (tmp_path / "short.png").write_bytes(sample_media(PNG, salt="short"))
        short = run_cli("upload", "-q", "short.png", "--phone-number-id", "444555666", env=cli_env, cwd=tmp_path)
        shown = json.loads(run_cli("show", "--json", short.stdout.strip(), env=cli_env).stdout)
        lifetime = datetime.fromisoformat(shown["expires_at"]) - datetime.fromisoformat(shown["uploaded_at"])
        assert lifetime == timedelta(minutes=90)

        origin = settings["WHATSAPP_API_BASE"].rsplit("/", 1)[0]
        killed = subprocess.run(["curl", "-sS", "-X", "POST", f"{origin}/_fake/media/{ids['111222333']}/kill"],
                                capture_output=True, text=True, timeout=30)
        assert json.loads(killed.stdout) == {"killed": ids["111222333"]}
        refused = send_image(settings, ids["111222333"])
        assert refused.status_code == 400 and refused.json()["error"]["code"] == 100
        assert send_image(settings, ids["777"], phone="777").status_code == 200  # the others live on
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0 and "/_fake/media/ID/kill" in stderr


def send_image(settings: dict[str, str], media_id: str, phone: str = "111222333") -> httpx.Response:
    return httpx.post(f"{settings['WHATSAPP_API_BASE']}/{phone}/messages",
                      headers={"Authorization": f"Bearer {settings['WHATSAPP_TOKEN']}"},
                      json={"messaging_product": "whatsapp", "to": "16505551234", "type": "image",
                            "image": {"id": media_id}})


def test_a_no_storage_number_keeps_media_its_ttl_and_an_upload_may_ask_its_own() -> None:
    with FakeGraphAPI(ttl_by_phone_number={"444": timedelta(minutes=60)}) as api:
        upload = {"messaging_product": "whatsapp", "type": PNG}
        headers = {"Authorization": f"Bearer {api.token}"}
        short = httpx.post(f"{api.base_url}/444/media", data=upload, headers=headers,
                           files={"file": ("a.png", sample_media(PNG), PNG)}).json()["id"]
        asked = httpx.post(f"{api.base_url}/444/media", data={**upload, "ttl_minutes": "120"}, headers=headers,
                           files={"file": ("a.png", sample_media(PNG), PNG)}).json()["id"]
        api.advance(minutes=61)
        assert not api.live(short) and api.live(asked)


def test_killing_an_id_the_fake_never_issued_is_a_404_naming_it() -> None:
    with FakeGraphAPI() as api:
        answer = httpx.post(f"{api.origin}/_fake/media/123/kill")
        assert answer.status_code == 404 and "123" in answer.json()["error"]
        assert api.count() == 0  # the control endpoint is no Graph request
