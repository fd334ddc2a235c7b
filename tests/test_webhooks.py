"""Webhooks in the library: inbound items recorded once and archived (a folder, a real S3
server on loopback), failures retried, lost IDs marked, failed sends repaired."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from media_registry import AsyncMediaRegistry, MediaRegistry
from media_registry.testing import FakeGraphAPI
from media_registry.webhooks import verify_signature
from s3_server import S3

from conftest import CLI, wait_for

PNG = b"\x89PNG\r\n\x1a\n"


def image(api: FakeGraphAPI, size: int = 2000) -> tuple[str, bytes]:
    data = PNG + os.urandom(size)
    return api.add_media(data, "image/png"), data


def message(media_id: str, data: bytes | None, number: int = 1) -> dict[str, Any]:
    media: dict[str, Any] = {"id": media_id, "mime_type": "image/png"}
    if data is not None:
        media["sha256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return {"from": "16505551234", "id": f"wamid.in{number}", "type": "image", "image": media}


def payload(api: FakeGraphAPI, messages: list[dict[str, Any]] = (),  # type: ignore[assignment]
            statuses: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": api.phone_number_id},
             "messages": list(messages), "statuses": list(statuses)}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"value": value}]}]}


def failed(message_id: str, code: int = 131053) -> dict[str, Any]:
    return {"id": message_id, "status": "failed", "timestamp": "1", "recipient_id": "16505551234",
            "errors": [{"code": code, "title": "Media upload error", "error_data": {"details": "bad media"}}]}


def test_items_are_recorded_once_and_archived_in_the_blob_folder(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, tmp_path: Path
) -> None:
    registry = make_registry(blob_dir=tmp_path / "blobs")
    (tmp_path / "blobs").mkdir()
    (first, one), (second, two) = image(api), image(api)
    body = payload(api, [message(first, one, 1), {"type": "image", "image": {"id": "12ab"}}, message(second, two, 2)])
    report = registry.handle_webhook(body)
    assert (report.recorded, len(report.invalid)) == ([first, second], 1)
    assert registry.handle_webhook(body).duplicates == [first, second]  # Meta redelivers: nothing twice
    assert [item.state for item in registry.webhooks.inbox()] == ["pending", "pending"]
    assert registry.stats()["inbound_pending"] == 2
    actions = registry.archive_pending()
    assert sorted(a.action for a in actions.actions) == ["archived", "archived"]
    for data in (one, two):
        assert (tmp_path / "blobs" / f"{hashlib.sha256(data).hexdigest()}.png").read_bytes() == data
    assert registry.archive_pending().actions == []  # done once
    assert registry.stats()["inbound_archived"] == 2


def test_an_id_the_api_no_longer_knows_ends_as_lost(make_registry: Callable[..., MediaRegistry],
                                                    api: FakeGraphAPI) -> None:
    registry = make_registry()
    registry.handle_webhook(payload(api, [message("123456789", None)]))
    assert [a.action for a in registry.archive_pending().actions] == ["lost"]
    [item] = registry.webhooks.inbox(("lost",))
    assert "does not know this media ID" in (item.reason or "")
    assert registry.archive_pending().actions == []  # never retried


def test_the_async_registry_records_and_archives(api: FakeGraphAPI, tmp_path: Path) -> None:
    media_id, data = image(api)

    async def run() -> list[str]:
        async with AsyncMediaRegistry(db=tmp_path / "r.db", token=api.token, phone_number_id=api.phone_number_id,
                                      api_base=api.base_url, blob_dir=tmp_path) as registry:
            report = await registry.handle_webhook(payload(api, [message(media_id, data)]))
            assert report.recorded == [media_id]
            done = await registry.archiving.arun_pass(lambda flow: _adrive(flow, registry), None)
            return [action.action for action in done.actions]

    assert asyncio.run(run()) == ["archived"]
    assert (tmp_path / f"{hashlib.sha256(data).hexdigest()}.png").read_bytes() == data


async def _adrive(flow: Any, registry: AsyncMediaRegistry) -> Any:
    from media_registry.rules.effects import adrive

    return await adrive(flow, registry)


def test_s3_objects_land_once_under_their_sha256_with_checksum_and_metadata(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, s3: S3
) -> None:
    bucket = s3.bucket()
    hosts = [make_registry(archive=f"s3://{bucket}/inbound", s3_endpoint_url=s3.url) for _ in range(2)]
    sent: list[dict[str, str]] = []
    for host in hosts:
        host.archiving.archive.client().meta.events.register(  # type: ignore[union-attr]
            "before-send.s3.PutObject", lambda request, **_: sent.append(_headers(request)))
    media_id, data = image(api)
    body = payload(api, [message(media_id, data)])
    assert hosts[0].handle_webhook(body).recorded == [media_id]
    assert hosts[1].handle_webhook(body).duplicates == [media_id]  # the redelivery, at another host
    barrier = threading.Barrier(2)
    reports = []

    def archive(host: MediaRegistry) -> None:
        barrier.wait()
        reports.append(host.archive_pending())

    threads = [threading.Thread(target=archive, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.action for report in reports for a in report.actions) == ["archived"]
    key = f"inbound/{hashlib.sha256(data).hexdigest()}.png"
    assert s3.keys(bucket) == [key]
    assert len(sent) == 1 and sent[0]["If-None-Match"] == "*"
    assert sent[0]["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    head = s3.client().head_object(Bucket=bucket, Key=key)
    assert head["Metadata"]["media-id"] == media_id and head["Metadata"]["mime-type"] == "image/png"
    assert head["Metadata"]["phone-number-id"] == api.phone_number_id and head["ContentLength"] == len(data)
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data


def _headers(request: Any) -> dict[str, str]:
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in request.headers.items()}


def test_the_checksum_can_be_left_out(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI,
                                      s3: S3) -> None:
    bucket = s3.bucket()
    registry = make_registry(archive=f"s3://{bucket}", s3_endpoint_url=s3.url, s3_checksum="off")
    sent: list[dict[str, str]] = []
    registry.archiving.archive.client().meta.events.register(  # type: ignore[union-attr]
        "before-send.s3.PutObject", lambda request, **_: sent.append(_headers(request)))
    media_id, data = image(api)
    registry.handle_webhook(payload(api, [message(media_id, data)]))
    assert [a.action for a in registry.archive_pending().actions] == ["archived"]
    assert not [name for name in sent[0] if name.lower().startswith("x-amz-checksum")]
    assert s3.keys(bucket) == [f"{hashlib.sha256(data).hexdigest()}.png"]


def test_s3_stopped_mid_run_then_started_archives_every_item_once(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, s3: S3, stored_bytes: Callable[[], bytes]
) -> None:
    bucket = s3.bucket()
    registry = make_registry(archive=f"s3://{bucket}", s3_endpoint_url=s3.url, refresh_concurrency=1)
    items = [image(api) for _ in range(4)]
    registry.handle_webhook(payload(api, [message(media_id, data, n) for n, (media_id, data) in enumerate(items)]))

    puts: list[object] = []

    def stop_before_second(**_: Any) -> None:
        # In the worker, before the second item's PUT is sent: the pass tells of an item only
        # after the worker has moved on to the next, too late to stop the server in between.
        puts.append(None)
        if len(puts) == 2:
            s3.server.stop()

    registry.archiving.archive.client().meta.events.register(  # type: ignore[union-attr]
        "before-send.s3.PutObject", stop_before_second)
    try:
        first = registry.archive_pending()
    finally:
        s3.server.start()
    assert [a.action for a in first.actions] == ["archived", "failed", "failed", "failed"]
    assert all("retried later" in (a.detail or "") for a in first.actions[1:])
    assert "test-secret-key" not in str(first)
    archived = []
    wait_for(lambda: archived.extend(a.action for a in registry.archive_pending().actions) or len(archived) >= 3,
             "the failed items to be archived after their backoff")
    assert archived == ["archived"] * 3
    assert sorted(s3.keys(bucket)) == sorted(f"{hashlib.sha256(data).hexdigest()}.png" for _, data in items)
    assert [item.state for item in registry.webhooks.inbox()] == ["archived"] * 4
    events = [e for _, data in items for e in registry.store.events(hashlib.sha256(data).hexdigest())]
    assert [e.action for e in events].count("archive") == 4
    assert b"test-secret-key" not in stored_bytes()  # the AWS credentials: never in the registry


@pytest.mark.sqlite_only
def test_a_worker_killed_mid_download_leaves_the_item_for_the_next(
    cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    media_id, data = image(api, 50_000)
    held = threading.Event()
    api.fail(method="GET", path="/download/", until=held)
    env = {**cli_env, "MEDIA_REGISTRY_BLOB_DIR": str(tmp_path)}
    webhook = tmp_path / "hook.json"
    import json

    webhook.write_text(json.dumps(payload(api, [message(media_id, data)])))
    assert subprocess.run([str(CLI), "webhook", str(webhook)], env=env, capture_output=True).returncode == 0
    worker = subprocess.Popen([str(CLI), "archive", "--once"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: api.count("GET", "/download/") >= 1, "the worker to start the download")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        held.set()
    again = subprocess.run([str(CLI), "archive", "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("archived"), again.stdout
    assert (tmp_path / f"{hashlib.sha256(data).hexdigest()}.png").read_bytes() == data
    last = subprocess.run([str(CLI), "archive", "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert last.stdout == "nothing to do\n"


def test_a_failed_send_with_a_media_error_invalidates_that_id_once(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    registry = make_registry()
    path = make_file("a.png")
    client = httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {api.token}"})

    def send(media_id: str) -> httpx.Response:
        return client.post(f"/{api.phone_number_id}/messages", json={
            "messaging_product": "whatsapp", "to": "16505551234", "type": "image", "image": {"id": media_id}})

    first = registry.send_with_media(path, send)
    wamid = first.json()["messages"][0]["id"]
    dead = registry.get_or_upload(path)
    told: list[tuple[str, str, str]] = []
    report = registry.handle_webhook(payload(api, statuses=[failed(wamid), failed("wamid.unknown")]),
                                     on_failed_send=lambda *args: told.append(args))
    assert [(r.media_id, r.action) for r in report.repairs] == [(dead, "invalidated")]
    assert told == [(wamid, dead, "bad media")]
    assert registry.handle_webhook(payload(api, statuses=[failed(wamid)])).repairs == []  # a redelivery
    uploads = api.uploads
    second = registry.send_with_media(path, send)
    assert api.uploads == uploads + 1 and registry.get_or_upload(path) != dead
    again = registry.handle_webhook(payload(api, statuses=[failed(second.json()["messages"][0]["id"])]))
    assert [r.action for r in again.repairs] == ["reported"]  # once per content and number
    assert registry.get_or_upload(path) != dead and api.uploads == uploads + 1
    client.close()


@pytest.mark.parametrize("bad", ["missing", "wrong secret", "one byte", "no scheme", "upper case"])
def test_signatures(bad: str) -> None:
    secret, body = "app-secret-0123456789", b'{"entry": []}'
    good = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify_signature(body, good, secret)
    cases = {
        "missing": (body, None, secret, False),
        "wrong secret": (body, good, "another-secret", False),
        "one byte": (body[:-1] + b"]", good, secret, False),
        "no scheme": (body, good.removeprefix("sha256="), secret, False),
        "upper case": (body, good.upper(), secret, True),  # SHA256=<HEX>: the same signature
    }
    given, header, key, valid = cases[bad]
    assert verify_signature(given, header, key) is valid
    assert not verify_signature(body, good, "")  # an empty secret signs nothing


def test_an_item_a_day_from_its_end_fails_the_health_check(make_registry: Callable[..., MediaRegistry],
                                                           api: FakeGraphAPI) -> None:
    from media_registry.app.metrics import Monitor

    registry = make_registry()
    monitor = Monitor(registry)
    media_id, data = image(api)
    fresh = message(media_id, data) | {"timestamp": str(int(time.time()) - 5 * 86400)}
    registry.handle_webhook(payload(api, [fresh]))
    healthy, body = monitor.health()
    assert (healthy, body["inbound_pending"]) == (True, 1)  # two days left
    old_id, old_data = image(api)
    old = message(old_id, old_data, 2) | {"timestamp": str(int(time.time()) - 6 * 86400 - 60)}
    registry.handle_webhook(payload(api, [old]))
    healthy, body = monitor.health()
    assert (healthy, body["failing"], body["inbound_pending"]) == (False, "archive", 2)
    exposition = monitor.exposition().decode()
    assert "media_registry_inbound_pending 2.0" in exposition
    oldest = re.search(r"(?m)^media_registry_inbound_oldest_pending_seconds (\S+)", exposition)
    assert oldest is not None and float(oldest[1]) >= 0 and "media_registry_inbound_archived_total 0.0" in exposition
    monitor.observe_pass("archive", registry.archive_pending())
    assert monitor.health()[0] and "media_registry_inbound_archived_total 2.0" in monitor.exposition().decode()
