"""The ``fake_graph_api`` pytest fixture, registered through the ``pytest11`` entry point."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_api import FakeGraphAPI


@pytest.fixture
def fake_graph_api() -> Iterator[FakeGraphAPI]:
    """A running :class:`~media_registry.testing.FakeGraphAPI`, stopped after the test."""
    with FakeGraphAPI() as api:
        yield api
