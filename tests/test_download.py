"""Inbound media: verified, atomic downloads; the token kept to allowed hosts; webhooks."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from media_registry import (
    DownloadError,
    IntegrityError,
    MediaNotFound,
    MediaRegistry,
    UnsafeDownloadURL,
)
from media_registry.testing import SAMPLE_HEADS, FakeGraphAPI, sample_media
from media_registry.webhooks import media_in_webhook

import registry_db
from conftest import run_cli

REFERENCE = json.loads((Path(__file__).parent / "data" / "webhook-image-message.json").read_text())


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


@pytest.fixture
def other_host() -> Iterator[FakeGraphAPI]:
    """Another server on another port: a different origin that must never see the token."""
    with FakeGraphAPI(token="not-the-same") as server:
        yield server


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("mime_type", sorted(SAMPLE_HEADS))
def test_each_kind_downloads_verified_under_its_sha256(
    registry: MediaRegistry, api: FakeGraphAPI, inbox: Path, mime_type: str
) -> None:
    data = sample_media(mime_type, size=3000, salt="inbound")
    media_id = api.add_media(data, mime_type)
    result = registry.download(media_id, inbox)
    sha256 = hashlib.sha256(data).hexdigest()
    assert result.fetched and result.sha256 == sha256 and result.size_bytes == len(data)
    assert result.path.parent == inbox and result.path.name.startswith(sha256 + ".")
    assert result.path.read_bytes() == data
    assert leftovers(inbox) == [result.path.name]
    rows = registry_db.query(registry.settings.db,
                             "SELECT sha256, mime_type, size_bytes, path FROM inbound WHERE media_id = ?", media_id)
    assert rows[0] == (sha256, mime_type, len(data), str(result.path.resolve()))


def test_extensions_follow_the_mime_type(registry: MediaRegistry, api: FakeGraphAPI, inbox: Path) -> None:
    names = {mime: registry.download(api.add_media(sample_media(mime), mime), inbox).path.suffix
             for mime in ("image/jpeg", "audio/ogg", "application/pdf", "text/plain", "video/mp4")}
    assert names == {"image/jpeg": ".jpg", "audio/ogg": ".ogg", "application/pdf": ".pdf",
                     "text/plain": ".txt", "video/mp4": ".mp4"}


def test_the_default_destination_is_the_blob_dir(make_registry: Any, api: FakeGraphAPI, tmp_path: Path) -> None:
    registry = make_registry(blob_dir=tmp_path / "blobs")
    result = registry.download(api.add_media(b"%PDF-1.4 x", "application/pdf"))
    assert result.path.parent == tmp_path / "blobs"


def test_content_already_on_disk_is_not_fetched_again(registry: MediaRegistry, api: FakeGraphAPI,
                                                      inbox: Path) -> None:
    data = sample_media("image/png")
    first = registry.download(api.add_media(data, "image/png"), inbox)
    second = registry.download(api.add_media(data, "image/png"), inbox)  # same bytes, new ID
    assert first.fetched and not second.fetched and second.path == first.path
    assert api.count("GET", "/download/") == 1


def test_base64_digests_and_string_sizes(tmp_path: Path) -> None:
    with FakeGraphAPI(sha256_encoding="base64", file_size_as_string=True) as api:
        with MediaRegistry(db=tmp_path / "r.db", token=api.token, api_base=api.base_url) as registry:
            result = registry.download(api.add_media(b"hello", "text/plain"), tmp_path / "in")
    assert result.sha256 == hashlib.sha256(b"hello").hexdigest() and result.size_bytes == 5


def test_a_wrong_sha256_is_retried_then_refused_and_nothing_is_kept(
    registry: MediaRegistry, api: FakeGraphAPI, inbox: Path
) -> None:
    media_id = api.add_media(sample_media("image/png"), "image/png")
    api.fail(path="/download/", corrupt=True, times=10)
    with pytest.raises(IntegrityError, match="sha256 of the bytes does not match"):
        registry.download(media_id, inbox)
    assert api.count("GET", "/download/") == 3  # max_retries=2 in the tests
    assert leftovers(inbox) == []


def test_a_truncated_transfer_is_retried(registry: MediaRegistry, api: FakeGraphAPI, inbox: Path) -> None:
    data = sample_media("application/pdf", size=50_000)
    media_id = api.add_media(data, "application/pdf")
    api.fail(path="/download/", truncate=1000)
    assert registry.download(media_id, inbox).path.read_bytes() == data
    api.fail(path="/download/", truncate=1000, times=10)
    other = api.add_media(sample_media("application/pdf", size=50_000, salt="2"), "application/pdf")
    with pytest.raises(IntegrityError, match="broke off after|truncated"):
        registry.download(other, inbox)
    assert leftovers(inbox) == [f"{hashlib.sha256(data).hexdigest()}.pdf"]  # the first one only


def test_a_url_past_its_five_minutes_is_fetched_again(registry: MediaRegistry, api: FakeGraphAPI,
                                                      inbox: Path) -> None:
    media_id = api.add_media(b"voice", "audio/ogg")
    api.fail(path="/download/", advance=6 * 60)  # the fake's clock moves on before it answers
    assert registry.download(media_id, inbox).path.read_bytes() == b"voice"
    assert api.count("GET", f"/v26.0/{media_id}") == 2  # metadata fetched again for a fresh URL


def test_urls_that_always_expire_end_in_one_clear_error(tmp_path: Path) -> None:
    from datetime import timedelta

    with FakeGraphAPI(url_lifetime=timedelta(seconds=-1)) as api:
        with MediaRegistry(db=tmp_path / "r.db", token=api.token, api_base=api.base_url,
                           max_retries=1, retry_backoff=0.01) as registry:
            with pytest.raises(DownloadError, match="every download URL had expired"):
                registry.download(api.add_media(b"x", "text/plain"), tmp_path / "in")


def test_a_download_url_on_another_host_is_refused_without_the_token(
    registry: MediaRegistry, api: FakeGraphAPI, other_host: FakeGraphAPI, inbox: Path
) -> None:
    api.download_origin = other_host.origin
    with pytest.raises(UnsafeDownloadURL, match="refusing to download from http://127.0.0.1.*token was not sent"):
        registry.download(api.add_media(b"x", "text/plain"), inbox)
    assert other_host.received == []
    assert leftovers(inbox) == []


def test_a_redirect_to_a_foreign_host_is_refused(registry: MediaRegistry, api: FakeGraphAPI,
                                                 other_host: FakeGraphAPI, inbox: Path) -> None:
    api.fail(path="/download/", status=302, headers={"Location": f"{other_host.origin}/steal"})
    with pytest.raises(UnsafeDownloadURL, match="refusing to download"):
        registry.download(api.add_media(b"x", "text/plain"), inbox)
    assert not any(r.authorized for r in other_host.received) and other_host.received == []


def test_a_bad_media_id_is_a_clear_error(registry: MediaRegistry, inbox: Path) -> None:
    with pytest.raises(MediaNotFound, match="media 123456789: the Graph API does not know this media ID"):
        registry.download("123456789", inbox)


# -- webhooks -----------------------------------------------------------------------------


def test_the_reference_webhook_yields_its_image() -> None:
    (item,) = media_in_webhook(REFERENCE)
    assert (item.media_id, item.kind, item.mime_type, item.caption) == (
        "1003383421387256", "image", "image/jpeg", "Taj Mahal")
    assert item.sha256 == "49f227634806293b0995459bc310b593e1400f41591efcf07e9bced335f41942"
    assert (item.sender, item.phone_number_id) == ("16505551234", "106540352242922")
    assert item.message_id.startswith("wamid.")


def webhook_with(messages: list[dict[str, Any]]) -> dict[str, Any]:
    payload = copy.deepcopy(REFERENCE)
    payload["entry"][0]["changes"][0]["value"]["messages"] = messages
    return payload


def test_webhooks_without_media_yield_nothing() -> None:
    text = {"from": "1", "id": "wamid.A", "type": "text", "text": {"body": "hi"}}
    assert list(media_in_webhook(webhook_with([text]))) == []
    statuses = {"entry": [{"changes": [{"value": {"statuses": [{"id": "wamid.B"}]}}]}]}
    assert list(media_in_webhook(statuses)) == [] and list(media_in_webhook({})) == []


def test_several_messages_of_every_kind(registry: MediaRegistry, api: FakeGraphAPI, inbox: Path) -> None:
    kinds = {"image": "image/jpeg", "audio": "audio/ogg", "video": "video/mp4",
             "document": "application/pdf", "sticker": "image/webp"}
    messages = [{"from": "16505551234", "id": "wamid.T", "type": "text", "text": {"body": "see"}}]
    for kind, mime in kinds.items():
        data = sample_media(mime, salt=kind)
        media = {"id": api.add_media(data, mime), "mime_type": mime,
                 "sha256": hashlib.sha256(data).hexdigest()}
        extra = {"document": {"filename": "offer.pdf"}, "audio": {"voice": True},
                 "sticker": {"animated": False}}.get(kind, {})
        messages.append({"from": "16505551234", "id": f"wamid.{kind}", "type": kind, kind: {**media, **extra}})
    payload = webhook_with(messages)
    items = list(media_in_webhook(payload))
    assert [i.kind for i in items] == list(kinds)
    assert items[1].voice is True and items[3].filename == "offer.pdf" and items[4].animated is False
    results = registry.download_webhook(payload, inbox)
    assert [r.media_id for r in results] == [i.media_id for i in items]
    assert all(r.path.exists() for r in results)


def test_cli_download_and_webhook_from_stdin(cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path) -> None:
    data = sample_media("image/jpeg", salt="cli")
    media_id = api.add_media(data, "image/jpeg")
    out = tmp_path / "out"
    first = run_cli("download", media_id, "--out", str(out), env=cli_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{media_id}\tdownloaded\t{out / (hashlib.sha256(data).hexdigest() + '.jpg')}\n"
    payload = webhook_with([{"from": "1", "id": "wamid.X", "type": "image",
                             "image": {"id": media_id, "mime_type": "image/jpeg"}}])
    again = run_cli("download", "--webhook", "-", "--out", str(out), env=cli_env, stdin=json.dumps(payload))
    assert again.stdout.split("\t")[:2] == [media_id, "present"]
    bad = run_cli("download", "999", "--out", str(out), env=cli_env)
    assert bad.returncode == 1 and "does not know this media ID" in bad.stderr
    assert run_cli("download", env=cli_env).returncode == 2


def test_cli_webhook_reports_a_skipped_item_even_when_a_later_one_fails(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    payload = webhook_with([{"from": "1", "id": "wamid.A", "type": "image", "image": {"id": "abc"}},
                            {"from": "1", "id": "wamid.B", "type": "image", "image": {"id": "999999"}}])
    result = run_cli("download", "--webhook", "-", "--out", str(tmp_path / "out"), env=cli_env,
                     stdin=json.dumps(payload))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith("'abc' is not a webhook media ID (digits only); check the value given; skipped")
    assert "media 999999: the Graph API does not know this media ID" in lines[1] and len(lines) == 2
