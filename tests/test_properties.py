"""Property tests: any sequence of sends, refreshes, deletes (also racing a refresh whose
uploads are in flight), purges, file changes and clock moves keeps the registry's invariants."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db

FILES = 3


class RegistryLife(RuleBasedStateMachine):
    """A registry and its sources, driven by random operations on the fake API's clock."""

    api: FakeGraphAPI

    def __init__(self) -> None:
        super().__init__()
        self.api.reset()  # one server for all examples: each starts from a clean slate
        self.folder = Path(tempfile.mkdtemp(prefix="media-registry-property-"))
        self.registry = MediaRegistry(
            db=self.folder / "r.db", token=self.api.token, phone_number_id=self.api.phone_number_id,
            api_base=self.api.base_url, clock=self.api.now, max_retries=0,
        )
        self.version = [0] * FILES
        self.deleted: set[str] = set()  # contents deleted and not sent explicitly since
        for index in range(FILES):
            self._write(index)

    def _path(self, index: int) -> Path:
        return self.folder / f"file-{index}.pdf"

    def _write(self, index: int) -> None:
        self.version[index] += 1
        self._path(index).write_bytes(
            sample_media("application/pdf", salt=f"{index}-{self.version[index] % 2}"))

    def _sha(self, index: int) -> str | None:
        record = self.registry.lookup(self._path(index))
        return record.sha256 if record else None

    @rule(index=st.integers(0, FILES - 1))
    def send(self, index: int) -> None:
        if not self._path(index).exists():
            self._write(index)
        media_id = self.registry.get_or_upload(self._path(index))
        stored = self.api.media[media_id]
        expires = stored.uploaded_at + self.api.ttl
        # Never a dead ID, nor one that dies within min_validity.
        assert expires > self.api.now() + self.registry.settings.min_validity
        assert not stored.deleted
        self.deleted.discard(self._sha(index))

    @rule()
    def refresh(self) -> None:
        report = self.registry.refresh_expiring()
        refreshed = {a.sha256 for a in report.actions if a.action == "refreshed"}
        assert not refreshed & self.deleted, "refresh uploaded deleted content again"

    @precondition(lambda self: any(self._path(i).exists() for i in range(FILES)))
    @rule(index=st.integers(0, FILES - 1))
    def delete(self, index: int) -> None:
        sha256 = self._sha(index)
        if sha256 is not None:
            self.registry.delete(self._path(index))
            self.deleted.add(sha256)

    @precondition(lambda self: any(self._path(i).exists() for i in range(FILES)))
    @rule(index=st.integers(0, FILES - 1))
    def delete_during_refresh(self, index: int) -> None:
        """A refresh (in another thread) has its uploads in flight when the delete comes."""
        sha256 = self._sha(index)
        if sha256 is None:
            return
        self.api.advance(days=28)  # every current ID is due for refresh
        hold = self.api.fail(delay=0.2, method="POST", times=FILES)
        posts = self.api.count("POST")
        refresh = threading.Thread(target=self.registry.refresh_expiring)
        refresh.start()
        while self.api.count("POST") == posts and refresh.is_alive():
            time.sleep(0.01)
        self.registry.delete(self._path(index))
        refresh.join()
        hold.delay = 0.0
        self.deleted.add(sha256)

    @rule()
    def purge(self) -> None:
        self.registry.purge()

    @rule(index=st.integers(0, FILES - 1))
    def remove_source(self, index: int) -> None:
        self._path(index).unlink(missing_ok=True)

    @rule(index=st.integers(0, FILES - 1))
    def edit_source(self, index: int) -> None:
        self._write(index)

    @rule(hours=st.integers(1, 24 * 12))
    def time_passes(self, hours: int) -> None:
        self.api.advance(hours=hours)

    @invariant()
    def at_most_one_current_id_per_content_and_number(self) -> None:
        db = self.registry.settings.db
        registry_db.check_consistent(db)
        assert registry_db.count(db, "leases") == 0

    @invariant()
    def deleted_content_is_never_current(self) -> None:
        db = self.registry.settings.db
        for sha256 in self.deleted:
            assert registry_db.count(db, "media", "sha256 = ? AND state = 'current'", sha256) == 0

    @invariant()
    def every_live_id_at_the_api_is_known(self) -> None:
        known = {media_id for media_id, _ in registry_db.media_states(self.registry.settings.db)}
        live = {media_id for media_id in list(self.api.media) if self.api.live(media_id)}
        assert live <= known, f"live at the API, unknown to the registry: {live - known}"

    def teardown(self) -> None:
        self.registry.close()
        shutil.rmtree(self.folder)


def test_registry_invariants_hold_over_random_lives() -> None:
    with FakeGraphAPI(ttl=timedelta(days=30)) as api:
        RegistryLife.api = api
        run_state_machine_as_test(
            RegistryLife, settings=settings(max_examples=25, stateful_step_count=30, deadline=None),
        )
