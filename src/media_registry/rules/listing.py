"""What the read commands show, over the store alone: a content's state, the row of a
content for one number, a name's sha256, and the registry's counts.

Both registries build their records from these, and the command line's ``ls``, ``show``
and ``stats`` call them directly, so this module imports nothing beyond the store: those
commands start without the full settings, pydantic or httpx.
"""

from __future__ import annotations

import os
from datetime import datetime

from ..errors import InputError
from ..store import ContentRow, Cutoffs, Store

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any

HEX = frozenset("0123456789abcdefABCDEF")


def state(row: ContentRow) -> str:
    """``deleted`` (forgotten), ``current`` (it has a media ID for its number) or ``unsent``."""
    return "deleted" if row.deleted_at else "current" if row.media_id else "unsent"


def content_row(store: Store, sha256: str, phone_number_id: str | None) -> ContentRow | None:
    """A content's row for ``phone_number_id`` (else its first row), or None if unknown."""
    rows = list(store.content_rows(sha256=sha256))
    if not rows:
        return None
    return next((row for row in rows if row.phone_number_id == phone_number_id), rows[0])


def stored_name(store: Store, target: str | os.PathLike[str]) -> str | None:
    """The sha256 that a path the registry has seen, an exact media ID, an exact sha256 or a
    unique sha256 prefix of at least 8 hex digits names, tried in that order, or None. An
    ambiguous prefix raises InputError listing the candidates."""
    text = os.fspath(target)
    sha256 = store.resolve(text)
    if sha256 is not None or len(text) < 8 or not HEX.issuperset(text):
        return sha256
    candidates = store.sha256s_starting_with(text.lower(), limit=4)
    if len(candidates) > 1:
        listed = ", ".join(candidates[:3]) + (", ..." if len(candidates) > 3 else "")
        raise InputError(f"{text}: more than one content's sha256 starts with it ({listed}); "
                         "give more digits")
    return candidates[0] if candidates else None


def counts(store: Store, now: datetime, expiring_before: Cutoffs) -> dict[str, Any]:
    """Counts of contents, paths and media IDs by state, per phone number, with what the
    store knows of itself (see :meth:`Reading.stats <media_registry.rules.reading.Reading.stats>`)."""
    from ..store.inbox import Inbox  # stats alone: ls and show start without it

    stats = store.stats(now, expiring_before)
    found: dict[str, Any] = stats._asdict()
    found["by_phone_number"] = {phone: numbers._asdict() for phone, numbers in stats.by_phone_number.items()}
    inbound = Inbox(store.backend).counts().by_state
    found.update({f"inbound_{state}": number for state, number in inbound.items()})
    found.update(found.pop("backend"))
    return found
