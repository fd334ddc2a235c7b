"""Upload pacing: the limiter's waits, and the rate the fake API sees from many threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from media_registry.graph.client import GraphClient
from media_registry.graph.pacing import UploadPacer
from media_registry.testing import FakeGraphAPI, sample_media


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
