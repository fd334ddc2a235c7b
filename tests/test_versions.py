"""The Graph API version: the default is the current one; a version past its end is refused
before any request, one near it warned about once per process, and one without an end date
(or newer than the table) accepted silently. Every date here is pinned through the
registry's clock, so the suite does not change its mind as the calendar moves."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from media_registry import ConfigError, MediaRegistry, defaults
from media_registry.graph import versions
from media_registry.testing import FakeGraphAPI

from conftest import PNG

AFTER_V21 = datetime(2027, 2, 1, 12, tzinfo=timezone.utc)  # v21.0 ended on 21 January 2027
BEFORE_V23_ENDS = datetime(2027, 9, 1, 12, tzinfo=timezone.utc)  # v23.0 ends 8 October 2027


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a process of its own as far as the once-per-process warning goes."""
    monkeypatch.setattr(versions, "_warned", set())


def on_version(api: FakeGraphAPI, version: str) -> str:
    return f"{api.origin}/{version}"


def test_the_default_is_the_current_version(api: FakeGraphAPI) -> None:
    assert defaults.API_BASE == "https://graph.facebook.com/v26.0" == f"https://graph.facebook.com/{versions.CURRENT}"
    assert api.base_url.endswith("/v26.0")
    assert versions.END_DATES["v26.0"] is None


@pytest.mark.parametrize(("version", "day", "state"), [
    ("v21.0", datetime(2027, 1, 21, 23, tzinfo=timezone.utc), "near"),  # its last day still works
    ("v21.0", datetime(2027, 1, 22, tzinfo=timezone.utc), "retired"),
    ("v23.0", datetime(2027, 7, 10, tzinfo=timezone.utc), "near"),  # 90 days before its end
    ("v23.0", datetime(2027, 7, 9, tzinfo=timezone.utc), "ok"),  # 91 days before
    ("v25.0", datetime(2028, 7, 30, tzinfo=timezone.utc), "retired"),
    ("v26.0", datetime(2040, 1, 1, tzinfo=timezone.utc), "ok"),  # no end date published
    ("v99.0", datetime(2040, 1, 1, tzinfo=timezone.utc), "ok"),  # newer than the table
    ("v2.12", datetime(2026, 1, 1, tzinfo=timezone.utc), "retired"),  # older than the table
])
def test_the_table_judges_each_version_by_the_day(version: str, day: datetime, state: str) -> None:
    assert versions.status(f"https://graph.facebook.com/{version}", day).state == state


def test_a_retired_version_is_refused_in_one_line_before_any_request(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    registry = make_registry(api_base=on_version(api, "v21.0"), clock=lambda: AFTER_V21)
    with pytest.raises(ConfigError) as refused:
        registry.get_or_upload(make_file("a.png", PNG))
    message = str(refused.value)
    assert message == ("Graph API v21.0 was retired by Meta on 21 January 2027; set WHATSAPP_API_BASE "
                       "to end in /v26.0 (the current version)")
    assert api.count() == 0


def test_cache_hits_never_look_at_the_version(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    png = make_file("a.png", PNG)
    media_id = make_registry(clock=lambda: AFTER_V21).get_or_upload(png)
    retired = make_registry(api_base=on_version(api, "v21.0"), clock=lambda: AFTER_V21)
    assert retired.get_or_upload(png) == media_id
    assert retired.lookup(png) is not None
    assert api.count() == 1


def test_a_version_near_its_end_is_warned_about_once_per_process(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "media_registry.versions")
    for name in ("a.png", "b.png"):
        registry = make_registry(api_base=on_version(api, "v23.0"), clock=lambda: BEFORE_V23_ENDS)
        registry.get_or_upload(make_file(name, PNG))
    assert [record.getMessage() for record in caplog.records] == [
        "Graph API v23.0 stops working on 8 October 2027; set WHATSAPP_API_BASE to end in /v26.0 "
        "(the current version)"]
    assert api.uploads == 2  # the local API serves whatever version it is asked for


@pytest.mark.parametrize("version", ["v26.0", "v99.0"])
def test_a_version_without_an_end_or_newer_than_the_table_is_silent(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    caplog: pytest.LogCaptureFixture, version: str,
) -> None:
    caplog.set_level(logging.DEBUG, "media_registry.versions")
    far = datetime(2031, 1, 1, tzinfo=timezone.utc)
    make_registry(api_base=on_version(api, version), clock=lambda: far).get_or_upload(make_file("a.png", PNG))
    assert caplog.records == [] and api.uploads == 1


@pytest.mark.parametrize("answer", [{"success": True}, {"deleted": True}])
def test_both_delete_answers_count(api: FakeGraphAPI, answer: dict[str, bool]) -> None:
    from media_registry.graph.client import GraphClient

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    with GraphClient(token="t", api_base="https://graph.facebook.com/v26.0",
                     transport=httpx.MockTransport(reply)) as client:
        client.delete("123")  # no error: deleted


def test_a_webhook_media_item_with_the_new_url_field_still_counts() -> None:
    from media_registry.webhooks import media_in_webhook

    image = {"id": "1234567890", "mime_type": "image/jpeg", "sha256": "ab" * 32,
             "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1234567890"}
    payload = {"entry": [{"changes": [{"value": {"metadata": {"phone_number_id": "106540352242922"},
                                                 "messages": [{"from": "1", "id": "wamid.U", "type": "image",
                                                               "image": image}]}}]}]}
    problems: list[str] = []
    (item,) = media_in_webhook(payload, problems.append)
    assert (item.media_id, item.mime_type, problems) == ("1234567890", "image/jpeg", [])
