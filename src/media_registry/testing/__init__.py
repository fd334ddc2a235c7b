"""Test helpers for media-registry: a local Graph API and sample media.

:class:`FakeGraphAPI` is a real local HTTP server that behaves like the Graph API's media
endpoints; :func:`sample_media` makes bytes of each supported type. The ``fake_graph_api``
pytest fixture is registered by :mod:`media_registry.testing.plugin`, which alone imports pytest.
"""

from .fake_api import FakeGraphAPI
from .records import Fault, Received, StoredMedia
from .samples import SAMPLE_HEADS, sample_media

__all__ = ["SAMPLE_HEADS", "FakeGraphAPI", "Fault", "Received", "StoredMedia", "sample_media"]
