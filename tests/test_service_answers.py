"""What `media-registry serve` answers to odd requests and lost races: one status and one
line each, no traceback in its log. A real uvicorn server in a subprocess, the FakeGraphAPI
behind it."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import PDF, run_cli, wait_for
from pg_server import PostgresServer, create_database
from service_helpers import Server, start_server

pytestmark = pytest.mark.sqlite_only  # the service's own answers: one backend is enough


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    """The folder clients may name files in, holding brochure.pdf."""
    root = tmp_path / "media"
    root.mkdir()
    (root / "brochure.pdf").write_bytes(sample_media(PDF, salt="brochure"))
    return root


@pytest.fixture
def server(cli_env: dict[str, str], tmp_path: Path, media_root: Path) -> Iterator[Server]:
    """The service on loopback, paths allowed under ``media_root``; stopped with SIGTERM."""
    running = start_server(cli_env, tmp_path / "serve.log", "--allow-root", str(media_root))
    yield running
    assert running.stop() == 0, running.text()
    assert "Traceback" not in running.text()


def test_a_symlink_loop_is_one_line_and_no_traceback(server: Server, media_root: Path) -> None:
    (media_root / "loop.pdf").symlink_to("loop.pdf")
    (media_root / "ping").symlink_to("pong")
    (media_root / "pong").symlink_to("ping")
    with server.client() as client:
        answers = [client.post("/v1/media", json={"path": str(media_root / name)})
                   for name in ("loop.pdf", "ping/brochure.pdf")]
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "InputError"
        assert "symlinks (a loop)" in answer.json()["error"]["message"]
    assert "Traceback" not in server.text()


def test_json_like_media_types_are_json_requests(server: Server, media_root: Path) -> None:
    body = f'{{"path": "{media_root / "brochure.pdf"}"}}'
    sha256 = hashlib.sha256((media_root / "brochure.pdf").read_bytes()).hexdigest()
    with server.client() as client:
        for content_type in ("text/json", "application/merge-patch+json", "application/vnd.api+json",
                             "Application/JSON; charset=utf-8"):
            answer = client.post("/v1/media", content=body, headers={"Content-Type": content_type})
            assert answer.status_code == 200, (content_type, answer.text)
            assert (answer.json()["mime_type"], answer.json()["sha256"]) == (PDF, sha256), content_type


def test_an_empty_body_and_an_empty_mime_type_are_400(server: Server, api: FakeGraphAPI) -> None:
    with server.client() as client:
        empty_bytes = client.post("/v1/media", content=b"",
                                  headers={"Content-Type": "application/octet-stream"})
        empty_json = client.post("/v1/media", content=b"", headers={"Content-Type": "application/json"})
        empty_type = client.post("/v1/media", params={"mime_type": ""}, content=sample_media(PDF),
                                 headers={"Content-Type": "application/octet-stream"})
    for answer in (empty_bytes, empty_json, empty_type):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "InputError"
    assert "body is empty" in empty_bytes.json()["error"]["message"]
    assert "mime_type is empty" in empty_type.json()["error"]["message"]
    assert api.uploads == 0


@pytest.mark.parametrize("blank", [" ", "\t", " \n "])
def test_a_blank_mime_type_is_400_like_an_empty_one(server: Server, api: FakeGraphAPI, blank: str) -> None:
    with server.client() as client:
        answer = client.post("/v1/media", params={"mime_type": blank}, content=sample_media(PDF),
                             headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"].startswith("mime_type is empty or blank; ")
    assert api.uploads == 0


def test_content_deleted_while_its_upload_runs_is_409(
    server: Server, api: FakeGraphAPI, cli_env: dict[str, str]
) -> None:
    data = sample_media(PDF, salt="doomed")
    held = threading.Event()
    api.fail(until=held, method="POST")
    answers: list[httpx.Response] = []
    with server.client() as client:
        posting = threading.Thread(target=lambda: answers.append(client.post("/v1/media", content=data)))
        posting.start()
        try:
            wait_for(lambda: api.count("POST") == 1, "the upload to start")
            deleted = run_cli("delete", hashlib.sha256(data).hexdigest(), env=cli_env)
            assert deleted.returncode == 0, deleted.stderr
        finally:
            held.set()
            posting.join(timeout=60)
    assert answers[0].status_code == 409, answers[0].text
    assert answers[0].json()["error"]["type"] == "ContentDeleted"
    assert registry_db.media_states(cli_env["MEDIA_REGISTRY_DB"]) == []


def test_no_answer_names_the_database_while_postgresql_is_down(
    cli_env: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = create_database(postgres_server.url())
    env = {**cli_env, "MEDIA_REGISTRY_DB": url, "MEDIA_REGISTRY_BUSY_TIMEOUT": "1"}  # fail fast once down
    running = start_server(env, tmp_path / "serve.log", "--no-schedule")
    data = sample_media(PDF, salt="while down")
    try:
        with running.client() as client:
            assert client.get("/healthz").status_code == 200
            postgres_server.stop()
            health = client.get("/healthz")
            answers = [client.post("/v1/media", content=data),
                       client.get(f"/v1/media/{hashlib.sha256(data).hexdigest()}"), client.get("/metrics")]
    finally:
        assert running.stop() == 0
    parsed = httpx.URL(url)
    assert health.status_code == 503 and health.json()["failing"] == "registry", health.text
    reasons = [health.json()["reason"]] + [answer.json()["error"]["message"] for answer in answers]
    assert [answer.status_code for answer in answers] == [503] * 3, [answer.text for answer in answers]
    for reason in reasons:
        assert reason.startswith("RegistryUnreachable: ") and reason.endswith("details in the log"), reason
        for secretive in (parsed.username, parsed.host, str(parsed.port), parsed.path.strip("/")):
            assert secretive and secretive not in reason, (secretive, reason)
    assert running.text().count(parsed.path.strip("/")) >= 4  # the details are in the log
