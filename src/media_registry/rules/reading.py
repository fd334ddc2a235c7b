"""Reading: records, lookups and stats (short reads, the same in both registries)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from ..models import MediaEvent, MediaRecord
from ..store import ContentRow
from . import listing
from .context import Context
from .sources import Sourcing


class Reading:
    """What the registry knows, read without changing anything."""

    def __init__(self, ctx: Context, sourcing: Sourcing) -> None:
        self.ctx = ctx
        self.sourcing = sourcing

    def lookup(self, target: str | os.PathLike[str], *, phone_number_id: str | None = None) -> MediaRecord | None:
        """The record for a path, media ID, sha256 or unique sha256 prefix (see
        :meth:`Sourcing.resolve <media_registry.rules.sources.Sourcing.resolve>`), with its
        paths and history, or None.

        Only a path the registry has seen is found; a new file is not hashed here.
        """
        store = self.ctx.store
        sha256 = self.sourcing.resolve(target)
        row = None if sha256 is None else listing.content_row(
            store, sha256, phone_number_id or self.ctx.settings.phone_number_id)
        if row is None:
            return None
        history = tuple(MediaEvent(**event._asdict()) for event in store.events(row.sha256))
        return _record(row, history)

    def records(self, *, expiring_within: timedelta | None = None) -> Iterator[MediaRecord]:
        """Every content with its current media ID per phone number (one record each), yielded
        as the registry reads them: constant memory whatever its size.

        ``expiring_within`` keeps only IDs that expire within that time from now.
        """
        before = self.ctx.clock() + expiring_within if expiring_within is not None else None
        return (_record(row) for row in self.ctx.store.content_rows(expiring_before=before))

    def valid_record(self, sha256: str, *, phone_number_id: str | None = None) -> MediaRecord | None:
        """The record of the media ID that ``get_or_upload`` would serve for this content on
        one number (valid for at least ``min_validity``), or None: no hashing, no network."""
        phone = self.ctx.phone(phone_number_id)
        valid_until = self.ctx.min_valid_until(phone)
        for row in list(self.ctx.store.content_rows(sha256=sha256.lower())):  # a row per number
            if (row.phone_number_id == phone and row.deleted_at is None
                    and row.expires_at is not None and row.expires_at > valid_until):
                return _record(row)
        return None

    def current(self, sha256: str, phone_number_id: str | None = None) -> tuple[str, str, datetime] | None:
        """The media ID that :meth:`valid_record` would name, with the content's MIME type and
        the ID's expiry (what the service answers a lookup with): one indexed read, or the
        local cache's memory."""
        phone = self.ctx.phone(phone_number_id)
        return self.ctx.store.current_media(sha256.lower(), phone, self.ctx.min_valid_until(phone))

    def remembered(self, sha256: str, phone_number_id: str) -> tuple[str, str, datetime] | None:
        """:meth:`current` from the local cache's memory alone, never a read: None when it is
        not there (or the registry keeps no local cache)."""
        memory = self.ctx.store.backend.memory
        if memory is None:
            return None
        return memory.current(sha256.lower(), phone_number_id, self.ctx.min_valid_until(phone_number_id))

    def stats(self) -> dict[str, Any]:
        """Counts of contents, paths and media IDs by state, for health checks, with what
        the store knows of itself (for SQLite: ``db``, ``db_bytes`` with its WAL, and
        ``journal_mode``)."""
        now = self.ctx.clock()
        return listing.counts(self.ctx.store, now, self.ctx.cutoffs(now, "refresh_before"))


def _record(row: ContentRow, history: tuple[MediaEvent, ...] = ()) -> MediaRecord:
    return MediaRecord(
        sha256=row.sha256,
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        phone_number_id=row.phone_number_id,
        media_id=row.media_id,
        uploaded_at=row.uploaded_at,
        expires_at=row.expires_at,
        deleted_at=row.deleted_at,
        state=listing.state(row),
        paths=row.paths,
        history=history,
    )
