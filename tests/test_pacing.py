"""Upload pacing: the limiter's waits, and the rate the fake API sees from many threads."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from media_registry.graph.client import GraphClient
from media_registry.graph.pacing import UploadPacer
from media_registry.store import open_store
from media_registry.store._pacing import HostPacer
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, run_cli


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waits_space_starts_per_phone_number() -> None:
    clock = Clock()
    pacer = UploadPacer(20, clock=clock)
    assert [pacer.reserve("1") for _ in range(3)] == pytest.approx([0.0, 0.05, 0.10])
    assert pacer.reserve("2") == 0.0  # numbers are paced apart
    clock.now += 1.0  # idle time earns no burst
    assert pacer.reserve("1") == 0.0
    assert pacer.reserve("1") == pytest.approx(0.05)


def test_threads_get_distinct_slots() -> None:
    clock = Clock()
    pacer = UploadPacer(10, clock=clock)
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda _: pacer.reserve("1"), range(200)))
    assert sorted(waits) == pytest.approx([i * 0.1 for i in range(200)])


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        UploadPacer(0)


def test_rate_seen_by_the_api_over_100_uploads(api: FakeGraphAPI, tmp_path) -> None:
    rate = 20.0
    pacer = UploadPacer(rate)
    files = []
    for i in range(100):
        path = tmp_path / f"{i}.png"
        path.write_bytes(sample_media("image/png", salt=str(i)))
        files.append(path)
    with GraphClient(token=api.token, api_base=api.base_url) as graph:

        def upload(path) -> str:
            threading.Event().wait(pacer.reserve(api.phone_number_id))
            return graph.upload(path, "image/png", api.phone_number_id)

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(upload, files))
    assert len(set(ids)) == 100
    arrivals = sorted(r.at for r in api.received if r.method == "POST" and r.path.endswith("/media"))
    measured = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert rate * 0.9 <= measured <= rate * 1.1


def test_processes_of_a_host_share_the_slots_file(tmp_path: Path) -> None:
    clock = Clock()
    first, second = (HostPacer(20, str(tmp_path / "slots"), clock=clock) for _ in range(2))
    assert [first.reserve("1"), second.reserve("1"), first.reserve("1")] == pytest.approx([0.0, 0.05, 0.10])
    assert second.reserve("2") == 0.0  # numbers are paced apart
    assert HostPacer(20, str(tmp_path / "slots"), scope="http://127.0.0.1:8080", clock=clock).reserve("1") == 0.0
    clock.now += 1.0  # idle time earns no burst
    assert [second.reserve("1"), first.reserve("1")] == pytest.approx([0.0, 0.05])
    (tmp_path / "slots").write_text("1 torn\n\x00\n")  # a damaged file: that number starts afresh
    assert first.reserve("1") == 0.0 and second.reserve("1") == pytest.approx(0.05)


def test_the_fleet_shares_one_row_per_number(postgres_url: str) -> None:
    stores = [open_store(postgres_url, host_id=f"app-{i}") for i in (1, 2)]
    try:
        pacers = [store.backend.pacer(10, "https://graph.facebook.com/v23.0") for store in stores]
        calls = []
        for k in range(6):
            before = time.monotonic()
            wait = pacers[k % 2].reserve("1")
            calls.append((before, wait, time.monotonic()))
    finally:
        for store in stores:
            store.close()
    # The server spaced the slots exactly: wait_k + (server time of call k - of call 0) = k / 10,
    # and the client's clock brackets each server time.
    (first_before, first_wait, first_after) = calls[0]
    assert first_wait == 0.0
    for k, (before, wait, after) in enumerate(calls):
        assert k / 10 - (after - first_before) - 0.001 <= wait <= k / 10 - (before - first_after) + 0.001


def test_processes_and_hosts_together_stay_at_the_rate(
    cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    """Four processes (on two hosts of a PostgreSQL registry, or on one SQLite registry's host)."""
    rate, processes, per_process = 5.0, 4, 3
    env = {**cli_env, "MEDIA_REGISTRY_UPLOADS_PER_SECOND": str(rate), "TMPDIR": str(tmp_path)}
    assert run_cli("init", env=env).returncode == 0
    batches = [[tmp_path / f"{i}-{j}.png" for j in range(per_process)] for i in range(processes)]
    for batch in batches:
        for path in batch:
            path.write_bytes(sample_media("image/png", salt=path.name))
    uploads = [subprocess.Popen([str(CLI), "upload", *map(str, batch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**env, "MEDIA_REGISTRY_HOST_ID": f"app-{i % 2}"}, text=True)
               for i, batch in enumerate(batches)]
    assert [upload.wait(timeout=120) for upload in uploads] == [0] * processes
    arrivals = sorted(r.at for r in api.received if r.method == "POST" and r.path.endswith("/media"))
    assert len(arrivals) == processes * per_process
    # Paced each on its own, the processes would send together; paced together, any five
    # consecutive uploads span four intervals (half of it allowed to a late sender's jitter).
    assert min(later - earlier for earlier, later in zip(arrivals, arrivals[4:])) >= 4 / rate / 2
