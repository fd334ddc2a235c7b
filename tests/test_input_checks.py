"""Input that would reach a request path, or break the one-line promise, is refused in one
clear line before any request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import (
    ConfigError,
    GraphAPIError,
    InputError,
    MediaRegistry,
    UnsafeDownloadURL,
)
from media_registry.graph.client import GraphClient
from media_registry.testing import FakeGraphAPI

from conftest import run_cli

BAD_IDS = ["abc", "../../v26.0/999", "123?fields=owner", "123/media", "١٢٣", ""]


@pytest.mark.parametrize("phone", [*BAD_IDS[:-1], "1" * 33])
def test_a_phone_number_id_argument_is_checked_before_any_request(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path], phone: str
) -> None:
    with pytest.raises(InputError, match="is not a phone number ID \\(1 to 32 digits\\)"):
        registry.get_or_upload(make_file("a.png"), phone_number_id=phone)
    assert api.received == []


def test_a_phone_number_id_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", "../../v26.0/999")
    with pytest.raises(ConfigError, match="invalid WHATSAPP_PHONE_NUMBER_ID"):
        MediaRegistry.from_env(db=tmp_path / "r.db")


def test_the_cli_refuses_a_phone_number_id_that_is_not_digits(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    result = run_cli("upload", str(make_file("a.png")), "--phone-number-id", "abc", env=cli_env)
    assert result.returncode == 2  # a usage error, found before the registry is opened
    assert result.stderr.strip().splitlines() == [
        "media-registry: error: 'abc' is not a phone number ID (1 to 32 digits); check the value given"
    ]
    assert api.received == []


def test_a_phone_number_id_has_1_to_32_digits_everywhere(
    monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    long = "1" * 35
    db = tmp_path / "fresh.db"
    result = run_cli("upload", "--phone-number-id", long, str(make_file("a.png")),
                     env={**cli_env, "MEDIA_REGISTRY_DB": str(db)})
    assert (result.returncode, result.stderr) == (2, f"media-registry: error: '{long}' is not a phone number ID "
                                                     "(1 to 32 digits); check the value given\n")
    assert not db.exists()
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", long)
    with pytest.raises(ConfigError, match=r"invalid WHATSAPP_PHONE_NUMBER_ID: .*\(1 to 32 digits\)"):
        MediaRegistry.from_env(db=db)
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", "1" * 32)
    MediaRegistry.from_env(db=db).close()


@pytest.mark.parametrize("media_id", BAD_IDS)
def test_media_ids_are_checked_before_any_request(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path, media_id: str
) -> None:
    with pytest.raises(InputError, match="is not a media ID"):
        registry.download(media_id, tmp_path / "in")
    with pytest.raises(InputError, match="is not a media ID"):
        registry.graph.get_media(media_id)
    with pytest.raises(InputError, match="is not a media ID"):
        registry.graph.delete(media_id)
    assert api.received == []


def test_a_phone_number_id_in_a_query_is_checked_too(registry: MediaRegistry, api: FakeGraphAPI) -> None:
    with pytest.raises(InputError, match="is not a phone number ID"):
        registry.graph.get_media("123", phone_number_id="1&fields=owner")
    assert api.received == []


def test_webhook_media_ids_are_checked_before_any_request(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    payload = {"entry": [{"changes": [{"value": {"messages": [
        {"from": "1", "id": "wamid.X", "type": "image", "image": {"id": "../../v26.0/me"}}]}}]}]}
    problems: list[str] = []
    assert registry.download_webhook(payload, tmp_path / "in", on_invalid=problems.append) == []
    assert problems == ["webhook entry[0].changes[0].value.messages[0]: '../../v26.0/me' is not a "
                        "webhook media ID (digits only); check the value given; skipped"]
    assert api.received == []


def test_a_media_id_the_api_answers_with_must_be_digits(tmp_path: Path) -> None:
    import httpx

    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"id": "../1"}))
    (tmp_path / "a.png").write_bytes(b"x")
    with GraphClient(token="secret-token", api_base="https://graph.facebook.com/v26.0",
                     transport=transport, max_retries=0) as graph:
        with pytest.raises(GraphAPIError, match="sent no media id"):
            graph.upload(tmp_path / "a.png", "image/png", "123")


@pytest.mark.parametrize("host", ["\u2603.fbsbx.com", "xn--zz.fbsbx.com", "exa\u0301mple.fbsbx.com"])
def test_an_invalid_idn_host_in_a_download_url_is_a_clear_error(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path, host: str
) -> None:
    api.download_origin = f"https://{host}"
    with pytest.raises(UnsafeDownloadURL, match="is not a valid URL.*nothing was sent"):
        registry.download(api.add_media(b"x", "text/plain"), tmp_path / "in")


def test_a_redirect_to_an_invalid_idn_host_is_a_clear_error(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    api.fail(path="/download/", status=302, headers={"Location": "https://xn--zz.fbsbx.com/x"})
    with pytest.raises(UnsafeDownloadURL, match="malformed redirect.*the token was not sent"):
        registry.download(api.add_media(b"x", "text/plain"), tmp_path / "in")


def test_a_multi_line_api_message_ends_as_one_line(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path], cli_env: dict[str, str]
) -> None:
    message = "Invalid parameter\nTraceback (most recent call last):\r\n  at upstream\n\nsee docs"
    api.fail(status=400, code=100, message=message)
    with pytest.raises(GraphAPIError) as caught:
        registry.get_or_upload(make_file("a.png"))
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    assert "Invalid parameter Traceback (most recent call last): at upstream see docs" in str(caught.value)
    api.fail(status=400, code=100, message=message)
    result = run_cli("upload", str(make_file("b.png")), env=cli_env)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert json.dumps(message) not in result.stderr
