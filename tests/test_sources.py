"""URL, bytes and stream sources (media_registry.sources) against a real local file server."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import os
import struct
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from file_server import FileServer
from media_registry import MediaTooLarge, MislabelledMedia, SourceChanged, SourceNotFound, UnsupportedMedia
from media_registry.config import load_settings
from media_registry.content.media_types import MAX_BYTES, size_limit
from media_registry.content.sources import Content, Validators, from_bytes, from_stream, is_url, url_key
from media_registry.errors import ConfigError, SourceUnavailable, SourceUnreadable, UnsafeSourceURL
from media_registry.graph.fetch import AsyncSourceFetcher, SourceFetcher, check_url
from media_registry.testing import sample_media

PNG = sample_media("image/png", salt="url source")
PDF = sample_media("application/pdf", size=3 * 1024 * 1024, salt="big")
SIGNED = ("https://bucket.s3.eu-west-1.amazonaws.com/cards/a.png?versionId=7"
          "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261125%2Fs3"
          "&X-Amz-Date=20261125T170000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
          "&X-Amz-Signature=d3adb33fd3adb33f&X-Amz-Security-Token=SECRETTOKEN")


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files go to a folder of the test's own, so leftovers can be counted."""
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder



@pytest.fixture
def fetcher() -> Iterator[SourceFetcher]:
    with_client = SourceFetcher(timeout=5.0)
    yield with_client
    with_client.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- URL key and scheme rule ---------------------------------------------------------------


def test_url_key_drops_signatures_credentials_and_fragment() -> None:
    key = url_key(SIGNED)
    assert key == "https://bucket.s3.eu-west-1.amazonaws.com/cards/a.png?versionId=7"
    assert url_key(SIGNED.replace("d3adb33f", "0ther")) == key  # a new signature, one key
    gcs = "https://storage.googleapis.com/b/o.pdf?X-Goog-Signature=abc&x-goog-date=1&alt=media"
    assert url_key(gcs) == "https://storage.googleapis.com/b/o.pdf?alt=media"
    assert url_key("https://user:pw@example.com/a.png#top") == "https://example.com/a.png"
    assert url_key("https://example.com/a.png?sig=1&se=2&v=3", ["SIG", "se"]) == "https://example.com/a.png?v=3"
    assert url_key("https://example.com/a.png?token=1", []) == "https://example.com/a.png?token=1"


def test_is_url_and_the_scheme_rule() -> None:
    assert is_url("https://example.com/a.png") and is_url("HTTP://127.0.0.1/a.png")
    assert not is_url("a.png") and not is_url(b"https://x") and not is_url("ftp://x/a.png")
    for allowed in ("https://example.com/a", "http://127.0.0.1:8/a", "http://localhost/a",
                    "http://[::1]:80/a", "http://127.8.9.10/a"):
        assert check_url(allowed, allowed).host
    for refused in ("http://example.com/a.png", "http://10.0.0.1/a", "ftp://example.com/a", "https:///a"):
        with pytest.raises(UnsafeSourceURL, match="only https://"):
            check_url(refused, refused)


# -- fetching ------------------------------------------------------------------------------


def test_fetch_spools_hashes_and_remembers_validators(files: FileServer, fetcher: SourceFetcher,
                                                      spool_dir: Path) -> None:
    url = files.add("/cards/a.png", PNG, etag='"v1"', last_modified="Wed, 25 Nov 2026 10:00:00 GMT")
    content = fetcher.fetch(url)
    assert isinstance(content, Content)
    assert content.sha256 == hashlib.sha256(PNG).hexdigest() and content.size == len(PNG)
    assert content.head == PNG[:8192] and content.label == url
    assert content.validators == Validators('"v1"', "Wed, 25 Nov 2026 10:00:00 GMT")
    with content.file() as path:
        assert Path(path).read_bytes() == PNG and path.endswith(".png")
    content.close()
    assert leftovers(spool_dir) == []
    assert "authorization" not in files.hits[0].headers  # the fetcher has no token to send


def test_conditional_get_304_and_new_content(files: FileServer, fetcher: SourceFetcher) -> None:
    url = files.add("/a.png", PNG, etag='"v1"')
    first = fetcher.fetch(url)
    assert first is not None
    assert fetcher.fetch(url, first.validators) is None
    assert files.hits[-1].headers["if-none-match"] == '"v1"'
    other = sample_media("image/png", salt="v2")
    files.add("/a.png", other, etag='"v2"')
    second = fetcher.fetch(url, first.validators)
    assert second is not None and second.sha256 == hashlib.sha256(other).hexdigest()
    first.close()
    second.close()


def test_conditional_gets_keep_the_connection(files: FileServer, fetcher: SourceFetcher) -> None:
    url = files.add("/keep.png", PNG, etag='"v1"')
    first = fetcher.fetch(url)
    assert first is not None
    first.close()
    assert fetcher.fetch(url, first.validators) is None
    assert fetcher.fetch(url, first.validators) is None
    assert files.hits[-1].peer == files.hits[-2].peer


def test_last_modified_alone_gives_if_modified_since(files: FileServer, fetcher: SourceFetcher) -> None:
    when = "Tue, 24 Nov 2026 08:00:00 GMT"
    url = files.add("/b.png", PNG, last_modified=when)
    assert fetcher.fetch(url, Validators(None, when)) is None
    assert files.hits[-1].headers["if-modified-since"] == when
    assert "if-none-match" not in files.hits[-1].headers


@pytest.mark.parametrize("status", [404, 410])
def test_gone_urls_are_source_not_found(files: FileServer, fetcher: SourceFetcher, status: int) -> None:
    url = files.add("/gone.png", b"gone", status=status)
    with pytest.raises(SourceNotFound, match=f"HTTP {status}, the URL no longer serves a file"):
        fetcher.fetch(url + "?X-Amz-Signature=SECRET")
    with pytest.raises(SourceNotFound) as raised:
        fetcher.fetch(url + "?X-Amz-Signature=SECRET")
    assert "SECRET" not in str(raised.value)


def test_server_errors_and_unreachable_hosts(files: FileServer, fetcher: SourceFetcher) -> None:
    url = files.add("/broken.png", b"oops", status=503)
    with pytest.raises(SourceUnavailable, match="HTTP 503"):
        fetcher.fetch(url)
    port = files.url("/").split(":")[2].split("/")[0]
    files.stop()
    with pytest.raises(SourceUnavailable, match="the download failed"):
        fetcher.fetch(f"http://127.0.0.1:{port}/a.png")


def test_redirects_are_followed_up_to_five(files: FileServer, fetcher: SourceFetcher) -> None:
    files.add("/final.png", PNG)
    for hop in range(1, 6):
        files.add(f"/hop{hop}", location=f"/hop{hop + 1}" if hop < 5 else files.url("/final.png"))
    content = fetcher.fetch(files.url("/hop1"))
    assert content is not None and content.size == len(PNG) and content.suffix == ".png"
    content.close()
    files.add("/hop0", location="/hop1")
    with pytest.raises(UnsafeSourceURL, match="more than 5 redirects"):
        fetcher.fetch(files.url("/hop0"))


def test_redirects_obey_the_scheme_rule(files: FileServer, fetcher: SourceFetcher) -> None:
    url = files.add("/away", location="http://192.0.2.1/a.png?X-Amz-Signature=SECRET", status=301)
    with pytest.raises(UnsafeSourceURL, match=r"redirected to http://192\.0\.2\.1/a\.png\)") as raised:
        fetcher.fetch(url)
    assert "SECRET" not in str(raised.value)


def test_an_honest_length_over_the_limit_stops_at_the_head(files: FileServer, fetcher: SourceFetcher,
                                                          spool_dir: Path) -> None:
    big = sample_media("image/png", size=6 * 1000 * 1000)
    url = files.add("/big.png", big)
    with pytest.raises(MediaTooLarge, match="over 5,000,000 bytes"):
        fetcher.fetch(url)
    assert leftovers(spool_dir) == []


def test_no_length_endless_body_is_cut_off(files: FileServer, fetcher: SourceFetcher, spool_dir: Path) -> None:
    block = sample_media("image/png", size=1 << 20)
    url = files.add("/endless.png", block, length=-1, repeat=200)  # 200 MB, no Content-Length
    with pytest.raises(MediaTooLarge, match="stopped reading"):
        fetcher.fetch(url)
    assert leftovers(spool_dir) == []
    assert files.sent["/endless.png"] < 100 * (1 << 20)


def test_a_lying_small_length_hides_nothing_beyond_the_limit(files: FileServer, fetcher: SourceFetcher) -> None:
    # An announced length under the limit with more behind it: only the announced bytes are
    # read, the rest never reaches the spool.
    big = sample_media("image/png", size=6 * 1000 * 1000)
    url = files.add("/liar.png", big, length=1000)
    content = fetcher.fetch(url)
    assert content is not None and content.size == 1000
    content.close()


def test_a_body_shorter_than_announced_is_an_error(files: FileServer, fetcher: SourceFetcher,
                                                   spool_dir: Path) -> None:
    url = files.add("/short.png", PNG, length=len(PNG) + 5000)
    with pytest.raises(SourceUnavailable, match="the download failed"):
        fetcher.fetch(url)
    assert leftovers(spool_dir) == []


def test_slow_and_stalled_servers(files: FileServer) -> None:
    slow = files.add("/slow.pdf", PDF, delay=0.01, block=256 * 1024)
    stalled = files.add("/stalled.pdf", PDF, delay=2.0)
    impatient = SourceFetcher(timeout=0.5)
    try:
        content = impatient.fetch(slow)  # 12 blocks, each well within the timeout
        assert content is not None and content.sha256 == hashlib.sha256(PDF).hexdigest()
        content.close()
        with pytest.raises(SourceUnavailable, match="timed out"):
            impatient.fetch(stalled)
    finally:
        impatient.close()


def test_a_trickling_server_meets_the_deadline(files: FileServer, spool_dir: Path) -> None:
    trickle = files.add("/trickle.pdf", PDF, delay=0.2, block=64 * 1024)  # 48 blocks, each in time
    patient = SourceFetcher(timeout=5.0, deadline=1.0)
    try:
        with pytest.raises(SourceUnavailable, match=r"took longer than 1 s; nothing was kept"):
            patient.fetch(trickle)
    finally:
        patient.close()
    assert leftovers(spool_dir) == []


def test_async_fetcher(files: FileServer, spool_dir: Path) -> None:
    url = files.add("/a.png", PNG, etag='"v1"')
    big = files.add("/big.png", sample_media("image/png", size=1 << 20), length=-1, repeat=20)

    async def run() -> None:
        fetcher = AsyncSourceFetcher(timeout=5.0)
        try:
            content = await fetcher.fetch(url)
            assert content is not None and content.sha256 == hashlib.sha256(PNG).hexdigest()
            assert await fetcher.fetch(url, content.validators) is None
            content.close()
            with pytest.raises(MediaTooLarge):
                await fetcher.fetch(big)
            with pytest.raises(UnsafeSourceURL):
                await fetcher.fetch("http://example.com/a.png")
        finally:
            await fetcher.aclose()

    asyncio.run(run())
    assert leftovers(spool_dir) == []


# -- bytes and streams ---------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_are_hashed_in_place(wrap: type, spool_dir: Path) -> None:
    content = from_bytes(wrap(PDF))
    assert content.sha256 == hashlib.sha256(PDF).hexdigest() and content.size == len(PDF)
    assert content.label == "<bytes>" and leftovers(spool_dir) == []
    with content.file() as path:
        assert Path(path).read_bytes() == PDF
    assert leftovers(spool_dir) == []


def test_an_unseekable_pipe_is_spooled_while_hashed(spool_dir: Path) -> None:
    data = sample_media("application/pdf", size=20 * 1000 * 1000, salt="pipe")
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        content = from_stream(pipe)
    writer.join()
    assert content.sha256 == hashlib.sha256(data).hexdigest() and content.label == "-"
    assert len(leftovers(spool_dir)) == 1
    with content.file() as path:
        assert Path(path).stat().st_size == len(data)
    content.close()
    assert leftovers(spool_dir) == []


def test_an_unseekable_stream_over_the_limit_is_cut_off(spool_dir: Path) -> None:
    class Endless(io.RawIOBase):
        served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            head = sample_media("image/jpeg")
            chunk = head if self.served == 0 else bytes(len(buffer))
            size = min(len(buffer), len(chunk))
            buffer[:size] = chunk[:size]
            self.served += size
            return size

    stream = Endless()
    with pytest.raises(MediaTooLarge, match="over 5,000,000 bytes"):
        from_stream(io.BufferedReader(stream))
    assert stream.served < 5_000_000 + 2 * (1 << 20)
    assert leftovers(spool_dir) == []


def test_a_seekable_file_is_hashed_in_place_from_where_it_stands(spool_dir: Path) -> None:
    buffer = io.BytesIO(b"junk" + PDF)
    buffer.seek(4)
    content = from_stream(buffer, label="report.pdf")
    assert content.sha256 == hashlib.sha256(PDF).hexdigest() and leftovers(spool_dir) == []
    with content.file() as path:
        assert Path(path).read_bytes() == PDF
    buffer.seek(100)
    buffer.write(b"changed")
    with pytest.raises(SourceChanged, match="report.pdf: the stream changed"):
        with content.file():
            pass
    assert leftovers(spool_dir) == []


def test_a_text_stream_is_refused() -> None:
    with pytest.raises(SourceUnreadable, match="open it in binary mode"):
        from_stream(io.StringIO("hello"))  # type: ignore[arg-type]


class Drained(io.RawIOBase):
    """A non-blocking stream with nothing ready and no descriptor to wait on."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> None:
        return None


def test_a_non_blocking_stream_is_read_to_its_end_never_cut_short(spool_dir: Path) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, PDF[:50_000])  # less than a pipe holds; the rest once it is drained

    def feed() -> None:
        while struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0\0\0\0"))[0]:
            time.sleep(0.005)
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(PDF[50_000:])

    threading.Thread(target=feed, daemon=True).start()
    with os.fdopen(read_end, "rb") as stream, from_stream(stream) as content:
        assert content.size == len(PDF) and content.sha256 == hashlib.sha256(PDF).hexdigest()
    with pytest.raises(SourceUnreadable, match="a non-blocking stream with no data ready; pass a blocking"):
        from_stream(io.BufferedReader(Drained()))
    assert leftovers(spool_dir) == []


# -- limits and settings -------------------------------------------------------------------


def test_size_limit_by_first_bytes() -> None:
    assert size_limit(sample_media("image/png")) == MAX_BYTES["image"]
    assert size_limit(sample_media("image/webp")) == MAX_BYTES["animated sticker"]
    assert size_limit(sample_media("video/mp4")) == MAX_BYTES["video"]
    docx = sample_media("application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    assert size_limit(docx) == MAX_BYTES["document"]
    assert size_limit(b"") == size_limit(b"\x00\x01garbage") == max(MAX_BYTES.values())


def test_source_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_REGISTRY_URL_IGNORE_QUERY", "sig, se ,X-Goog-*")
    monkeypatch.setenv("MEDIA_REGISTRY_URL_REVALIDATE", "60")
    monkeypatch.setenv("MEDIA_REGISTRY_UPLOADS_PER_SECOND", "5")
    settings = load_settings()
    assert settings.url_ignore_query == ("sig", "se", "X-Goog-*")
    assert settings.url_revalidate.total_seconds() == 60 and settings.uploads_per_second == 5
    assert load_settings(url_ignore_query="token").url_ignore_query == ("token",)
    for rate in ("0", "1e-300"):  # a tiny rate overflowed the second upload's wait
        monkeypatch.setenv("MEDIA_REGISTRY_UPLOADS_PER_SECOND", rate)
        with pytest.raises(ConfigError, match="MEDIA_REGISTRY_UPLOADS_PER_SECOND"):
            load_settings()


def test_default_settings_leave_out_s3_and_gcs_signatures() -> None:
    settings = load_settings()
    assert settings.uploads_per_second == 20 and settings.url_revalidate.total_seconds() == 300
    assert url_key(SIGNED, settings.url_ignore_query) == url_key(SIGNED)
    assert "X-Amz-Signature" in settings.url_ignore_query


def test_content_is_checked_like_a_file_and_named_by_its_label(files: FileServer, fetcher: SourceFetcher) -> None:
    docx = sample_media("application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    assert from_bytes(docx).media_type().mime_type.endswith("wordprocessingml.document")
    assert from_stream(io.BytesIO(PNG)).media_type().mime_type == "image/png"
    with pytest.raises(UnsupportedMedia, match=r"^<bytes>: content is image/gif"):
        from_bytes(b"GIF89a" + bytes(100)).media_type()
    with pytest.raises(UnsupportedMedia, match=r"^<bytes>: the file is empty"):
        from_bytes(b"").media_type()
    url = files.add("/card.png", PNG)
    content = fetcher.fetch(url + "?X-Amz-Signature=SECRET")
    assert content is not None
    with pytest.raises(MislabelledMedia, match=rf"^{url}: declared image/jpeg"):
        content.media_type("image/jpeg")
    content.close()


def test_url_revalidate_may_be_zero_never_negative() -> None:
    assert load_settings(url_revalidate=0).url_revalidate.total_seconds() == 0
    with pytest.raises(ConfigError, match="MEDIA_REGISTRY_URL_REVALIDATE"):
        load_settings(url_revalidate=-1)
