"""The listing as text, for ``ls --json``: each row as the backend reads it, its times and
paths already in the form a JSON line prints, with no datetime or tuple made per row.

The rows and their order are :meth:`Store.content_rows <media_registry.store.core.Store.content_rows>`'s
(one statement, one snapshot, in constant memory); only their values' form differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple

from .backend import Backend, utc_text
from .core import Store


class ListedRow(NamedTuple):
    """A content's row for one number as text: times UTC ISO-8601 ending in ``Z`` (or None),
    ``paths`` a JSON array with ``", "`` between its strings (as Python's ``json`` writes it)."""

    sha256: str
    mime_type: str
    size_bytes: int
    phone_number_id: str | None
    media_id: str | None
    uploaded_at: str | None
    expires_at: str | None
    deleted_at: str | None
    paths: str


def listed_rows(store: Store, *, expiring_before: datetime | None = None) -> Iterator[ListedRow]:
    """Every content per phone number, as :meth:`Store.content_rows` lists them, in text."""
    backend = store.backend
    params = {**backend.scope, "sha256": None,
              "before": None if expiring_before is None else backend.when(expiring_before)}

    def text(value: Any) -> str | None:
        # SQLite's stored text is already the printed form; PostgreSQL's is a datetime.
        if value is None or (value.__class__ is str and len(value) == 20 and value[-1] == "Z"):
            return value
        return utc_text(backend.time(value))

    for (sha256, mime_type, size_bytes, _, deleted_at, phone_number_id, media_id, uploaded_at, expires_at,
         paths) in backend.stream(store.listing_sql(expiring=expiring_before is not None), params):
        # SQLite's JSON array with nothing escaped is Python's but for the separators: its
        # strings are the paths as written, and '","' occurs only between two of them (a
        # quote inside a path would be escaped).
        yield ListedRow(sha256, mime_type, size_bytes, phone_number_id, media_id, text(uploaded_at),
                        text(expires_at), deleted_at and text(deleted_at),
                        paths.replace('","', '", "') if paths.__class__ is str and "\\" not in paths
                        else _json_paths(backend, paths))


def _json_paths(backend: Backend, value: Any) -> str:
    """The ``{path_list}`` column as Python's ``json`` writes the list."""
    from json.encoder import encode_basestring  # what json writes for a str with ensure_ascii=False

    return "[" + ", ".join(encode_basestring(path) for path in backend.paths(value)) + "]"
