"""Reading: records, lookups and stats (short reads, the same in both registries)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from ._core import RegistryCore
from ._legacy_store import iso, parse_iso
from .models import MediaEvent, MediaRecord


class Reading(RegistryCore):
    """What the registry knows, read without changing anything."""

    def lookup(self, target: str | os.PathLike[str], *, phone_number_id: str | None = None) -> MediaRecord | None:
        """The record for a path, sha256 or media ID, with its paths and history, or None.

        Only a path the registry has seen is found; a new file is not hashed here.
        """
        sha256 = self.store.resolve(os.fspath(target))
        if sha256 is None:
            return None
        rows = self.store.content_rows(sha256)
        wanted = phone_number_id or self.settings.phone_number_id
        row = next((r for r in rows if r["phone_number_id"] == wanted), rows[0])
        history = tuple(MediaEvent(**event) for event in self.store.events(sha256))
        return _record(row, history)

    def records(self, *, expiring_within: timedelta | None = None) -> list[MediaRecord]:
        """Every content with its current media ID per phone number (one record each).

        ``expiring_within`` keeps only IDs that expire within that time from now.
        """
        before = iso(self._clock() + expiring_within) if expiring_within is not None else None
        return [_record(row) for row in self.store.content_rows(expiring_before=before)]

    def stats(self) -> dict[str, Any]:
        """Counts of contents, paths and media IDs by state, for health checks."""
        now, before = iso(self._clock()), iso(self._clock() + self.settings.refresh_before)
        counts: dict[str, Any] = self.store.stats(now, before)
        counts["by_phone_number"] = self.store.stats_by_phone_number(now, before)
        counts["db"] = str(self.settings.db)
        counts["db_bytes"] = sum(
            p.stat().st_size for p in self.settings.db.parent.glob(self.settings.db.name + "*")
        )
        return counts


def _record(row: dict[str, Any], history: tuple[MediaEvent, ...] = ()) -> MediaRecord:
    return MediaRecord(
        sha256=row["sha256"],
        mime_type=row["mime_type"],
        size_bytes=row["size_bytes"],
        phone_number_id=row["phone_number_id"],
        media_id=row["media_id"],
        uploaded_at=parse_iso(row["uploaded_at"]),
        expires_at=parse_iso(row["expires_at"]),
        deleted_at=parse_iso(row["deleted_at"]),
        paths=tuple(row["paths"].split("\n")) if row["paths"] else (),
        history=history,
    )
