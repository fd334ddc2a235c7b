"""Lifecycle: refresh before expiry, delete, purge, remote DELETEs and finding sources."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import NamedTuple

from ..content import hashing
from ..content.sources import is_url
from ..errors import ContentDeleted, MediaRegistryError, NotInRegistry, SourceNotFound, SourceUnreadable
from ..models import LifecycleAction, Report
from ..store import MediaRow, SourcePath
from .context import Context, wall_clock
from .effects import Blocking, Flow, Hashing, ask
from .sending import Sending, UploadSource, ids_of, source_name
from .sources import Sourcing, closing_after

OnAction = Callable[[LifecycleAction], None]


class Lifecycle:
    """The rules that keep IDs fresh and clean up what is no longer wanted."""

    def __init__(self, ctx: Context, sending: Sending, sourcing: Sourcing) -> None:
        self.ctx = ctx
        self.sending = sending
        self.sourcing = sourcing

    def expiring_rows(self) -> list[MediaRow]:
        """The current IDs with less than ``refresh_before`` left."""
        return self.ctx.store.expiring_media(self.ctx.cutoffs(self.ctx.clock(), "refresh_before"))

    def overdue(self) -> list[str]:
        """Media IDs that refresh could renew (a source still holds the content) but that have
        less than ``min_validity`` left: refresh is not keeping up."""
        rows = self.ctx.store.expiring_media(self.ctx.cutoffs(self.ctx.clock(), "min_validity"))
        return [row.media_id for row in rows if self.find_source(row.sha256) is not None]

    def refresh_one(self, row: MediaRow, dry_run: bool) -> Flow[LifecycleAction]:
        """Upload one expiring content again from a source file that still holds it, else
        from a URL that still serves it (single flight, so a concurrent refresh or sender
        makes no second upload). Bytes and file objects have no source to read again."""
        found = yield from ask(Hashing(functools.partial(self._check_sources, row.sha256)))
        source: UploadSource | None = found.holding
        if source is None and not self.ctx.stopping.is_set():
            source = yield from self.sourcing.refetch(row.sha256)
        if source is None:
            why = found.unreadable[0] if found.unreadable else "no source file or URL left"
            return LifecycleAction(action="skipped", detail=why, **ids_of(row))
        return (yield from closing_after(source, self._refresh_from(source, row, dry_run)))

    def _refresh_from(self, source: UploadSource, row: MediaRow, dry_run: bool) -> Flow[LifecycleAction]:
        found = ids_of(row)
        if dry_run:
            return LifecycleAction(action="refreshed", detail=f"would upload {source_name(source)}", **found)
        if self.ctx.stopping.is_set():
            return LifecycleAction(action="skipped", detail="stopping", **found)
        try:
            outcome = yield from self.sending.single_flight(
                source, row.sha256, row.phone_number_id, row.mime_type,
                self.ctx.windows(row.phone_number_id).refresh_before, action="refresh",
            )
        except ContentDeleted:  # deletion wins, also over a refresh already running
            return LifecycleAction(action="skipped", detail="content deleted", **found)
        except MediaRegistryError as exc:
            return LifecycleAction(action="failed", detail=str(exc), **found)
        if not outcome.uploaded:
            return LifecycleAction(action="skipped", detail="already refreshed", **found)
        return LifecycleAction(action="refreshed", new_media_id=outcome.media_id, **found)

    def delete_flow(self, target: str | os.PathLike[str]) -> Flow[Report]:
        """Mark a content deleted (never served again), then DELETE its IDs at the API."""
        ctx = self.ctx
        sha256 = yield from ask(Blocking(functools.partial(self.sourcing.resolve, target)))
        # A URL is named without its signature, in errors and in the registry's events.
        shown = self.sourcing.key(os.fspath(target)) if is_url(target) else target
        if sha256 is None:
            raise NotInRegistry(
                f"{shown}: not in the registry; check the path, sha256 or media ID (see: ls)"
            )
        yield from ask(Blocking(functools.partial(ctx.store.mark_deleted, sha256, ctx.clock(), f"delete {shown}")))
        pending = yield from ask(Blocking(functools.partial(ctx.store.claim_deletes, sha256, ctx.lease_for)))
        report = Report()
        for row in pending:
            report.actions.append((yield from self.sending.delete_remotely(row)))
        return report

    def purge_flow(self, dry_run: bool, on_action: OnAction | None) -> Flow[Report]:
        """Forget vanished source files and delete the contents no source holds any more,
        report unreadable ones (left alone), drop expired IDs, retry owed DELETEs."""
        ctx = self.ctx
        report = Report(dry_run=dry_run)
        contents = yield from ask(Blocking(ctx.store.sourced_contents))
        for sha256 in contents:
            found = yield from ask(Hashing(functools.partial(self._check_sources, sha256)))
            if found.holding is not None:
                continue
            if found.unreadable:  # it may still be there: never deleted for that
                for problem in found.unreadable:
                    add(report, LifecycleAction(action="unreadable", sha256=sha256, detail=problem), on_action)
                continue
            add(report, (yield from self._vanish(sha256, list(found.vanished), dry_run)), on_action)
        expired = yield from ask(Blocking(functools.partial(ctx.store.expired_media, ctx.clock())))
        for row in expired:
            add(report, LifecycleAction(action="expired", **ids_of(row)), on_action)
            if not dry_run:
                yield from ask(Blocking(functools.partial(
                    ctx.store.forget_media, row.media_id, ctx.clock(), "expired")))
        # Claimed (on a shared database, another host's purge takes the others), unless only looked at.
        owed = functools.partial(ctx.store.claim_deletes, None, ctx.lease_for)
        pending = yield from ask(Blocking(ctx.store.pending_deletes if dry_run else owed))
        for row in pending:
            if dry_run:
                action = LifecycleAction(action="deleted", detail="would DELETE", **ids_of(row))
            else:
                action = yield from self.sending.delete_remotely(row)
            add(report, action, on_action)
        return report

    def _vanish(self, sha256: str, paths: list[str], dry_run: bool) -> Flow[LifecycleAction]:
        """Forget this host's vanished paths of a content; it is deleted (its IDs DELETEd by
        the owed-DELETE pass) only if no other live host's file or URL still holds it."""
        if dry_run:
            return LifecycleAction(action="vanished", sha256=sha256, detail="all source files here vanished")
        deleted = yield from ask(Blocking(functools.partial(
            self.ctx.store.forget_vanished, sha256, paths, self.ctx.clock())))
        if deleted:
            return LifecycleAction(action="vanished", sha256=sha256, detail="all source files vanished")
        return LifecycleAction(action="skipped", sha256=sha256,
                               detail="its files here vanished; another host's file or a URL still holds it")

    def find_source(self, sha256: str) -> hashing.Fingerprint | None:
        """A recorded source file (of this host) that still holds the content, or None."""
        return self._check_sources(sha256).holding

    def _check_sources(self, sha256: str) -> Sources:
        """This host's recorded source files of a content: the first that still holds it, else
        which cannot be read (SourceUnreadable: they may still hold it) and which are gone (no
        such file, or other bytes now)."""
        unreadable, vanished = [], []
        for recorded in self.ctx.store.source_paths(sha256):
            path = recorded.fingerprint.path
            try:
                holding = self._holding(recorded, sha256)
                if holding is not None:
                    return Sources(holding, (), ())
                vanished.append(path)  # other bytes now: no longer a source of this content
            except SourceNotFound:
                vanished.append(path)
            except SourceUnreadable as exc:
                unreadable.append(str(exc))
            except OSError as exc:  # a read failed midway (EIO): the file is there
                unreadable.append(f"{path}: cannot read the file ({exc.strerror}); check it")
        return Sources(None, tuple(unreadable), tuple(vanished))

    def _holding(self, recorded: SourcePath, sha256: str) -> hashing.Fingerprint | None:
        """The file's fingerprint now if it still holds the content, else None."""
        current = hashing.fingerprint(recorded.fingerprint.path)
        if current == recorded.fingerprint and not hashing.racily_clean(current, recorded.recorded_at):
            return current
        # Touched, copied over or racily recorded: only the bytes can tell.
        with hashing.open_source(current.path) as file:
            if hashing.sha256_file(file) != sha256:
                return None
        self.ctx.store.refresh_fingerprint(current, sha256, wall_clock())
        return current


class Sources(NamedTuple):
    """What :meth:`Lifecycle._check_sources` found of a content's source files."""

    holding: hashing.Fingerprint | None
    unreadable: tuple[str, ...]  # one line each
    vanished: tuple[str, ...]  # paths


def add(report: Report, action: LifecycleAction, on_action: OnAction | None) -> None:
    """Append an action to a report and tell ``on_action`` of it."""
    report.actions.append(action)
    if on_action is not None:
        on_action(action)
