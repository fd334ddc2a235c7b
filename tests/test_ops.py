"""The operators' files in ops/: the alert rules pass promtool's check and their unit tests,
and every metric that the rules and the Grafana dashboard query is one a running service
exposes, in a real scrape of its /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from media_registry.testing import FakeGraphAPI, sample_media

from conftest import PNG
from service_helpers import start_server

OPS = Path(__file__).parent.parent / "ops"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run does it as root)")

def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], cwd=OPS, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_the_alert_rules_are_valid_prometheus_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0 and "SUCCESS: 4 rules found" in result.stdout, result.stdout + result.stderr


@needs_promtool
def test_the_alert_rules_fire_when_they_should_and_only_then() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def queried_metrics() -> set[str]:
    """Every metric name in the rules' and the dashboard's PromQL expressions."""
    rules = (OPS / "alerts.yml").read_text()
    expressions = re.findall(r"(?m)^\s+expr: (.+)$", rules)
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [dashboard["templating"]["list"][1]["definition"]]
    return {name for expr in expressions for name in re.findall(r"\bmedia_registry_\w+", expr)}


@pytest.mark.sqlite_only  # the metrics' names are the same on every backend
def test_every_metric_queried_is_in_a_real_scrape_and_upload_failures_count(
    cli_env: dict[str, str], tmp_path: Path, api: FakeGraphAPI
) -> None:
    server = start_server(cli_env, tmp_path / "serve.log")
    try:
        with server.client() as client:
            assert client.post("/v1/media", content=sample_media(PNG, salt="ok")).status_code == 200
            api.fail(status=503, times=10)
            assert client.post("/v1/media", content=sample_media(PNG, salt="refused")).status_code >= 500
            gif = b"GIF89a" + bytes(64)  # the client's mistake: no upload failing
            assert client.post("/v1/media", content=gif).status_code == 415
            scrape = client.get("/metrics").text
    finally:
        assert server.stop() == 0, server.text()
    samples = {s.name: s.value for family in text_string_to_metric_families(scrape) for s in family.samples}
    assert samples["media_registry_upload_failures_total"] == 1
    queried = queried_metrics()
    assert "media_registry_upload_failures_total" in queried and len(queried) >= 12
    assert queried <= samples.keys(), sorted(queried - samples.keys())
