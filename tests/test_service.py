"""`media-registry serve`: a real uvicorn server in a subprocess, real clients (httpx, curl,
Node's fetch), the FakeGraphAPI behind it."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.client
import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from media_registry import AccessDenied, AsyncMediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PDF, PNG, run_cli, wait_for
from service_helpers import Server, start_metrics_daemon, start_server


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    """The folder whose files clients may name by path."""
    root = tmp_path / "media"
    root.mkdir()
    return root


@pytest.fixture
def server(cli_env: dict[str, str], tmp_path: Path, media_root: Path) -> Iterator[Server]:
    """The service on loopback, paths allowed under ``media_root``; stopped with SIGTERM."""
    running = start_server(cli_env, tmp_path / "serve.log", "--allow-root", str(media_root))
    yield running
    assert running.stop() == 0, running.text()


def seed(server: Server, media_root: Path, name: str = "banner.png", mime_type: str = PNG) -> tuple[bytes, str]:
    """Register a file through a path source; return its bytes and media ID."""
    path = media_root / name
    path.write_bytes(sample_media(mime_type, salt=name))
    with server.client() as client:
        answer = client.post("/v1/media", json={"path": str(path)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "uploaded"
    return path.read_bytes(), answer.json()["media_id"]


def test_a_path_source_uploads_once_and_answers_the_documented_shape(
    server: Server, media_root: Path, api: FakeGraphAPI
) -> None:
    data, media_id = seed(server, media_root)
    with server.client() as client:
        again = client.post("/v1/media", json={"path": str(media_root / "banner.png")}).json()
    assert set(again) == {"media_id", "status", "sha256", "mime_type", "expires_at"}
    assert again["media_id"] == media_id and again["status"] == "cached"
    assert again["sha256"] == hashlib.sha256(data).hexdigest() and again["mime_type"] == PNG
    assert api.uploads == 1


def test_bytes_from_httpx_curl_and_node_get_the_media_id(
    server: Server, media_root: Path, api: FakeGraphAPI, tmp_path: Path
) -> None:
    data, media_id = seed(server, media_root)
    body = tmp_path / "body.png"
    body.write_bytes(data)
    with server.client() as client:
        by_httpx = client.post("/v1/media", content=data,
                               headers={"Content-Type": "application/octet-stream"}).json()
    by_curl = json.loads(subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--data-binary", f"@{body}",
         "-H", "Content-Type: application/octet-stream", f"{server.url}/v1/media"],
        capture_output=True, text=True, check=True, timeout=60).stdout)
    node = (f"const fs = require('fs');"
            f"fetch('{server.url}/v1/media', {{method: 'POST', body: fs.readFileSync('{body}')}})"
            ".then(r => r.json()).then(j => console.log(JSON.stringify(j)))"
            ".catch(e => { console.error(e); process.exit(1); });")
    by_node = json.loads(subprocess.run(["node", "-e", node], capture_output=True, text=True,
                                        check=True, timeout=60).stdout)
    for answer in (by_httpx, by_curl, by_node):
        assert answer["media_id"] == media_id and answer["status"] == "cached", answer
        assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.uploads == 1


def test_hash_first_lookup(server: Server, media_root: Path) -> None:
    data, media_id = seed(server, media_root)
    sha256 = hashlib.sha256(data).hexdigest()
    with server.client() as client:
        found = client.get(f"/v1/media/{sha256}")
        upper = client.get(f"/v1/media/{sha256.upper()}")
        missing = client.get(f"/v1/media/{'0' * 64}")
        other_number = client.get(f"/v1/media/{sha256}", params={"phone_number_id": "999"})
        malformed = client.get("/v1/media/not-a-sha")
    assert found.status_code == 200 and found.json() == {
        "media_id": media_id, "sha256": sha256, "mime_type": PNG,
        "expires_at": found.json()["expires_at"]}
    assert upper.json()["media_id"] == media_id
    assert missing.status_code == 404 and other_number.status_code == 404
    assert missing.json()["error"]["type"] == "NotInRegistry"
    assert "POST the bytes to /v1/media" in missing.json()["error"]["message"]
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "InputError"


def test_an_expiring_id_is_not_served_by_the_lookup(server: Server, media_root: Path,
                                                    cli_env: dict[str, str]) -> None:
    data, _ = seed(server, media_root)
    registry_db.age_ids(cli_env["MEDIA_REGISTRY_DB"], days_left=0.5)  # under min_validity (1 day)
    with server.client() as client:
        assert client.get(f"/v1/media/{hashlib.sha256(data).hexdigest()}").status_code == 404


def test_paths_outside_the_allowed_roots_are_refused(
    server: Server, media_root: Path, tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    outside = make_file("secret.pdf", PDF)
    (media_root / "sub").mkdir()
    (media_root / "link.pdf").symlink_to(outside)
    (media_root / "sub" / "dirlink").symlink_to(tmp_path)
    inside = media_root / "sub" / "ok.pdf"
    inside.write_bytes(sample_media(PDF, salt="ok"))
    refused = [str(outside), f"{media_root}/../secret.pdf", f"{media_root}/sub/../../secret.pdf",
               str(media_root / "link.pdf"), str(media_root / "sub" / "dirlink" / "secret.pdf"),
               "/etc/passwd", f"{media_root}-sibling/x.pdf"]
    with server.client() as client:
        for path in refused:
            answer = client.post("/v1/media", json={"path": path})
            assert answer.status_code == 403, path
            assert answer.json()["error"]["type"] == "AccessDenied"
            assert "--allow-root" in answer.json()["error"]["message"]
        relative = client.post("/v1/media", json={"path": "media/sub/ok.pdf"})
        dotted_inside = client.post("/v1/media", json={"path": f"{media_root}/sub/../sub/ok.pdf"})
        missing = client.post("/v1/media", json={"path": str(media_root / "nope.pdf")})
    assert relative.status_code == 400 and "/absolute/path" in relative.json()["error"]["message"]
    assert dotted_inside.status_code == 200 and dotted_inside.json()["status"] == "uploaded"
    assert missing.status_code == 400 and missing.json()["error"]["type"] == "SourceNotFound"


def test_without_allow_root_no_path_is_accepted(cli_env: dict[str, str], tmp_path: Path,
                                                make_file: Callable[..., Path]) -> None:
    running = start_server(cli_env, tmp_path / "serve.log")
    try:
        with running.client() as client:
            answer = client.post("/v1/media", json={"path": str(make_file("a.pdf", PDF))})
        assert answer.status_code == 403
    finally:
        assert running.stop() == 0


def test_url_sources_to_private_addresses_are_refused(server: Server) -> None:
    urls = ["https://127.0.0.1/a.png", "http://localhost:8080/a.png", "https://10.1.2.3/a.png",
            "https://192.168.0.1/a.png", "https://169.254.169.254/latest/meta-data",
            "https://[::1]/a.png", "https://[fe80::1]/a.png", "https://[::ffff:127.0.0.1]/a.png",
            "https://0.0.0.0/a.png"]
    with server.client() as client:
        for url in urls:
            answer = client.post("/v1/media", json={"url": url})
            assert answer.status_code == 403, (url, answer.text)
            assert "--allow-private-urls" in answer.json()["error"]["message"]
        for url in ("ftp://example.com/a.png", "file:///etc/passwd", "not a url"):
            assert client.post("/v1/media", json={"url": url}).status_code == 400, url


def test_a_url_source_with_an_upper_case_scheme_is_a_url(server: Server) -> None:
    with server.client() as client:
        for url in ("HTTPS://127.0.0.1/a.png", "Https://10.1.2.3/a.png"):
            answer = client.post("/v1/media", json={"url": url})
            # Taken as a URL, so the address is checked (and refused: not a public one).
            assert answer.status_code == 403, (url, answer.text)
            assert "--allow-private-urls" in answer.json()["error"]["message"]


@pytest.mark.parametrize("body, why", [
    (b'{"path": 1}', "not a string"),
    (b'{"url": "https://x", "path": "/y"}', "both"),
    (b'{"file": "/y"}', "unknown key"),
    (b"[1, 2", "not JSON"),
])
def test_a_bad_json_body_is_a_400(server: Server, body: bytes, why: str) -> None:
    with server.client() as client:
        answer = client.post("/v1/media", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, why
    assert answer.json()["error"]["message"].startswith('the JSON body must be {"url"')


def test_a_body_over_the_limit_is_refused_while_it_streams(server: Server) -> None:
    chunk = b"\0" * (1 << 20)

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to judge it by
        for _ in range(150):
            yield chunk

    with server.client() as client:
        try:
            answer: httpx.Response | None = client.post("/v1/media", content=body())
        except httpx.TransportError:  # the server may hang up before reading the rest
            answer = None
    if answer is not None:
        assert answer.status_code == 413 and answer.json()["error"]["type"] == "MediaTooLarge"
    host, port = server.url.removeprefix("http://").split(":")
    announced = http.client.HTTPConnection(host, int(port), timeout=60)
    announced.putrequest("POST", "/v1/media")
    announced.putheader("Content-Length", "200000000")
    announced.endheaders()  # and not one byte of the body: the header alone is refused
    refused = announced.getresponse()
    assert refused.status == 413 and json.loads(refused.read())["error"]["type"] == "MediaTooLarge"
    announced.close()
    with server.client() as client:
        assert client.get("/healthz").status_code == 200  # still serving


def test_an_unknown_query_parameter_is_a_400(server: Server) -> None:
    with server.client() as client:
        answer = client.get(f"/v1/media/{'0' * 64}", params={"phone_numer_id": "1"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == (
        "unknown query parameter 'phone_numer_id'; this endpoint takes phone_number_id")


def test_a_phone_number_the_graph_api_does_not_know_is_a_400(server: Server, media_root: Path) -> None:
    path = media_root / "menu.pdf"
    path.write_bytes(sample_media(PDF, salt="menu"))
    with server.client() as client:
        answer = client.post("/v1/media", params={"phone_number_id": "3"}, json={"path": str(path)})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("phone number ID 3: the Graph API does not know it")


def test_unknown_media_id_cannot_be_invalidated(server: Server) -> None:
    with server.client() as client:
        answer = client.post("/v1/media/123456789/invalidate")
        malformed = client.post("/v1/media/abc/invalidate")
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "NotInRegistry"
    assert malformed.status_code == 400


def metrics(server: Server, token: str | None = None) -> dict[str, list[Any]]:
    with server.client(token) as client:
        text = client.get("/metrics").text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    values = [s.value for samples in families.values() for s in samples
              if s.name == name and s.labels == labels]
    assert len(values) == 1, (name, labels)
    return values[0]


def test_metrics_are_scraped_and_parsed(server: Server, media_root: Path, api: FakeGraphAPI) -> None:
    data, _ = seed(server, media_root)
    with server.client() as client:
        for _ in range(3):
            client.post("/v1/media", content=data)
    families = metrics(server)
    assert all(name.startswith("media_registry_") for name in families)
    assert sample(families, "media_registry_cache_hits_total") == 3
    assert sample(families, "media_registry_cache_misses_total") == 1
    assert sample(families, "media_registry_uploads_total") == 1
    assert sample(families, "media_registry_upload_duration_seconds_count") == 1
    phone = api.phone_number_id
    assert sample(families, "media_registry_media_ids", phone_number_id=phone, state="live") == 1
    assert sample(families, "media_registry_media_ids", phone_number_id=phone, state="expiring") == 0
    assert sample(families, "media_registry_pending_deletes") == 0
    assert sample(families, "media_registry_overdue_ids") == 0
    wait_for(lambda: sample(metrics(server), "media_registry_last_refresh_success_timestamp_seconds") > 0,
             "the first refresh pass")


def test_healthz_fails_when_refresh_cannot_keep_up(
    cli_env: dict[str, str], tmp_path: Path, media_root: Path, api: FakeGraphAPI
) -> None:
    path = media_root / "menu.pdf"
    path.write_bytes(sample_media(PDF, salt="menu"))
    run_cli("upload", str(path), env=cli_env)
    registry_db.age_ids(cli_env["MEDIA_REGISTRY_DB"], days_left=0.5)
    api.fail(status=503, times=1000)
    running = start_server(cli_env, tmp_path / "serve.log", "--allow-root", str(media_root))
    try:
        with running.client() as client:
            # Overdue IDs fail it from the start; the failed pass names itself once it has run.
            wait_for(lambda: "the last refresh pass had" in (client.get("/healthz").json()["reason"] or ""),
                     "refresh to fail")
            answer = client.get("/healthz")
            assert answer.status_code == 503 and answer.json()["failing"] == "refresh"
            assert sample(metrics(running), "media_registry_refresh_failures_total") >= 1
    finally:
        assert running.stop() == 0
    no_schedule = start_server(cli_env, tmp_path / "serve2.log", "--no-schedule")
    try:
        with no_schedule.client() as client:
            answer = client.get("/healthz")
        assert answer.status_code == 503 and "refresh is not keeping up" in answer.json()["reason"]
        assert sample(metrics(no_schedule), "media_registry_overdue_ids") == 1
    finally:
        assert no_schedule.stop() == 0


def test_healthz_is_ok_on_a_fresh_registry(server: Server) -> None:
    with server.client() as client:
        answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


def test_serve_will_not_run_the_schedule_beside_a_daemon(cli_env: dict[str, str], tmp_path: Path) -> None:
    run_cli("init", env=cli_env)
    log = tmp_path / "daemon.log"
    with log.open("w") as stderr:
        daemon = subprocess.Popen([str(CLI), "daemon"], env=cli_env, stdout=subprocess.DEVNULL, stderr=stderr)
    wait_for(lambda: "daemon started" in log.read_text(), "the daemon to take its lock")
    try:
        refused = run_cli("serve", "--port", "0", env=cli_env)
        assert refused.returncode == 1
        assert refused.stderr.startswith("media-registry: error: another media-registry daemon ")
        assert refused.stderr.count("\n") == 1
        beside = start_server(cli_env, tmp_path / "serve.log", "--no-schedule")
        assert beside.stop() == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0


def test_a_port_in_use_is_one_clear_line(server: Server, cli_env: dict[str, str]) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = run_cli("serve", "--port", port, "--no-schedule", env=cli_env)
    assert result.returncode == 1
    assert result.stderr == (f"media-registry: error: cannot listen on 127.0.0.1 port {port} (Address "
                             "already in use); pick another --port, or stop the process that holds it\n")


def test_a_non_loopback_bind_needs_the_client_token(cli_env: dict[str, str], tmp_path: Path) -> None:
    refused = run_cli("serve", "--host", "0.0.0.0", "--port", "0", env=cli_env)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "MEDIA_REGISTRY_SERVICE_TOKEN" in refused.stderr
    token = "client-" + os.urandom(16).hex()
    env = {**cli_env, "MEDIA_REGISTRY_SERVICE_TOKEN": token}
    # Bound to every address; reached through loopback, so the traffic stays on this machine.
    running = start_server(env, tmp_path / "serve.log", "--host", "0.0.0.0")
    try:
        sha = "0" * 64
        with running.client() as anonymous, running.client("wrong") as wrong, running.client(token) as good:
            for client in (anonymous, wrong):
                for answer in (client.get(f"/v1/media/{sha}"), client.post("/v1/media", content=b"x"),
                               client.get("/metrics"), client.post("/v1/media/1/invalidate")):
                    assert answer.status_code == 401
                    assert answer.json()["error"]["type"] == "NotAuthenticated"
            assert good.get(f"/v1/media/{sha}").status_code == 404
            assert good.get("/metrics").status_code == 200
            assert anonymous.get("/healthz").status_code == 200  # probes need no token
        assert token not in running.text()
    finally:
        assert running.stop() == 0


def test_sigterm_lets_the_upload_in_flight_finish_and_be_recorded(
    server: Server, media_root: Path, api: FakeGraphAPI, cli_env: dict[str, str]
) -> None:
    path = media_root / "late.pdf"
    path.write_bytes(sample_media(PDF, salt="late"))
    api.fail(delay=1.5, method="POST")
    answers: list[httpx.Response] = []
    with server.client() as client:
        posting = threading.Thread(target=lambda: answers.append(
            client.post("/v1/media", json={"path": str(path)})))
        posting.start()
        wait_for(lambda: api.count("POST") == 1, "the upload to start")
        server.process.send_signal(signal.SIGTERM)
        posting.join(timeout=60)
    assert server.process.wait(timeout=60) == 0
    assert answers[0].status_code == 200 and answers[0].json()["status"] == "uploaded"
    assert registry_db.media_states(cli_env["MEDIA_REGISTRY_DB"]) == [(answers[0].json()["media_id"], "current")]
    assert "Traceback" not in server.text()


def test_sigterm_lets_the_schedules_refresh_in_flight_finish(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    old_id = run_cli("upload", str(make_file("menu.pdf", PDF)), env=cli_env).stdout.split("\t")[0]
    registry_db.age_ids(cli_env["MEDIA_REGISTRY_DB"], days_left=2)
    api.fail(delay=1.5, method="POST")
    running = start_server(cli_env, tmp_path / "serve.log")
    wait_for(lambda: api.count("POST") == 2, "the refresh upload to start")
    assert running.stop() == 0
    new_id = running.text().split(f"refreshed {old_id} -> ")[1].split()[0]
    assert registry_db.media_states(cli_env["MEDIA_REGISTRY_DB"]) == [(old_id, "superseded"), (new_id, "current")]


def test_no_secret_reaches_a_response_a_metric_or_the_log(
    cli_env: dict[str, str], tmp_path: Path, media_root: Path, api: FakeGraphAPI
) -> None:
    env = {**cli_env, "MEDIA_REGISTRY_SERVICE_TOKEN": "client-secret-token-1234"}
    running = start_server(env, tmp_path / "serve.log", "--allow-root", str(media_root))
    path = media_root / "a.pdf"
    path.write_bytes(sample_media(PDF, salt="a"))
    seen: list[str] = []
    try:
        with running.client("client-secret-token-1234") as client:
            api.fail(status=401, code=190, message="Error validating access token")
            seen.append(client.post("/v1/media", json={"path": str(path)}).text)
            api.fail(status=500, times=10)
            seen.append(client.post("/v1/media", json={"path": str(path)}).text)
            seen.append(client.post("/v1/media", json={"path": str(path)}).text)
            seen.append(client.get("/metrics").text)
            seen.append(client.get("/healthz").text)
            seen.append(client.get("/openapi.json").text)
    finally:
        assert running.stop() == 0
    assert '"type":"AuthError"' in seen[0] and "WHATSAPP_TOKEN" in seen[0]
    for text in [*seen, running.text()]:
        assert api.token not in text and "client-secret-token-1234" not in text


def test_daemon_metrics_port_serves_metrics_and_health(cli_env: dict[str, str], tmp_path: Path) -> None:
    daemon, port = start_metrics_daemon(cli_env, tmp_path / "daemon.log")
    try:
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        families = {f.name for f in text_string_to_metric_families(scraped)}
        assert {"media_registry_refreshes", "media_registry_media_ids",
                "media_registry_last_refresh_success_timestamp_seconds"} <= families
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0


@pytest.mark.parametrize("command", [["serve"], ["daemon", "--metrics-port", "9999"]])
def test_without_the_extra_the_command_says_what_to_install(
    command: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    # A Python where fastapi, uvicorn and prometheus_client cannot be imported.
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fastapi', 'uvicorn', 'prometheus_client'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {**cli_env, "PYTHONPATH": str(tmp_path / "blocker")}
    result = run_cli(*command, env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "pip install 'media-registry[serve]'" in result.stderr and "Traceback" not in result.stderr


# -- bytes, URL sources and invalidate: the registry's sources --------------------------


def test_new_bytes_from_httpx_curl_and_node_are_uploaded_then_cached(
    server: Server, api: FakeGraphAPI, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    bodies = {name: sample_media(PNG, salt=name) for name in ("httpx", "curl", "node")}
    for name, data in bodies.items():
        (tmp_path / f"{name}.png").write_bytes(data)

    def by_httpx(path: Path) -> dict[str, Any]:
        with server.client() as client:
            return client.post("/v1/media", content=path.read_bytes()).json()  # type: ignore[no-any-return]

    def by_curl(path: Path) -> dict[str, Any]:
        return json.loads(subprocess.run(  # type: ignore[no-any-return]
            ["curl", "-sS", "--fail-with-body", "--data-binary", f"@{path}",
             "-H", "Content-Type: application/octet-stream", f"{server.url}/v1/media"],
            capture_output=True, text=True, check=True, timeout=60).stdout)

    def by_node(path: Path) -> dict[str, Any]:
        script = (f"fetch('{server.url}/v1/media', {{method: 'POST', "
                  f"body: require('fs').readFileSync('{path}')}})"
                  ".then(r => r.json()).then(j => console.log(JSON.stringify(j)))"
                  ".catch(e => { console.error(e); process.exit(1); });")
        return json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True,  # type: ignore[no-any-return]
                                         check=True, timeout=60).stdout)

    for name, post in (("httpx", by_httpx), ("curl", by_curl), ("node", by_node)):
        first, again = post(tmp_path / f"{name}.png"), post(tmp_path / f"{name}.png")
        assert first["status"] == "uploaded" and again["status"] == "cached", (name, first, again)
        assert first["media_id"] == again["media_id"] and first["mime_type"] == PNG
        assert first["sha256"] == hashlib.sha256(bodies[name]).hexdigest()
        assert api.media[first["media_id"]].data == bodies[name]
    assert api.uploads == 3
    assert registry_db.count(cli_env["MEDIA_REGISTRY_DB"], "paths") == 0  # bytes are never a path
    assert run_cli("purge", env=cli_env).stdout == "nothing to do\n"  # nor do they "vanish"


def test_twenty_clients_posting_the_same_new_bytes_make_one_upload(
    server: Server, api: FakeGraphAPI
) -> None:
    data = sample_media(PDF, size=300_000, salt="twenty")
    start = threading.Barrier(20)
    answers: list[dict[str, Any]] = []

    def post() -> None:
        with server.client() as client:
            start.wait()
            answers.append(client.post("/v1/media", content=data).json())

    clients = [threading.Thread(target=post) for _ in range(20)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=60)
    assert len(answers) == 20
    assert len({answer["media_id"] for answer in answers}) == 1
    assert [answer["status"] for answer in answers].count("uploaded") == 1
    assert api.uploads == 1


def test_invalidate_stops_serving_the_id(server: Server, media_root: Path, api: FakeGraphAPI) -> None:
    data, media_id = seed(server, media_root)
    sha256 = hashlib.sha256(data).hexdigest()
    with server.client() as client:
        answer = client.post(f"/v1/media/{media_id}/invalidate")
        assert answer.status_code == 200, answer.text
        record = answer.json()
        assert record["sha256"] == sha256 and record["media_id"] != media_id
        assert any(event["media_id"] == media_id for event in record["history"])
        assert client.get(f"/v1/media/{sha256}").status_code == 404
        again = client.post("/v1/media", content=data).json()
    assert again["status"] == "uploaded" and again["media_id"] != media_id and api.uploads == 2


def test_a_url_source_on_this_machine_with_allow_private_urls(
    cli_env: dict[str, str], tmp_path: Path, api: FakeGraphAPI
) -> None:
    files = tmp_path / "site"
    files.mkdir()
    (files / "logo.png").write_bytes(sample_media(PNG, salt="logo"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{site.server_address[1]}/logo.png"
    running = start_server(cli_env, tmp_path / "serve.log", "--allow-private-urls")
    try:
        with running.client() as client:
            first = client.post("/v1/media", json={"url": url})
            again = client.post("/v1/media", json={"url": url})
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "uploaded" and again.json()["status"] == "cached"
        assert first.json()["sha256"] == hashlib.sha256((files / "logo.png").read_bytes()).hexdigest()
        assert api.uploads == 1
    finally:
        site.shutdown()
        assert running.stop() == 0


def test_a_redirect_to_a_private_address_is_refused(tmp_path: Path, api: FakeGraphAPI) -> None:
    from media_registry.graph.guard import PublicOnly

    hops: list[str] = []

    def public_site(request: httpx.Request) -> httpx.Response:
        hops.append(str(request.url))
        return httpx.Response(302, headers={"Location": "https://10.0.0.1/logo.png"})

    async def fetch() -> None:
        async with AsyncMediaRegistry(db=tmp_path / "registry.db", token=api.token,
                                      phone_number_id=api.phone_number_id, api_base=api.base_url,
                                      source_transport=PublicOnly(httpx.MockTransport(public_site))) as reg:
            with pytest.raises(AccessDenied, match="10.0.0.1, a loopback, private or link-local"):
                await reg.get_or_upload("https://93.184.216.34/logo.png")

    asyncio.run(fetch())
    assert hops == ["https://93.184.216.34/logo.png"] and api.uploads == 0
