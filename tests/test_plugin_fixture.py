"""The ``media_registry`` fixture the plugin gives senders' tests, used exactly as the Python
guide (docs/python-guide.md) shows it; the guide's example is this file's test, kept equal by
the last test here."""

from __future__ import annotations

from pathlib import Path

import httpx

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media


def send_card(registry: MediaRegistry, card: bytes, to: str) -> httpx.Response:
    """The sender under test: the card's media ID, then the message."""
    settings = registry.settings
    token = settings.token.get_secret_value() if settings.token else ""
    return registry.send_with_media(card, lambda media_id: httpx.post(
        f"{settings.api_base}/{settings.phone_number_id}/messages",
        headers={"Authorization": f"Bearer {token}"},
        json={"messaging_product": "whatsapp", "to": to, "type": "image", "image": {"id": media_id}},
    ))


def test_a_card_is_uploaded_once_and_survives_a_dead_id(
    media_registry: MediaRegistry, fake_graph_api: FakeGraphAPI
) -> None:
    card = sample_media("image/png", salt="card")
    assert send_card(media_registry, card, "16505551234").status_code == 200
    assert send_card(media_registry, card, "16505551234").status_code == 200
    assert fake_graph_api.uploads == 1

    fake_graph_api.kill_media(media_registry.get_or_upload(card))
    assert send_card(media_registry, card, "16505551234").status_code == 200
    assert fake_graph_api.uploads == 2
    assert len(fake_graph_api.sent_messages()) == 3


def test_the_guide_shows_this_example() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "python-guide.md").read_text()
    source = Path(__file__).read_text()
    example = guide.split("```python\n")[-1].split("```")[0]
    assert example.strip() in source
