"""`media-registry handle` and the service's `POST /v1/handles` against the local Graph API:
a handle printed, made once, and a type Meta does not take refused in one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from file_server import FileServer
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import PDF, PNG, run_cli
from service_helpers import Server, start_server

pytestmark = pytest.mark.sqlite_only  # the command line and service's own shapes: one backend is enough


@pytest.fixture
def env(cli_env: dict[str, str], api: FakeGraphAPI) -> dict[str, str]:
    return {**cli_env, "WHATSAPP_APP_ID": api.app_id}


def test_handle_prints_a_handle_made_once(env: dict[str, str], api: FakeGraphAPI, tmp_path: Path) -> None:
    sample = tmp_path / "sample.png"
    sample.write_bytes(sample_media(PNG, salt="cli"))
    first = run_cli("handle", str(sample), env=env)
    assert first.returncode == 0, first.stderr
    handle = first.stdout.strip()
    assert handle.startswith("4::") and first.stderr == ""
    again = run_cli("handle", str(sample), "--json", env=env)
    assert again.stdout.strip() == f'{{"handle": "{handle}", "source": "{sample}"}}'
    assert api.sessions.count() == 1


def test_handle_refuses_another_type_and_a_missing_app_id(env: dict[str, str], api: FakeGraphAPI,
                                                          tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_bytes(sample_media("text/plain"))
    refused = run_cli("handle", str(note), env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"media-registry: error: {note}: a template header sample must be a PDF, JPEG, "
                              "PNG or MP4 (Meta's types), not text/plain; convert it first\n")
    no_app = run_cli("handle", str(note), env={k: v for k, v in env.items() if k != "WHATSAPP_APP_ID"})
    assert no_app.stderr.startswith("media-registry: error: no app ID: set WHATSAPP_APP_ID")
    assert api.count() == 0


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "media"
    root.mkdir()
    running = start_server(env, tmp_path / "serve.log", "--allow-root", str(root), "--allow-private-urls")
    yield running
    assert running.stop() == 0, running.text()


def test_the_service_makes_one_handle_from_bytes_a_path_and_a_url(
    server: Server, api: FakeGraphAPI, tmp_path: Path, files: FileServer
) -> None:
    data = sample_media(PDF, salt="service")
    (tmp_path / "media" / "menu.pdf").write_bytes(data)
    url = files.add("/menu.pdf", data)
    with server.client() as client:
        answers = [client.post("/v1/handles", content=data, headers={"Content-Type": "application/pdf"}),
                   client.post("/v1/handles", json={"path": str(tmp_path / "media" / "menu.pdf")}),
                   client.post("/v1/handles", json={"url": url})]
        refused = client.post("/v1/handles", content=sample_media("image/webp"))
    assert [answer.status_code for answer in answers] == [200, 200, 200], [a.text for a in answers]
    assert len({answer.json()["handle"] for answer in answers}) == 1
    assert api.sessions.count() == 1
    assert refused.status_code == 415
    assert "a template header sample must be a PDF" in refused.json()["error"]["message"]
