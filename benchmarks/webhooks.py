"""Webhook benchmarks: each figure next to its floor, measured in the same run.

    python benchmarks/webhooks.py           # the full table (a minute or two)
    python benchmarks/webhooks.py --quick   # fewer requests and items; the test suite runs this mode

1. ``POST /v1/webhooks/whatsapp`` with a 10-item payload (each delivery new items), requests/s,
   against a bare ASGI endpoint beside it in the same uvicorn process that checks the signature
   and parses the JSON.
2. The archive worker's throughput, items of 200 KB from the local Graph API to a local S3
   server (moto's, in this process), against a plain loop of GET (metadata), GET (bytes) and
   PUT with the same HTTP and S3 clients at the same concurrency.

Prints a Markdown table; nothing here is a pass/fail threshold. Needs the ``serve`` and ``s3``
extras and moto's server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from service import read_body, serve_with_floors, wait_for_address

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media
from media_registry.webhooks import verify_signature

SECRET = "benchmark-app-secret-0123456789"
ITEMS_PER_DELIVERY = 10
ITEM_BYTES = 200_000
CLIENTS = 16
Row = tuple[str, str, str, str]


# -- the server process -------------------------------------------------------------------


async def webhook_floor(scope: dict[str, Any], receive: Any) -> bytes:
    """Check the delivery's signature and parse its JSON."""
    body = bytearray()
    await read_body(receive, body.extend)
    header = dict(scope["headers"]).get(b"x-hub-signature-256", b"").decode()
    if not (verify_signature(bytes(body), header, SECRET) and isinstance(json.loads(body), dict)):
        raise ValueError("the floor's delivery is not signed JSON")
    return b'{"ok": true}'


# -- deliveries ---------------------------------------------------------------------------


def deliveries(count: int, phone: str) -> list[tuple[bytes, str]]:
    """``count`` signed payloads of ``ITEMS_PER_DELIVERY`` new image items each."""
    made = []
    for delivery in range(count):
        messages = [{"from": "16505551234", "id": f"wamid.{delivery}.{n}", "type": "image",
                     "image": {"id": f"9{delivery:08d}{n:03d}", "mime_type": "image/jpeg"}}
                    for n in range(ITEMS_PER_DELIVERY)]
        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": phone}, "messages": messages}}]}]}).encode()
        made.append((body, "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()))
    return made


async def requests_per_second(url: str, signed: list[tuple[bytes, str]]) -> float:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        remaining = iter(signed)

        async def worker() -> None:
            for body, signature in remaining:
                answer = await client.post(url, content=body, headers={"X-Hub-Signature-256": signature})
                answer.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return len(signed) / (time.perf_counter() - started)


def webhook_row(env: dict[str, str], folder: Path, count: int, phone: str) -> Row:
    log = folder / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, __file__, "--serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = wait_for_address(server, log)
        ours = asyncio.run(requests_per_second(f"{base}/v1/webhooks/whatsapp", deliveries(count, phone)))
        floor = asyncio.run(requests_per_second(f"{base}/floor/webhook", deliveries(count, phone)))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return (f"POST /v1/webhooks/whatsapp, {ITEMS_PER_DELIVERY} items, {CLIENTS} clients "
            "(req/s; floor: signature + JSON)", f"{ours:,.0f}", f"{floor:,.0f}", f"{ours / floor:.2f}x throughput")


# -- the archive --------------------------------------------------------------------------


def archive_row(api: FakeGraphAPI, folder: Path, items: int) -> Row:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1")
    try:
        with MediaRegistry(db=folder / "archive.db", token=api.token, phone_number_id=api.phone_number_id,
                           api_base=api.base_url, archive="s3://bench-ours", s3_endpoint_url=f"http://127.0.0.1:{port}",
                           refresh_concurrency=4) as registry:
            client = registry.archiving.archive.client()  # type: ignore[union-attr]
            for bucket in ("bench-ours", "bench-floor"):
                client.create_bucket(Bucket=bucket)
            ours = _ours(registry, api, items)
            floor = _floor(registry, api, client, items)
    finally:
        s3.stop()
    return (f"archive, {items:,} items of {ITEM_BYTES // 1000} KB to a local S3 server (items/s; floor: "
            "GET + GET + PUT, same clients, 4 threads)", f"{ours:,.0f}", f"{floor:,.0f}",
            f"{ours / floor:.2f}x throughput")


def _media(api: FakeGraphAPI, items: int, salt: str) -> list[str]:
    return [api.add_media(sample_media("image/jpeg", size=ITEM_BYTES, salt=f"{salt}{n}"), "image/jpeg")
            for n in range(items)]


def _ours(registry: MediaRegistry, api: FakeGraphAPI, items: int) -> float:
    ids = _media(api, items, "ours")
    for start in range(0, items, 50):
        batch = [{"id": f"wamid.{media_id}", "type": "image", "image": {"id": media_id}}
                 for media_id in ids[start:start + 50]]
        registry.handle_webhook({"entry": [{"changes": [{"value": {
            "metadata": {"phone_number_id": api.phone_number_id}, "messages": batch}}]}]})
    started = time.perf_counter()
    report = registry.archive_pending()
    elapsed = time.perf_counter() - started
    assert report.count("archived") == items, report.actions[:3]
    return items / elapsed


def _floor(registry: MediaRegistry, api: FakeGraphAPI, s3: Any, items: int) -> float:
    ids = _media(api, items, "floor")
    with httpx.Client(headers={"Authorization": f"Bearer {api.token}"}, timeout=60) as http:

        def one(media_id: str) -> None:
            metadata = http.get(f"{api.base_url}/{media_id}").json()
            data = http.get(metadata["url"]).content
            s3.put_object(Bucket="bench-floor", Key=f"{media_id}.jpg", Body=data)

        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, ids))
        return items / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and items; seconds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_with_floors({"/floor/webhook": webhook_floor})
        return
    requests, items = (100, 30) if args.quick else (2_000, 1_000)
    with tempfile.TemporaryDirectory(prefix="media-registry-bench-") as tmp, FakeGraphAPI() as api:
        folder = Path(tmp)
        env = {**os.environ, "WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
               "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "WHATSAPP_APP_SECRET": SECRET,
               "MEDIA_REGISTRY_DB": str(folder / "registry.db")}
        rows = [webhook_row(env, folder, requests, api.phone_number_id), archive_row(api, folder, items)]
    print(f"media-registry webhook benchmarks on {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}{' (quick mode)' if args.quick else ''}\n")
    print("| measure | media-registry | floor | ratio |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
