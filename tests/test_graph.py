"""The Graph API client: retries, error mapping and where the token may go."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from media_registry import APIUnreachable, AuthError, GraphAPIError, MediaNotFound, RateLimited
from media_registry.graph.auth import BearerAuth
from media_registry.graph.base import retry_after
from media_registry.graph.client import GraphClient
from media_registry.testing import FakeGraphAPI, sample_media


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(api: FakeGraphAPI, sleeps: list[float]) -> GraphClient:
    graph = GraphClient(token=api.token, api_base=api.base_url, max_retries=3, backoff=0.01,
                        sleep=sleeps.append, timeout=2)
    yield graph
    graph.close()


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    path.write_bytes(sample_media("image/png"))
    return path


def test_two_server_errors_then_success(client: GraphClient, api: FakeGraphAPI, png: Path,
                                        sleeps: list[float]) -> None:
    api.fail(status=500, times=1)
    api.fail(status=503, times=1)
    media_id = client.upload(png, "image/png", api.phone_number_id)
    assert api.live(media_id)
    assert api.count("POST") == 3 and len(sleeps) == 2
    assert api.media[media_id].data == png.read_bytes()  # each retry sent the whole file


def test_429_waits_as_long_as_retry_after_says(client: GraphClient, api: FakeGraphAPI, png: Path,
                                               sleeps: list[float]) -> None:
    api.fail(status=429, code=130429, message="Rate limit hit", retry_after="7")
    client.upload(png, "image/png", api.phone_number_id)
    assert sleeps == [7.0]


def test_retry_after_is_capped(api: FakeGraphAPI, png: Path, sleeps: list[float]) -> None:
    api.fail(status=429, retry_after="3600")
    with GraphClient(token=api.token, api_base=api.base_url, max_wait=5, sleep=sleeps.append) as graph:
        graph.upload(png, "image/png", api.phone_number_id)
    assert sleeps == [5]


def test_rate_limits_that_persist_end_in_rate_limited(client: GraphClient, api: FakeGraphAPI, png: Path) -> None:
    api.fail(status=400, code=80007, message="Rate limit issues", times=10)
    with pytest.raises(RateLimited, match="code 80007") as caught:
        client.upload(png, "image/png", api.phone_number_id)
    assert api.count("POST") == 4  # max_retries=3
    assert caught.value.status == 400 and caught.value.fbtrace_id


def test_an_expired_token_is_never_retried(api: FakeGraphAPI, png: Path, sleeps: list[float]) -> None:
    api.fail(status=401, code=190, subcode=463, message="Error validating access token: Session has expired")
    with GraphClient(token=api.token, api_base=api.base_url, sleep=sleeps.append) as graph:
        with pytest.raises(AuthError, match="WHATSAPP_TOKEN") as caught:
            graph.upload(png, "image/png", api.phone_number_id)
    assert api.count() == 1 and sleeps == []
    assert (caught.value.code, caught.value.subcode) == (190, 463)


def test_other_client_errors_are_not_retried(client: GraphClient, api: FakeGraphAPI, png: Path) -> None:
    api.fail(status=400, code=100, message="Param file must be a file with one of the following types")
    with pytest.raises(GraphAPIError, match="Param file must be") as caught:
        client.upload(png, "image/png", api.phone_number_id)
    assert api.count() == 1 and caught.value.code == 100


def test_is_transient_errors_are_retried(client: GraphClient, api: FakeGraphAPI, png: Path) -> None:
    api.fail(status=400, code=2, transient=True, message="Temporary issue")
    assert api.live(client.upload(png, "image/png", api.phone_number_id))
    assert api.count("POST") == 2


def test_a_connection_reset_is_retried(client: GraphClient, api: FakeGraphAPI, png: Path) -> None:
    api.fail(reset=True, method="POST")
    assert api.live(client.upload(png, "image/png", api.phone_number_id))
    assert api.count("POST") == 2


def test_a_timeout_is_retried_then_reported(api: FakeGraphAPI, png: Path, sleeps: list[float]) -> None:
    api.fail(delay=1.0, times=2)
    with GraphClient(token=api.token, api_base=api.base_url, timeout=0.2, max_retries=1,
                     sleep=sleeps.append) as graph:
        with pytest.raises(APIUnreachable, match="timed out"):
            graph.upload(png, "image/png", api.phone_number_id)
    assert len(sleeps) == 1


def test_an_unreachable_api_is_one_clear_error(png: Path) -> None:
    with GraphClient(token="secret-token", api_base="http://127.0.0.1:9/v26.0", max_retries=1,
                     sleep=lambda _: None) as graph:
        with pytest.raises(APIUnreachable, match="cannot reach the Graph API at http://127.0.0.1:9/v26.0"):
            graph.upload(png, "image/png", "123")


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"{\"no\": \"id\"}"])
def test_a_200_without_an_id_is_a_clear_error(client: GraphClient, api: FakeGraphAPI, png: Path,
                                              body: bytes) -> None:
    api.fail(status=200, body=body)
    with pytest.raises(GraphAPIError, match="JSON object|no media id"):
        client.upload(png, "image/png", api.phone_number_id)


def test_get_media_accepts_string_sizes_and_base64_digests(tmp_path: Path) -> None:
    with FakeGraphAPI(file_size_as_string=True, sha256_encoding="base64") as api:
        media_id = api.add_media(b"hello", "text/plain")
        with GraphClient(token=api.token, api_base=api.base_url) as graph:
            metadata = graph.get_media(media_id)
    assert metadata.file_size == 5
    assert metadata.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


@pytest.mark.parametrize("answer", ["success", "deleted"])
def test_delete_accepts_both_documented_answers(answer: str) -> None:
    with FakeGraphAPI(delete_answer=answer) as api:
        media_id = api.add_media(b"x", "text/plain")
        with GraphClient(token=api.token, api_base=api.base_url) as graph:
            graph.delete(media_id)
            with pytest.raises(MediaNotFound, match="upload the file again"):
                graph.delete(media_id)
    assert not api.live(media_id)


def test_a_token_echoed_by_an_error_is_redacted(client: GraphClient, api: FakeGraphAPI, png: Path) -> None:
    api.fail(status=400, code=100, message=f"bad request for token {api.token}")
    with pytest.raises(GraphAPIError) as caught:
        client.upload(png, "image/png", api.phone_number_id)
    assert api.token not in str(caught.value) and "<token>" in str(caught.value)


def test_the_token_goes_only_to_the_api_origin_and_meta_media_hosts() -> None:
    auth = BearerAuth("t", "https://graph.facebook.com/v26.0", [".fbsbx.com", ".whatsapp.net"])
    allowed = ["https://graph.facebook.com/v26.0/1", "https://lookaside.fbsbx.com/x",
               "https://mmg.whatsapp.net/d"]
    refused = ["http://lookaside.fbsbx.com/x", "https://evil.example/fbsbx.com",
               "https://fbsbx.com.evil.example/", "https://graph.facebook.com:8443/v26.0/1"]
    assert all(auth.allows(httpx.URL(url)) for url in allowed)
    assert not any(auth.allows(httpx.URL(url)) for url in refused)
    request = httpx.Request("GET", "https://evil.example/")
    assert "authorization" not in next(auth.auth_flow(request)).headers


def test_mock_transport_plugs_in(png: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "42"})

    with GraphClient(token="t", api_base="https://graph.facebook.com/v26.0",
                     transport=httpx.MockTransport(handler)) as graph:
        assert graph.upload(png, "image/png", "99") == "42"
    body = seen[0].read()
    assert b'name="messaging_product"\r\n\r\nwhatsapp' in body
    assert b'name="type"\r\n\r\nimage/png' in body
    assert b"Content-Type: image/png" in body
    assert seen[0].headers["authorization"] == "Bearer t"


@pytest.mark.parametrize(("header", "seconds"), [("12", 12.0), ("", None), ("soon", None)])
def test_retry_after_header_values(header: str, seconds: float | None) -> None:
    assert retry_after(header) == seconds


def test_error_payloads_keep_graph_fields() -> None:
    from media_registry.errors import from_graph_response

    payload = json.loads('{"error": {"message": "Unsupported get request.", "type": "GraphMethodException",'
                         ' "code": 100, "error_subcode": 33, "fbtrace_id": "AbC"}}')
    error = from_graph_response(400, payload, None)
    assert isinstance(error, MediaNotFound)
    assert (error.code, error.subcode, error.fbtrace_id) == (100, 33, "AbC")
