"""get_or_upload of bytes, file objects and URLs; invalidate and send_with_media; pacing.

Real parts only: the FakeGraphAPI, a local HTTP file server, real SQLite files, real pipes."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from file_server import FileServer
from media_registry import (
    AsyncMediaRegistry,
    ConfigError,
    MediaRegistry,
    MediaTooLarge,
    NotInRegistry,
    SourceNotFound,
    SourceUnreadable,
    UnsupportedMedia,
)
from media_registry.errors import SourceUnavailable, UnsafeSourceURL
from media_registry.testing import FakeGraphAPI, sample_media

PNG = "image/png"
PDF = "application/pdf"
DATA = sample_media(PNG, salt="three ways")
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()


class Clock:
    """The registry's time, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)



@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(make_registry: Callable[..., MediaRegistry], clock: Clock) -> MediaRegistry:
    return make_registry(clock=clock)


def pipe_of(data: bytes) -> io.BufferedReader:
    """The read end of a real pipe that a thread fills with ``data`` (unseekable)."""
    read_end, write_end = os.pipe()

    def feed() -> None:
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(data)
        except BrokenPipeError:
            pass  # the reader stopped early, as it should over the size limit

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(read_end, "rb")


def send_image(api: FakeGraphAPI, media_id: str, phone: str | None = None) -> httpx.Response:
    return httpx.post(f"{api.base_url}/{phone or api.phone_number_id}/messages",
                      headers={"Authorization": f"Bearer {api.token}"},
                      json={"messaging_product": "whatsapp", "to": "15550100", "type": "image",
                            "image": {"id": media_id}})


# -- one content, many names ---------------------------------------------------------------


def test_file_bytes_url_and_pipe_give_one_id_and_one_upload(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer, tmp_path: Path) -> None:
    path = tmp_path / "card.png"
    path.write_bytes(DATA)
    url = files.add("/card.png", DATA)
    first = reg.get_or_upload_with_status(url)
    assert first.uploaded
    ids = {first.media_id, reg.get_or_upload(path), reg.get_or_upload(DATA),
           reg.get_or_upload(bytearray(DATA)), reg.get_or_upload(pipe_of(DATA)),
           reg.get_or_upload(io.BytesIO(DATA))}
    assert len(ids) == 1
    assert api.uploads == 1
    record = reg.lookup(hashlib.sha256(DATA).hexdigest())
    assert record is not None and record.media_id == first.media_id


def test_a_big_pipe_is_spooled_not_held(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    data = sample_media(PDF, size=12_000_000, salt="pipe")
    media_id = reg.get_or_upload(pipe_of(data))
    assert api.media[media_id].data == data


def test_bad_bytes_and_streams_are_clear_errors_and_upload_nothing(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    with pytest.raises(UnsupportedMedia, match=r"^<bytes>: content is image/gif"):
        reg.get_or_upload(b"GIF89a" + bytes(64))
    with pipe_of(sample_media(PNG, size=7_000_000)) as pipe, pytest.raises(MediaTooLarge, match="over 5,000,000"):
        reg.get_or_upload(pipe)
    with pytest.raises(TypeError, match="not int"):
        reg.get_or_upload(42)  # type: ignore[arg-type]
    with pytest.raises(UnsafeSourceURL, match="only https://"):
        reg.get_or_upload("http://example.com/card.png")
    assert api.uploads == 0 and api.count("POST") == 0


@pytest.mark.parametrize("url", ["https://127.0.0.1:abc/a.png?X-Amz-Signature=s1gn4ture",
                                 "https://[::1/a.png", "https://xn--a.com/a.png"])
def test_a_malformed_url_is_a_clear_error(reg: MediaRegistry, api: FakeGraphAPI, url: str) -> None:
    with pytest.raises(UnsafeSourceURL, match="not a valid URL") as raised:
        reg.get_or_upload(url)
    assert "s1gn4ture" not in str(raised.value) and api.count("POST") == 0


# -- URL sources ---------------------------------------------------------------------------


def test_sixteen_threads_one_url_one_download_one_upload(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer) -> None:
    url = files.add("/slow.png", DATA, delay=0.2)
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda _: reg.get_or_upload(url), range(16)))
    assert len(set(ids)) == 1
    assert files.count("/slow.png") == 1
    assert api.uploads == 1


def test_no_network_within_the_window_then_one_conditional_get(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer, clock: Clock) -> None:
    url = files.add("/card.png", DATA, etag='"v1"', last_modified="Wed, 25 Nov 2026 10:00:00 GMT")
    media_id = reg.get_or_upload(url)
    clock.advance(minutes=4)
    assert reg.get_or_upload(url) == media_id
    assert files.count("/card.png") == 1  # no request at all
    clock.advance(minutes=2)
    assert reg.get_or_upload_with_status(url) == (media_id, False)
    assert files.count("/card.png") == 2
    assert files.hits[-1].headers["if-none-match"] == '"v1"'
    assert reg.get_or_upload(url) == media_id  # the 304 renewed the window
    assert files.count("/card.png") == 2 and api.uploads == 1


def test_other_bytes_at_the_url_are_new_content(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer, clock: Clock) -> None:
    url = files.add("/card.png", DATA, etag='"v1"')
    old = reg.get_or_upload(url)
    files.add("/card.png", sample_media(PNG, salt="v2"), etag='"v2"')
    clock.advance(minutes=6)
    new = reg.get_or_upload(url)
    assert new != old and api.uploads == 2
    assert reg.get_or_upload(DATA) == old  # the old content keeps its ID


def test_a_gone_url_drops_its_mapping_but_not_the_content(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer, clock: Clock) -> None:
    url = files.add("/card.png", DATA, etag='"v1"')
    media_id = reg.get_or_upload(url)
    files.add("/card.png", b"", status=410)
    clock.advance(minutes=6)
    with pytest.raises(SourceNotFound, match="HTTP 410"):
        reg.get_or_upload(url)
    assert reg.store.url_source(url) is None
    assert reg.get_or_upload(DATA) == media_id and api.uploads == 1
    events = [e.action for e in reg.lookup(media_id).history]  # type: ignore[union-attr]
    assert "forget url" in events


def test_signed_urls_share_one_key_and_their_signature_is_never_stored(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer,
        stored_bytes: Callable[[], bytes]) -> None:
    base = files.add("/cards/a.png", DATA)
    first = reg.get_or_upload(base + "?X-Amz-Signature=FIRSTSECRET&X-Amz-Credential=AKIA1&v=1")
    second = reg.get_or_upload(base + "?X-Amz-Signature=OTHERSECRET&X-Amz-Credential=AKIA2&v=1")
    assert first == second and files.count("/cards/a.png") == 1
    assert reg.store.url_source(base + "?v=1") is not None
    reg.close()
    stored = stored_bytes()
    assert b"SECRET" not in stored and b"AKIA" not in stored
    assert b"/cards/a.png?v=1" in stored


def test_the_token_never_goes_to_the_source_host(reg: MediaRegistry, files: FileServer) -> None:
    url = files.add("/card.png", DATA, location=None)
    reg.get_or_upload(url)
    assert files.hits and all("authorization" not in hit.headers for hit in files.hits)
    assert all(reg.settings.token.get_secret_value() not in str(hit.headers)  # type: ignore[union-attr]
               for hit in files.hits)


def test_refresh_refetches_url_sources_only(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer, clock: Clock) -> None:
    url = files.add("/card.png", DATA)
    signed = files.add("/signed.png", sample_media(PNG, salt="signed"))
    by_url = reg.get_or_upload(url)
    reg.get_or_upload(signed + "?X-Amz-Signature=S")
    reg.get_or_upload(sample_media(PNG, salt="bytes only"))
    clock.advance(days=28)
    report = reg.refresh_expiring()
    assert report.count("refreshed") == 1 and report.count("skipped") == 2
    refreshed = next(a for a in report.actions if a.action == "refreshed")
    assert refreshed.media_id == by_url and refreshed.new_media_id not in (None, by_url)
    assert files.count("/card.png") == 2 and files.count("/signed.png") == 1


# -- invalidate and send_with_media --------------------------------------------------------


def test_invalidate_is_never_served_again(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    media_id = reg.get_or_upload(DATA)
    reg.invalidate(media_id)
    again = reg.get_or_upload(DATA)
    assert again != media_id and api.uploads == 2
    history = reg.lookup(again).history  # type: ignore[union-attr]
    assert [(e.action, e.detail) for e in history if e.action == "invalidate"] == [
        ("invalidate", "Meta refused it at send time")]
    with pytest.raises(NotInRegistry, match="media ID 123: not in the registry"):
        reg.invalidate("123")


def test_send_with_media_recovers_a_killed_id_with_one_upload(
        reg: MediaRegistry, api: FakeGraphAPI, tmp_path: Path) -> None:
    path = tmp_path / "card.png"
    path.write_bytes(DATA)
    killed = reg.get_or_upload(path)
    api.kill_media(killed)
    sent: list[str] = []

    def send(media_id: str) -> httpx.Response:
        sent.append(media_id)
        return send_image(api, media_id)

    response = reg.send_with_media(path, send)
    assert response.status_code == 200 and response.json()["messages"][0]["id"].startswith("wamid.")
    assert sent[0] == killed and sent[1] != killed and api.uploads == 2
    assert reg.get_or_upload(path) == sent[1]
    assert reg.send_with_media(path, send).status_code == 200 and api.uploads == 2


def test_send_with_media_on_raised_errors_and_streams(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    killed = reg.get_or_upload(DATA)
    api.kill_media(killed)

    def send(media_id: str) -> str:
        response = send_image(api, media_id)
        response.raise_for_status()
        return response.json()["messages"][0]["id"]

    assert reg.send_with_media(pipe_of(DATA), send).startswith("wamid.")
    assert api.uploads == 2


def test_send_with_media_with_pywa(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    pywa = pytest.importorskip("pywa")
    session = httpx.Client()
    wa = pywa.WhatsApp(phone_id=api.phone_number_id, token=api.token, session=session)
    session.base_url = api.base_url
    api.kill_media(reg.get_or_upload(DATA))
    sent = reg.send_with_media(DATA, lambda media_id: wa.send_image(to="15550100", image=media_id))
    assert sent.id.startswith("wamid.") and api.uploads == 2


def test_send_with_media_leaves_other_errors_alone(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    media_id = reg.get_or_upload(DATA)

    def broken(_: str) -> None:
        raise RuntimeError("network down")

    with pytest.raises(RuntimeError, match="network down"):
        reg.send_with_media(DATA, broken)
    other = httpx.Response(400, json={"error": {"code": 131053, "message": "Media upload error"}})
    assert reg.send_with_media(DATA, lambda _: other) is other
    assert reg.get_or_upload(DATA) == media_id and api.uploads == 1


def test_send_with_media_from_another_number_says_so_and_uploads_at_most_twice(
        reg: MediaRegistry, api: FakeGraphAPI, clock: Clock) -> None:
    api.add_phone_number("42")
    media_id = reg.get_or_upload(DATA)

    def send_from_42(media_id: str) -> httpx.Response:
        return send_image(api, media_id, phone="42")

    for _ in range(5):
        with pytest.raises(ConfigError, match=rf"phone number ID {api.phone_number_id}: .*"
                           r"another phone number.*pass phone_number_id= with the sender's"):
            reg.send_with_media(DATA, send_from_42)
    assert api.uploads == 2
    served = reg.get_or_upload(DATA)
    assert served != media_id  # the first ID was repaired once, the second kept
    assert reg.send_with_media(DATA, lambda media_id: send_image(api, media_id)).status_code == 200
    clock.advance(minutes=11)  # past MEDIA_REGISTRY_REPAIR_WINDOW: one repair again
    with pytest.raises(ConfigError, match="another phone number"):
        reg.send_with_media(DATA, send_from_42)
    assert api.uploads == 3
    assert reg.send_with_media(DATA, send_from_42, phone_number_id="42").status_code == 200


def test_a_fresh_upload_refused_at_send_is_not_repaired(reg: MediaRegistry, api: FakeGraphAPI) -> None:
    api.add_phone_number("42")
    with pytest.raises(ConfigError, match="pass phone_number_id="):
        reg.send_with_media(DATA, lambda media_id: send_image(api, media_id, phone="42"))
    assert api.uploads == 1
    history = reg.lookup(DATA_SHA256).history  # type: ignore[union-attr]
    assert "invalidate" not in [event.action for event in history]


def test_the_repair_window_is_a_setting(make_registry: Callable[..., MediaRegistry]) -> None:
    assert make_registry().settings.repair_window == timedelta(minutes=10)
    assert make_registry(repair_window="90").settings.repair_window == timedelta(seconds=90)
    with pytest.raises(ConfigError, match="invalid MEDIA_REGISTRY_REPAIR_WINDOW: must be a positive"):
        make_registry(repair_window="-1")


# -- async ---------------------------------------------------------------------------------


def test_async_sources_and_send_with_media(api: FakeGraphAPI, files: FileServer, registry_db_value: str) -> None:
    url = files.add("/card.png", DATA)

    async def main() -> None:
        async with AsyncMediaRegistry(db=registry_db_value, token=api.token, api_base=api.base_url,
                                      phone_number_id=api.phone_number_id) as reg:
            ids = await asyncio.gather(*(reg.get_or_upload(url) for _ in range(8)))
            assert len(set(ids)) == 1 and files.count("/card.png") == 1
            assert await reg.get_or_upload(DATA) == ids[0]
            assert await reg.get_or_upload(pipe_of(DATA)) == ids[0]
            api.kill_media(ids[0])

            async def send(media_id: str) -> httpx.Response:
                async with httpx.AsyncClient() as client:
                    return await client.post(
                        f"{api.base_url}/{api.phone_number_id}/messages",
                        headers={"Authorization": f"Bearer {api.token}"},
                        json={"messaging_product": "whatsapp", "to": "1", "type": "image",
                              "image": {"id": media_id}})

            assert (await reg.send_with_media(url, send)).status_code == 200
            assert api.uploads == 2

    asyncio.run(main())


# -- pacing --------------------------------------------------------------------------------


def test_uploads_are_paced_per_phone_number(make_registry: Callable[..., MediaRegistry],
                                            api: FakeGraphAPI) -> None:
    rate = 25.0
    reg = make_registry(uploads_per_second=rate)
    contents = [sample_media(PNG, salt=f"paced {i}") for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(reg.get_or_upload, contents))
    assert len(set(ids)) == 100
    arrivals = sorted(r.at for r in api.received if r.method == "POST" and r.path.endswith("/media"))
    measured = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert rate * 0.9 <= measured <= rate * 1.1


def test_rate_limits_still_back_off(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI) -> None:
    reg = make_registry()
    api.fail(status=429, code=130429, message="Rate limit hit", retry_after="0", method="POST")
    assert reg.get_or_upload(DATA) and api.count("POST") == 2




def test_a_304_without_validators_is_a_clear_error(reg: MediaRegistry, api: FakeGraphAPI,
                                                   files: FileServer) -> None:
    url = files.add("/odd.png", b"", status=304)  # a 304 has no body
    with pytest.raises(SourceUnavailable, match="HTTP 304 to a request without validators"):
        reg.get_or_upload(url)
    assert api.uploads == 0


def test_a_url_with_credentials_is_refused_never_answered_from_the_registry(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer) -> None:
    plain = files.add("/me/avatar.png", DATA)
    media_id = reg.get_or_upload(plain)
    hop = files.add("/hop.png", location=plain.replace("http://", "http://carol:hop-s3cret@"))
    for user in ("alice", "bob"):
        with pytest.raises(UnsafeSourceURL) as refused:
            reg.get_or_upload(plain.replace("http://", f"http://{user}:s3cret-{user}@"))
        assert str(refused.value) == (f"{plain}: a URL with user:password@ is not taken as a source; "
                                      "use a signed URL or one that needs no credentials")
    with pytest.raises(UnsafeSourceURL, match=r"\(redirected to .*/me/avatar.png\): a URL with user:pass"):
        reg.get_or_upload(hop)
    assert files.count("/me/avatar.png") == 1 and api.uploads == 1
    assert reg.get_or_upload(plain) == media_id


def test_lookup_and_delete_refuse_a_url_with_credentials(reg: MediaRegistry, files: FileServer) -> None:
    plain = files.add("/me/card.png", DATA)
    media_id = reg.get_or_upload(plain)
    credentialed = plain.replace("http://", "http://alice:s3cret@")
    for act in (reg.lookup, reg.delete):
        with pytest.raises(UnsafeSourceURL, match="a URL with user:password@ is not taken as a source"):
            act(credentialed)
    assert reg.get_or_upload(plain) == media_id


def test_a_validator_that_is_not_ascii_is_not_kept_and_never_breaks_the_url(
        reg: MediaRegistry, api: FakeGraphAPI, files: FileServer, clock: Clock) -> None:
    when = "Wed, 25 Nov 2026 10:00:00 GMT"
    url = files.add("/card.png", DATA, etag='"caf\u00e9"', last_modified=when)  # sent as byte 0xE9
    media_id = reg.get_or_upload(url)
    clock.advance(minutes=6)
    assert reg.get_or_upload_with_status(url) == (media_id, False)
    assert "if-none-match" not in files.hits[-1].headers
    assert files.hits[-1].headers["if-modified-since"] == when
    stored = reg.store.url_source(url)
    assert stored is not None and (stored.etag, stored.last_modified) == (None, when)
    # A registry written before kept such a value: it is not sent, the URL still works.
    reg.store.remember_url(stored._replace(etag='"caf\u00e9"', checked_at=clock.now))
    clock.advance(minutes=6)
    assert reg.get_or_upload_with_status(url) == (media_id, False)
    assert files.count("/card.png") == 3 and api.uploads == 1


class FailingStream(io.RawIOBase):
    """A binary stream whose second read fails, as a network file system or a socket may."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        if self.reads > 1:
            raise OSError(errno.EIO, "Input/output error")
        buffer[:8] = DATA[:8]
        return 8


def test_unreadable_streams_are_source_unreadable_with_the_original_as_cause(
        reg: MediaRegistry, api: FakeGraphAPI, tmp_path: Path) -> None:
    path = tmp_path / "card.png"
    path.write_bytes(DATA)
    closed = path.open("rb")
    closed.close()
    text = path.open("r", encoding="latin-1")
    cases = [(FailingStream(), OSError, r"<stream>: reading the stream failed \(Input/output error\); "
                                        "check the source and try again$"),
             (closed, ValueError, rf"{re.escape(str(path))}: the file object cannot be read \(.*closed file\); pass an "
                                  "open binary file object$"),
             (text, type(None), rf"{re.escape(str(path))}: a text-mode file; open it in binary mode \('rb'\)$")]
    for stream, cause, message in cases:
        with pytest.raises(SourceUnreadable, match=message) as refused:
            reg.get_or_upload(stream)  # type: ignore[arg-type]
        assert type(refused.value.__cause__) is cause
    text.close()
    assert api.uploads == 0
