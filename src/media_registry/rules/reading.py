"""Reading: records, lookups and stats (short reads, the same in both registries)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from ..models import MediaEvent, MediaRecord
from ..store import ContentRow
from ..store.inbox import Inbox
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
        if sha256 is None:
            return None
        rows = list(store.content_rows(sha256=sha256))
        if not rows:
            return None
        wanted = phone_number_id or self.ctx.settings.phone_number_id
        row = next((r for r in rows if r.phone_number_id == wanted), rows[0])
        history = tuple(MediaEvent(**event._asdict()) for event in store.events(sha256))
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

    def stats(self) -> dict[str, Any]:
        """Counts of contents, paths and media IDs by state, for health checks, with what
        the store knows of itself (for SQLite: ``db``, ``db_bytes`` with its WAL, and
        ``journal_mode``)."""
        now = self.ctx.clock()
        stats = self.ctx.store.stats(now, self.ctx.cutoffs(now, "refresh_before"))
        counts: dict[str, Any] = stats._asdict()
        counts["by_phone_number"] = {phone: numbers._asdict() for phone, numbers in stats.by_phone_number.items()}
        inbound = Inbox(self.ctx.store.backend).counts().by_state
        counts.update({f"inbound_{state}": number for state, number in inbound.items()})
        counts.update(counts.pop("backend"))
        return counts


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
        state="deleted" if row.deleted_at else "current" if row.media_id else "unsent",
        paths=row.paths,
        history=history,
    )
