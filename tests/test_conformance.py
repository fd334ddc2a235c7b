"""The requests the client sends conform to Meta's OpenAPI spec of the media endpoints
(tests/data/meta-media-api.openapi.yaml, a copy of shared/reference/), checked with openapi-core;
the version is written once."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from openapi_core import Config, OpenAPI, V30RequestValidator
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

import media_registry
from media_registry import MediaRegistry
from media_registry.config import load_settings
from media_registry.defaults import API_BASE as DEFAULT_API_BASE
from media_registry.graph.client import GraphClient
from media_registry.testing import FakeGraphAPI, sample_media

SPEC = Path(__file__).parent / "data" / "meta-media-api.openapi.yaml"
ROOT = Path(__file__).parent.parent


class SentRequest:
    """An httpx request as openapi-core reads one (its ``Request`` protocol)."""

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(request.url.query.decode())),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return f"{self._request.url.scheme}://{self._request.url.netloc.decode()}"

    @property
    def path(self) -> str:
        return self._request.url.path

    @property
    def method(self) -> str:
        return self._request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self._request.read() or None

    @property
    def content_type(self) -> str:
        return self._request.headers.get("content-type", "")


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    # Meta's 3.1 spec writes the file part the OAS 3.0 way (type string, format binary), which
    # only openapi-core's 3.0 validator accepts as bytes (python-openapi/openapi-core#854).
    return OpenAPI.from_file_path(str(SPEC), config=Config(request_validator_cls=V30RequestValidator))


@pytest.fixture
def sent() -> list[httpx.Request]:
    return []


@pytest.fixture
def graph(sent: list[httpx.Request]) -> GraphClient:
    """A client on Meta's real base URL whose requests are captured and answered as Meta does."""

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        sent.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": "4490709327384033"})
        if request.method == "DELETE":
            return httpx.Response(200, json={"success": True})
        return httpx.Response(200, json={
            "id": "2621233374848975", "url": "https://lookaside.fbsbx.com/x", "mime_type": "image/jpeg",
            "sha256": "ab" * 32, "file_size": "303833", "messaging_product": "whatsapp"})

    settings = load_settings(token="EAAGtoken-for-conformance", api_base=DEFAULT_API_BASE)
    with GraphClient(token=settings.token.get_secret_value(), api_base=settings.api_base,
                     user_agent=settings.user_agent, transport=httpx.MockTransport(handler)) as client:
        yield client


CALLS: dict[str, Callable[[GraphClient, Path], object]] = {
    "upload": lambda graph, path: graph.upload(path, "image/png", "102290129340398"),
    "upload, No-Storage TTL": lambda graph, path: graph.upload(path, "image/png", "102290129340398", 60),
    "get": lambda graph, path: graph.get_media("2621233374848975"),
    "get, phone number": lambda graph, path: graph.get_media("2621233374848975", "102290129340398"),
    "delete": lambda graph, path: graph.delete("2621233374848975"),
    "delete, phone number": lambda graph, path: graph.delete("2621233374848975", "102290129340398"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_each_request_conforms_to_metas_spec(
    spec: OpenAPI, graph: GraphClient, sent: list[httpx.Request], tmp_path: Path, call: str
) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(sample_media("image/png"))
    CALLS[call](graph, png)
    (request,) = sent
    spec.validate_request(SentRequest(request))  # raises with the spec's complaint
    assert request.url.path.startswith("/v23.0/")


def test_the_validator_does_catch_a_nonconforming_request(spec: OpenAPI) -> None:
    request = httpx.Request("GET", f"{DEFAULT_API_BASE}/1", headers={
        "User-Agent": "media-registry/0.1 (+https://pypi.org/project/media-registry/)",
        "Authorization": "Bearer EAAGtoken"})
    with pytest.raises(Exception, match="User-Agent"):
        spec.validate_request(SentRequest(request))


def test_graph_requests_name_the_project_and_downloads_a_browser(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    registry.download(api.add_media(b"hello", "text/plain"), tmp_path / "in")
    agents = {r.path.split("/")[1]: r.headers["user-agent"] for r in api.received}
    assert agents["v21.0"] == f"media-registry/{media_registry.__version__}" == "media-registry/0.3.0"
    assert agents["download"].startswith("Mozilla/5.0 ")


def test_the_download_user_agent_is_a_setting(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI,
                                              tmp_path: Path) -> None:
    registry = make_registry(download_user_agent="Mozilla/5.0 (compatible; ExampleBot/1.0)")
    registry.download(api.add_media(b"hello", "text/plain"), tmp_path / "in")
    assert api.received[-1].headers["user-agent"] == "Mozilla/5.0 (compatible; ExampleBot/1.0)"


def test_the_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+
    assert 'dynamic = ["version"]' in pyproject and not re.search(r"(?m)^version\s*=", pyproject)
    (path,) = re.findall(r'(?m)^\[tool.hatch.version\]\npath = "([^"]+)"', pyproject)
    source = (ROOT / path).read_text()
    (written,) = re.findall(r'__version__ = "([^"]+)"', source)
    assert written == media_registry.__version__ == version("media-registry") == "0.3.0"
    assert load_settings().user_agent == f"media-registry/{written}"
    assert load_settings().api_base == "https://graph.facebook.com/v23.0"
