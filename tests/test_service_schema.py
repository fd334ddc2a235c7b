"""Property tests of `serve` against its own OpenAPI document (schemathesis): every operation,
raw-bytes bodies included, with schemathesis's default checks (no 500s, responses that match
the document, ...), on a real uvicorn server in a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from media_registry.testing import sample_media

from conftest import PNG
from service_helpers import Server, start_server

TOKEN = "schema-test-client-token"
WEBHOOKS = "/v1/webhooks/whatsapp"
# A request that fits the document may still name nothing usable: bytes WhatsApp does not
# take (415) or too many of them (413), a path under the allowed folder that does not exist
# or a host that does not resolve (400). For POST /v1/media these are the right answers to
# well-formed requests, beside schemathesis's defaults.
UPLOAD_CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "415", "429", "5xx"]}}})


@pytest.fixture
def running(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "media"
    root.mkdir()
    (root / "banner.png").write_bytes(sample_media(PNG, salt="banner"))
    env = {**cli_env, "MEDIA_REGISTRY_SERVICE_TOKEN": TOKEN}
    server = start_server(env, tmp_path / "serve.log", "--allow-root", str(root))
    with server.client(TOKEN) as client:  # one known content, so lookups can also hit
        assert client.post("/v1/media", json={"path": str(root / "banner.png")}).status_code == 200
    yield server
    assert server.stop() == 0, server.text()
    assert "Traceback" not in server.text()


# (method, path, whether invalid requests can be made: an operation without parameters or a
# body has none)
OPERATIONS = [
    ("POST", "/v1/media", True),
    ("GET", "/v1/media/{sha256}", True),
    ("POST", "/v1/media/{media_id}/invalidate", True),
    ("GET", "/metrics", False),
    ("GET", "/healthz", False),
]


def test_the_document_lists_every_endpoint(running: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    listed = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert listed == {("POST", "/v1/media"), ("GET", "/v1/media/{sha256}"), ("GET", "/metrics"),
                      ("POST", "/v1/media/{media_id}/invalidate"), ("GET", "/healthz"),
                      ("GET", WEBHOOKS), ("POST", WEBHOOKS)}
    webhook_responses = {"GET": {"200", "403", "503"}, "POST": {"200", "401", "403", "503"}}
    for method, path in listed:
        if path == WEBHOOKS:  # Meta's calls, without the client token
            assert webhook_responses[method] <= set(schema[path][method].definition.raw["responses"])
        elif path.startswith("/v1/"):
            responses = schema[path][method].definition.raw["responses"]
            assert {"200", "400", "401", "503"} <= set(responses), (method, path)
    bodies = schema["/v1/media"]["POST"].definition.raw["requestBody"]["content"]
    assert set(bodies) == {"application/octet-stream", "application/json"}


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize("method, path, has_inputs", OPERATIONS)
def test_every_operation_keeps_to_its_document(
    running: Server, method: str, path: str, has_inputs: bool, mode: GenerationMode
) -> None:
    if mode is GenerationMode.NEGATIVE and not has_inputs:
        pytest.skip("nothing to make invalid")
    config = UPLOAD_CONFIG if path == "/v1/media" else None
    schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json", config=config)
    calls = []

    # Raw bytes (application/octet-stream) and JSON bodies alike: schemathesis draws both.
    @given(case=schema[path][method].as_strategy(mode))
    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def keeps_to_it(case: Any) -> None:
        calls.append(case.call_and_validate(base_url=running.url,
                                            headers={"Authorization": f"Bearer {TOKEN}"}))

    keeps_to_it()
    # Hypothesis stops early only when it has drawn every possible request (/healthz: one).
    assert len(calls) >= (50 if has_inputs else 1), len(calls)
