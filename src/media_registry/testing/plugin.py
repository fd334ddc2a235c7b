"""The pytest fixtures for senders' tests, registered through the ``pytest11`` entry point:
``fake_graph_api`` (a running local Graph API) and ``media_registry`` (a registry on a
temporary database, wired to it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .fake_api import FakeGraphAPI

if TYPE_CHECKING:
    from ..registry import MediaRegistry


@pytest.fixture
def fake_graph_api() -> Iterator[FakeGraphAPI]:
    """A running :class:`~media_registry.testing.FakeGraphAPI`, stopped after the test."""
    with FakeGraphAPI() as api:
        yield api


@pytest.fixture
def media_registry(fake_graph_api: FakeGraphAPI, tmp_path: Path) -> Iterator[MediaRegistry]:
    """A :class:`~media_registry.MediaRegistry` on a fresh SQLite file in the test's temporary
    folder, sending to ``fake_graph_api`` with its token and phone number; closed after the test."""
    from ..registry import MediaRegistry  # pytest loads this plugin everywhere: the registry only when used

    with MediaRegistry(tmp_path / "media-registry.db", token=fake_graph_api.token,
                       phone_number_id=fake_graph_api.phone_number_id,
                       api_base=fake_graph_api.base_url) as registry:
        yield registry
