"""The read commands ``ls``, ``show`` and ``stats``, started as lean as a cached upload.

They need the store and three settings (the registry file, the phone number ID, the
refresh window), so on a registry file whose settings the standard library can read (see
:mod:`._quick`, which refuses a bad value in the full settings' words) they open the store
alone: no pydantic, no httpx. Any other case (a PostgreSQL URL, a value only the full
settings read, a URL to ``show``) opens the full registry; both print the same, from the
store's rows.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from .. import defaults
from .._tuples import NamedTuple
from ..rules import listing
from ..store import ContentRow, Cutoffs, EventRow, Store, open_store
from . import _quick
from .console import error, is_url_arg, print_json, printable, size, when

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from ..store.listing import ListedRow


class Reader(NamedTuple):
    """A registry opened for reading: its store, and what the read commands take from its settings."""

    store: Store
    phone_number_id: str | None
    expiring_before: Callable[[datetime], Cutoffs]  # where "expiring" ends, from a moment
    resolve: Callable[[str], str | None]  # the sha256 a target names
    shown: Callable[[str], str]  # how a target is printed


@contextmanager
def reading(args: argparse.Namespace, *, lean: bool = True) -> Iterator[Reader]:
    """The registry of ``args`` opened for reading (never created), lean where it can be."""
    settings = lean_settings(os.environ, args.db) if lean else None
    if settings is None:
        from .commands import open_registry, shown_as

        with open_registry(args, create=False) as reg:
            yield Reader(reg.store, reg.settings.phone_number_id,
                         lambda now: reg.ctx.cutoffs(now, "refresh_before"),
                         reg.sourcing.resolve, lambda target: shown_as(reg, target))
        return
    db, phone, refresh_before, busy_timeout = settings
    store = open_store(db, create=False, busy_timeout=busy_timeout)
    try:
        yield Reader(store, phone, lambda now: Cutoffs(now + refresh_before),
                     lambda target: listing.stored_name(store, target), str)
    finally:
        store.close()


def lean_settings(environ: dict[str, str] | os._Environ[str],
                  db: str | None) -> tuple[str, str | None, timedelta, float] | None:
    """The registry file, phone number ID, refresh window and busy timeout, read with the
    standard library; None where the full settings must read them (ConfigError, in their
    words, for a value they refuse)."""
    given = _quick.given_settings(environ, db)
    values = None if given is None else _quick.read_settings(given)
    if given is None or values is None or "ttl_by_phone_number" in values:
        return None  # a number's own window is JSON, which the full settings read
    phone = values.get("phone_number_id")
    assert phone is None or isinstance(phone, str)
    return (given.get("MEDIA_REGISTRY_DB", defaults.DB), phone, _quick.duration(values, "refresh_before"),
            _quick.busy_timeout(values))


# The listing streams, so its columns cannot be fitted to all the rows: these widths fit
# the usual values, and a longer one only shifts the rest of its own row.
LS_COLUMNS = {"PHONE NUMBER": 15, "SHA256": 12, "MEDIA ID": 16, "STATE": 7, "SIZE": 8,
              "UPLOADED (UTC)": 16, "EXPIRES (UTC)": 16, "TYPE": 15, "PATHS": 0}


def ls(args: argparse.Namespace) -> int:
    """``ls``: every content with its current media ID per number, printed as it is read."""
    within = timedelta(days=args.expiring) if args.expiring is not None else None
    with reading(args) as reader:
        before = None if within is None else datetime.now(timezone.utc) + within
        listed = _json_lines(reader.store, before) if args.json else _table(reader.store, before)
    if not listed:
        print(f"no media ID expires within {args.expiring:g} days" if within is not None
              else "the registry is empty; add files with: media-registry upload FILE", file=sys.stderr)
    return 0


def _table(store: Store, before: datetime | None) -> int:
    """The listing as a table; how many rows it printed."""
    listed = 0
    for row in store.content_rows(expiring_before=before):
        if not listed:
            _print_row(tuple(LS_COLUMNS))
        _print_row((row.phone_number_id or "-", row.sha256[:12], row.media_id or "-", listing.state(row),
                    size(row.size_bytes), when(row.uploaded_at), when(row.expires_at), row.mime_type,
                    ", ".join(row.paths) or "-"))
        listed += 1
    return listed


def _json_lines(store: Store, before: datetime | None, chunk: int = 4096) -> int:
    """The listing as JSON lines, written ``chunk`` lines at a time; how many it wrote."""
    from ..store.listing import listed_rows  # only for --json: the table starts without it

    listed, lines, write = 0, [], sys.stdout.write
    for row in listed_rows(store, expiring_before=before):
        lines.append(json_line(row))
        if len(lines) == chunk:
            write("".join(lines))
            listed, lines = listed + chunk, []
    write("".join(lines))
    return listed + len(lines)


def record_fields(row: ContentRow, history: Sequence[EventRow] | None = None) -> dict[str, Any]:
    """A content's row as the JSON of its :class:`~media_registry.models.MediaRecord`
    (the same keys, in the same order; ``history`` only when given)."""
    fields = {"sha256": row.sha256, "mime_type": row.mime_type, "size_bytes": row.size_bytes,
              "phone_number_id": row.phone_number_id, "media_id": row.media_id,
              "uploaded_at": row.uploaded_at, "expires_at": row.expires_at, "deleted_at": row.deleted_at,
              "state": listing.state(row), "paths": row.paths}
    if history is not None:
        fields["history"] = [event._asdict() for event in history]
    return fields


def json_line(row: ListedRow) -> str:
    """The line ``print_json`` prints for the row's record, written out directly: the listing
    is the one output whose size grows with the registry."""
    q = _quote()
    sha256, mime_type, size_bytes, phone, media_id, uploaded, expires, deleted, paths = row
    state = "deleted" if deleted else "current" if media_id else "unsent"  # as listing.state
    return (f'{{"sha256": {q(sha256)}, "mime_type": {q(mime_type)}, "size_bytes": {size_bytes}, '
            f'"phone_number_id": {"null" if phone is None else q(phone)}, '
            f'"media_id": {"null" if media_id is None else q(media_id)}, '
            f'"uploaded_at": {"null" if uploaded is None else q(uploaded)}, '
            f'"expires_at": {"null" if expires is None else q(expires)}, '
            f'"deleted_at": {"null" if deleted is None else q(deleted)}, "state": "{state}", "paths": {paths}}}\n')


@functools.cache
def _quote() -> Callable[[str], str]:
    from json.encoder import encode_basestring  # only for --json: the table starts without it

    return encode_basestring


def _print_row(cells: Sequence[str]) -> None:
    print("  ".join(printable(cell).ljust(width) for cell, width in zip(cells, LS_COLUMNS.values())).rstrip())


def show(args: argparse.Namespace) -> int:
    """``show``: one content with its paths and history."""
    with reading(args, lean=not is_url_arg(args.target)) as reader:  # a URL's key needs httpx
        sha256, shown = reader.resolve(args.target), reader.shown(args.target)
        row = None if sha256 is None else listing.content_row(reader.store, sha256, reader.phone_number_id)
        history = [] if row is None else reader.store.events(row.sha256)
    if row is None:
        error(f"{shown}: not in the registry; upload it first, or check the path, "
              "media ID or sha256 (see: media-registry ls)")
        return 1
    if args.json:
        print_json(record_fields(row, history))
        return 0
    _print_record(row, history)
    return 0


def _print_record(row: ContentRow, history: Sequence[EventRow]) -> None:
    fields = {
        "sha256": row.sha256,
        "type": row.mime_type,
        "size": size(row.size_bytes),
        "phone number": row.phone_number_id or "-",
        "media ID": row.media_id or "-",
        "uploaded": when(row.uploaded_at),
        "expires": when(row.expires_at),
        "deleted": when(row.deleted_at),
        "state": listing.state(row),
    }
    for name, value in fields.items():
        print(f"{name + ':':14}{printable(value)}")
    for path in row.paths:
        print(f"{'path:':14}{printable(path)}")
    print("history:")
    for event in history:
        parts = [when(event.at), event.action, event.media_id, event.path, event.detail]
        print("  " + "  ".join(printable(p) for p in parts if p))


def stats(args: argparse.Namespace) -> int:
    """``stats``: counts and health of the registry."""
    with reading(args) as reader:
        now = datetime.now(timezone.utc)
        counts = listing.counts(reader.store, now, reader.expiring_before(now))
    if args.json:
        print_json(counts)
    else:
        by_phone = counts.pop("by_phone_number")
        for name, value in counts.items():
            print(f"{name + ':':18}{value}")
        for phone, numbers in by_phone.items():
            print(f"number {phone}: {numbers['live_ids']} live, {numbers['expiring_ids']} expiring")
    return 0


# The read commands, by the name the command line gives them.
READS: dict[str, Callable[[argparse.Namespace], int]] = {"ls": ls, "show": show, "stats": stats}
