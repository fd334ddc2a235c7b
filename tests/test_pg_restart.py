"""PostgreSQL restarted while an upload is on its way to the Graph API: the uploader's claim
died with its session, another process took the claim over, and the first one must serve the
ID that exists, quietly, rather than report a deletion that never happened."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, wait_for
from pg_server import PostgresServer, create_database


def upload(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), "upload", str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_uploader_whose_claim_a_restart_ended_serves_the_id_that_exists(
    postgres_server: PostgresServer, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    db = create_database(postgres_server.url())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))},
           "WHATSAPP_TOKEN": api.token, "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id,
           "WHATSAPP_API_BASE": api.base_url, "MEDIA_REGISTRY_DB": db, "MEDIA_REGISTRY_HOST_ID": "app-1"}
    path = make_file("banner.png")
    held = threading.Event()
    api.fail(until=held, method="POST", times=2)
    first = upload(path, env)
    try:
        wait_for(lambda: api.count("POST") == 1, "the first upload to be held")
        postgres_server.stop()  # the first process's claim session ends with the server
        postgres_server.start()
        second = upload(path, env)  # finds the claim free and uploads too
        wait_for(lambda: api.count("POST") == 2, "the second upload to be held")
    finally:
        held.set()
    out, err = second.communicate(timeout=60)
    assert (second.returncode, err) == (0, ""), err
    served, status, _ = out.split("\t")
    out, err = first.communicate(timeout=60)
    assert err == "" and first.returncode == 0, err  # no "was deleted", no driver's lines
    assert out.split("\t")[:2] == [served, "cached"]
    assert status == "uploaded" and registry_db.media_ids(db, "current") == [served]
    # The first process's own ID is never served: deleted at the API at once.
    assert api.count("DELETE") == 1 and registry_db.media_ids(db, "deleting") == []
