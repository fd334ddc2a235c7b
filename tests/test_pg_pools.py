"""A PostgreSQL-backed `serve` with small pools under many slow uploads: each upload holds a
claim session (from the claim pool) for as long as it runs, and the requests beyond the pool's
size wait their turn instead of answering 503."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import PNG, wait_for
from service_helpers import start_server

POOL_SIZE = 2
CLIENTS = 12
BUSY_TIMEOUT = 1.0


def test_uploads_beyond_the_pools_wait_their_turn_and_all_answer_200(
    postgres_url: str, api: FakeGraphAPI, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    env.update(WHATSAPP_TOKEN=api.token, WHATSAPP_PHONE_NUMBER_ID=api.phone_number_id,
               WHATSAPP_API_BASE=api.base_url, MEDIA_REGISTRY_DB=postgres_url,
               MEDIA_REGISTRY_PG_POOL_SIZE=str(POOL_SIZE), MEDIA_REGISTRY_BUSY_TIMEOUT=str(BUSY_TIMEOUT))
    server = start_server(env, tmp_path / "serve.log")
    seeded = sample_media(PNG, salt="seeded")
    with server.client() as client:
        assert client.post("/v1/media", content=seeded).json()["status"] == "uploaded"
    held = threading.Event()
    api.fail(until=held, method="POST", times=CLIENTS)
    answers: list[httpx.Response] = []

    def post(salt: str) -> None:
        with server.client() as client:
            answers.append(client.post("/v1/media", content=sample_media(PNG, salt=salt)))

    clients = [threading.Thread(target=post, args=(f"new-{i}",)) for i in range(CLIENTS)]
    try:
        for thread in clients:
            thread.start()
        # Every content is new and recorded; as many uploads as claim sessions are held at the
        # API, and the other requests wait for a session of the claim pool.
        wait_for(lambda: registry_db.count(postgres_url, "contents") == CLIENTS + 1, "every request to hash")
        wait_for(lambda: api.count("POST") == POOL_SIZE + 1, "the first uploads to be held")
        time.sleep(3 * BUSY_TIMEOUT)  # longer than any wait for a connection may last
        assert answers == [] and api.count("POST") == POOL_SIZE + 1
        with server.client() as client:  # the claims never take the query pool's connections
            assert client.post("/v1/media", content=seeded).json()["status"] == "cached"
        held.set()
        for thread in clients:
            thread.join(timeout=60)
    finally:
        held.set()
        assert server.stop() == 0, server.text()
    assert [answer.status_code for answer in answers] == [200] * CLIENTS, [a.text for a in answers]
    assert {answer.json()["status"] for answer in answers} == {"uploaded"}
    assert api.uploads == CLIENTS + 1
    assert registry_db.count(postgres_url, "leases") == 0
