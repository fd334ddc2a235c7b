"""FakeGraphAPI, which users run in their own tests, behaves as promised at its edges."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from media_registry import ConfigError, GraphAPIError, MediaRegistry, UnsupportedMedia
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import PNG, wait_for


def registry_on(api: FakeGraphAPI, tmp_path: Path, **settings: object) -> MediaRegistry:
    return MediaRegistry(db=tmp_path / "r.db", token=api.token, phone_number_id=api.phone_number_id,
                         api_base=api.base_url, retry_backoff=0.01, max_retries=1, **settings)


def test_inbound_media_are_not_uploads(registry: MediaRegistry, api: FakeGraphAPI,
                                       make_file: Callable[..., Path]) -> None:
    api.add_media(sample_media(PNG), PNG)
    assert api.uploads == 0
    registry.get_or_upload(make_file("a.png"))
    assert api.uploads == 1


def test_a_stopped_fake_answers_no_connection_kept_alive(tmp_path: Path, make_file: Callable[..., Path]) -> None:
    api = FakeGraphAPI().start()
    with registry_on(api, tmp_path) as registry:
        registry.get_or_upload(make_file("before.png"))  # its connection stays in the pool
        api.stop()
        with pytest.raises(GraphAPIError):
            registry.get_or_upload(make_file("after.png"))
    assert api.uploads == 1


def test_stop_ends_the_thread_of_every_connection() -> None:
    before = set(threading.enumerate())
    api = FakeGraphAPI().start()
    clients = [httpx.Client(base_url=api.origin) for _ in range(5)]
    try:
        for client in clients:
            assert client.get("/v26.0/1").status_code == 401  # keep-alive: the connection stays open
        started = set(threading.enumerate()) - before
        assert len(started) >= 6  # the serving thread and one per connection
        api.stop()
        wait_for(lambda: not any(thread.is_alive() for thread in started), "the fake's threads to end")
    finally:
        for client in clients:
            client.close()


def test_stop_without_start_returns() -> None:
    stopper = threading.Thread(target=FakeGraphAPI().stop, daemon=True)
    stopper.start()
    stopper.join(timeout=30)  # a safety net: it hung for ever before
    assert not stopper.is_alive()


def test_uploads_to_an_unknown_phone_number_are_refused_as_meta_does(
    api: FakeGraphAPI, make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    path = make_file("a.png")
    response = httpx.post(f"{api.base_url}/999000111/media", headers={"Authorization": f"Bearer {api.token}"},
                          data={"messaging_product": "whatsapp", "type": PNG},
                          files={"file": ("a.png", path.read_bytes(), PNG)})
    error = response.json()["error"]
    assert response.status_code == 400
    assert (error["code"], error["error_subcode"], error["type"]) == (100, 33, "GraphMethodException")
    assert error["message"].startswith("Unsupported post request. Object with ID '999000111' does not exist")
    with pytest.raises(ConfigError, match="phone number ID 999000111: the Graph API does not know it"):
        make_registry().get_or_upload(path, phone_number_id="999000111")
    assert api.uploads == 0
    api.add_phone_number("999000111")
    assert make_registry().get_or_upload(path, phone_number_id="999000111")
    assert api.uploads == 1


def test_phone_numbers_can_be_named_at_construction(tmp_path: Path, make_file: Callable[..., Path]) -> None:
    with FakeGraphAPI(phone_numbers=["222333444"]) as api, registry_on(api, tmp_path) as registry:
        registry.get_or_upload(make_file("a.png"), phone_number_id="222333444")
        registry.get_or_upload(make_file("a.png"))
        assert api.uploads == 2 and api.phone_numbers == {api.phone_number_id, "222333444"}


def test_the_handler_works_on_the_fakes_state_under_its_lock(api: FakeGraphAPI) -> None:
    media_id = api.add_media(sample_media(PNG), PNG)
    api.fail(path=f"/{media_id}", delay=2)  # the handler pauses after taking its fault
    answers: list[int] = []

    def get() -> None:
        answers.append(httpx.get(f"{api.base_url}/{media_id}",
                                 headers={"Authorization": f"Bearer {api.token}"}, timeout=60).status_code)

    request = threading.Thread(target=get)
    request.start()
    wait_for(lambda: api.count("GET") == 1, "the request to arrive")
    with api._lock:  # a test (or the fake itself) changing its state meanwhile
        # Past its pause, the handler must wait for the lock to read the media; without the
        # lock it would answer now. (Only a lock taken more than 2 s late could spoil this.)
        request.join(timeout=5)
        assert answers == []
    request.join(timeout=30)
    assert answers == [200]


def test_sample_media_of_an_unsupported_type_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedMedia, match=r"no sample for 'image/gif'; pick one of .*image/png"):
        sample_media("image/gif")
