"""``media-registry demo``: the main job end to end on a local FakeGraphAPI.

It runs in a registry of its own inside a temporary folder, never the user's, and needs no
Meta account: upload sample media, send them again from the cache, move the clock four weeks
on, and show refresh and purge at work.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import MediaRegistryError
from ..registry import MediaRegistry
from ..testing import FakeGraphAPI, sample_media

SAMPLES = {
    "brochure.pdf": "application/pdf",
    "logo.jpg": "image/png",  # a PNG with a .jpg name: the bytes decide, not the name
    "voice-note.ogg": "audio/ogg",
    "opening-hours.txt": "text/plain",
}
HITS = 10_000


def run_demo() -> Iterator[str]:
    """Run the demo, yielding the lines to print."""
    with tempfile.TemporaryDirectory(prefix="media-registry-demo-") as folder, FakeGraphAPI() as api:
        root = Path(folder)
        for name, mime_type in SAMPLES.items():
            (root / name).write_bytes(sample_media(mime_type, size=20_000, salt=name))
        (root / "animation.gif").write_bytes(b"GIF89a" + bytes(64))
        registry = MediaRegistry(
            db=root / "demo.db", token=api.token, phone_number_id=api.phone_number_id,
            api_base=api.base_url, clock=api.now,
        )
        with registry:
            yield f"Local Graph API at {api.base_url}; registry at {root / 'demo.db'}"
            yield from _first_sends(registry, root, api)
            yield from _cache_hits(registry, root, api)
            yield from _four_weeks_later(registry, root, api)
        sends = len(SAMPLES) + HITS + 2
        yield f"\nDone: {api.uploads} uploads for {sends:,} sends. Next, the command line on your own files:"
        yield "  media-registry fake-api    # a local Graph API; paste the export lines it prints"
        yield "  media-registry upload FILE"


def _first_sends(registry: MediaRegistry, root: Path, api: FakeGraphAPI) -> Iterator[str]:
    yield "\n1. First send of each file: sniffed, checked, hashed, uploaded once."
    for name in [*SAMPLES, "animation.gif"]:
        try:
            outcome = registry.get_or_upload_with_status(root / name)
        except MediaRegistryError as exc:
            yield f"   refused   {str(exc).replace(f'{root}/', '')}"
            continue
        mime_type = api.media[outcome.media_id].mime_type
        yield f"   {outcome.media_id}  uploaded  {name} as {mime_type}"


def _cache_hits(registry: MediaRegistry, root: Path, api: FakeGraphAPI) -> Iterator[str]:
    yield f"\n2. Send the brochure {HITS:,} more times: no upload, no hashing."
    before = api.uploads
    started = time.perf_counter()
    for _ in range(HITS):
        media_id = registry.get_or_upload(root / "brochure.pdf")
    per_call = (time.perf_counter() - started) / HITS * 1e6
    yield f"   {media_id}  cached    {per_call:.0f} µs per call, {api.uploads - before} uploads"
    shutil.copy(root / "brochure.pdf", root / "brochure-copy.pdf")
    copy = registry.get_or_upload_with_status(root / "brochure-copy.pdf")
    yield (f"   {copy.media_id}  {'uploaded' if copy.uploaded else 'cached'}    "
           "brochure-copy.pdf (same bytes, another path: same ID)")


def _four_weeks_later(registry: MediaRegistry, root: Path, api: FakeGraphAPI) -> Iterator[str]:
    api.advance(days=28)
    yield "\n3. 28 days later: media IDs die at 30 days. refresh uploads again what expires within 3 days."
    (root / "voice-note.ogg").unlink()
    for action in registry.refresh_expiring().actions:
        yield f"   {action.describe()}"
    yield f"   now sending logo.jpg uses {registry.get_or_upload(root / 'logo.jpg')}"
    yield "\n4. purge: the voice note's file is gone, so its ID is deleted at the API too."
    for action in registry.purge().actions:
        yield f"   {action.describe()}"
