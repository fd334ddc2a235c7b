"""``/v1/webhooks/whatsapp`` on a real ``media-registry serve``: Meta's handshake, signed
deliveries archived to a real S3 server, the rules of the secrets, concurrent deliveries;
and the ``inbox``, ``webhook`` and ``archive --once`` commands."""

from __future__ import annotations

import hashlib
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from media_registry.testing import FakeGraphAPI
from s3_server import CREDENTIALS, S3
from test_webhooks import image, message, payload

from conftest import run_cli, wait_for
from service_helpers import start_server

SECRET = "app-secret-for-tests-0123456789"
VERIFY = "verify-token-for-tests"
PATH = "/v1/webhooks/whatsapp"


def signed(body: bytes, secret: str = SECRET, header: str = "X-Hub-Signature-256") -> dict[str, str]:
    return {header: "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


@pytest.mark.sqlite_only
def test_meta_handshake_signed_deliveries_and_the_archive_on_s3(
    cli_env: dict[str, str], api: FakeGraphAPI, s3: S3, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    env = {**cli_env, **CREDENTIALS, "WHATSAPP_APP_SECRET": SECRET, "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN": VERIFY,
           "MEDIA_REGISTRY_ARCHIVE": f"s3://{bucket}/inbound", "MEDIA_REGISTRY_S3_ENDPOINT_URL": s3.url}
    server = start_server(env, tmp_path / "serve.log")
    try:
        with server.client() as client:
            hub = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
            answer = client.get(PATH, params=hub)
            assert (answer.status_code, answer.text) == (200, "1158201444")
            assert client.get(PATH, params={**hub, "hub.verify_token": "guess"}).status_code == 403
            assert client.get(PATH, params={**hub, "hub.mode": "unsubscribe"}).status_code == 403
            media_id, data = image(api)
            body = json.dumps(payload(api, [message(media_id, data)])).encode()
            assert client.post(PATH, content=body).status_code == 401
            assert client.post(PATH, content=body, headers=signed(body, "wrong-secret")).status_code == 403
            assert client.post(PATH, content=body[:-1] + b" ", headers=signed(body)).status_code == 403
            delivered = client.post(PATH, content=body, headers=signed(body, header="x-hub-signature-256"))
            assert (delivered.status_code, delivered.json()["recorded"]) == (200, [media_id])
            assert client.post(PATH, content=body, headers=signed(body)).json()["duplicates"] == [media_id]
            key = f"inbound/{hashlib.sha256(data).hexdigest()}.png"
            wait_for(lambda: s3.keys(bucket) == [key], "the archive worker to store the item")
            assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
            wait_for(lambda: client.get("/healthz").json()["inbound_pending"] == 0, "the item to be done")
            metrics = client.get("/metrics").text
            for name in ("media_registry_inbound_pending ", "media_registry_inbound_oldest_pending_seconds ",
                         "media_registry_inbound_archived_total 1.0", "media_registry_inbound_failures_total "):
                assert name in metrics, name
        locked = run_cli("archive", "--once", env=env)
        assert (locked.returncode, locked.stdout) == (1, "")
        assert "daemon" in locked.stderr and len(locked.stderr.splitlines()) == 1
    finally:
        assert server.stop() == 0
    log = server.text()
    assert VERIFY not in log and SECRET not in log and CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in log
    assert f'"GET {PATH} HTTP/1.1" 200' in log  # the access line, without the query string


@pytest.mark.sqlite_only
def test_without_the_secrets_the_endpoint_answers_503_naming_the_variable(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "WHATSAPP_APP_SECRET": "  ", "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN": ""}
    server = start_server(env, tmp_path / "serve.log", "--no-schedule")
    try:
        with server.client() as client:
            handshake = client.get(PATH, params={"hub.mode": "subscribe", "hub.verify_token": "",
                                                 "hub.challenge": "1"})
            assert handshake.status_code == 503
            assert "MEDIA_REGISTRY_WEBHOOK_VERIFY_TOKEN" in handshake.json()["error"]["message"]
            body = b'{"entry": []}'
            delivery = client.post(PATH, content=body, headers=signed(body, "  "))
            assert delivery.status_code == 503 and "WHATSAPP_APP_SECRET" in delivery.json()["error"]["message"]
    finally:
        assert server.stop() == 0


def test_fifty_concurrent_deliveries_all_answer_200_and_record_each_item_once(
    cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    env = {**cli_env, "WHATSAPP_APP_SECRET": SECRET}
    server = start_server(env, tmp_path / "serve.log", "--no-schedule")
    items = [image(api, 100) for _ in range(25)]
    bodies = [json.dumps(payload(api, [message(media_id, data, n)])).encode()
              for n, (media_id, data) in enumerate(items)] * 2  # each delivered twice at once
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client, ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda body: client.post(PATH, content=body, headers=signed(body)), bodies))
    finally:
        assert server.stop() == 0
    assert [answer.status_code for answer in answers] == [200] * 50
    recorded = sorted(media_id for answer in answers for media_id in answer.json()["recorded"])
    assert recorded == sorted(media_id for media_id, _ in items)
    listing = run_cli("inbox", "--json", env=env)
    lines = [json.loads(line) for line in listing.stdout.splitlines()]
    assert sorted(line["media_id"] for line in lines) == recorded
    assert {line["state"] for line in lines} == {"pending"} and all(line["expires_at"] for line in lines)


@pytest.mark.sqlite_only
def test_the_webhook_and_archive_commands(cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path) -> None:
    env = {**cli_env, "MEDIA_REGISTRY_BLOB_DIR": str(tmp_path)}
    media_id, data = image(api)
    body = json.dumps(payload(api, [message(media_id, data), message("12ab", None, 2)]))
    recorded = run_cli("webhook", "-", env=env, stdin=body)
    assert (recorded.returncode, recorded.stdout) == (1, f"{media_id}\trecorded\n")
    assert "12ab" in recorded.stderr  # the malformed item, said in one line; the other kept
    assert run_cli("inbox", env=env).stdout.splitlines()[1].split()[:2] == ["pending", media_id]
    archived = run_cli("archive", "--once", env=env)
    assert archived.returncode == 0 and archived.stdout.startswith("archived"), archived.stderr
    assert (tmp_path / f"{hashlib.sha256(data).hexdigest()}.png").read_bytes() == data
    assert run_cli("inbox", "--json", env=env).stdout == ""
