"""Template header handles: a sample made once per content and app through Meta's Resumable
Upload API, and served from the registry for ``handle_ttl`` (Meta documents no lifetime for a
handle) or until invalidated.

Any source ``get_or_upload`` takes will do; its type is checked from the bytes before any
request (Meta takes PDF, JPEG, PNG and MP4 as a header's sample). One uploader per content
and app at a time, fleet-wide: the others wait for its handle. The upload session it opens is
kept with its claim: a later call (another process, after a crash) resumes it and sends only
the rest. A file the registry has never seen, of a size no handle of the app has, is hashed
while it is sent (read once); its claim is its fingerprint's until its sha256 is known.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from ..content import hashing, media_types, sources
from ..content.hashing import Fingerprint
from ..content.sources import Content
from ..errors import ConfigError, MediaNotFound, NotInRegistry, UnsupportedMedia
from ..graph.transfer import RunningDigest
from ..models import graph_id
from ..store import new_owner
from ..store.handles import Claim, file_key
from .context import Context, wall_clock
from .effects import Blocking, Fetch, Flow, Hashing, OpenSession, SessionOffset, Sleep, Transfer, ask
from .sending import LeaseKeeper
from .sources import Source, Sourcing, closing_after, is_path, read

# What Meta takes as a template header's sample (image, video or document header).
HANDLE_TYPES = ("application/pdf", "image/jpeg", "image/png", "video/mp4")
REFUSED_HANDLE = "Meta refused it"


class _Sample(NamedTuple):
    """The bytes to send: a file (the source's own, or a Content's spool), its type checked,
    and its key: its sha256, or (``fp`` given: hashed while it is sent) its file key."""

    path: str
    key: str
    mime_type: str
    label: str
    size: int
    fp: Fingerprint | None = None


class Handles:
    """The rules of ``get_header_handle`` and ``invalidate_handle``."""

    def __init__(self, ctx: Context, sourcing: Sourcing) -> None:
        self.ctx = ctx
        self.sourcing = sourcing

    def app(self, app_id: str | None) -> str:
        """The app to make handles for: the one given, else ``WHATSAPP_APP_ID``."""
        app = app_id or self.ctx.settings.app_id
        if not app:
            raise ConfigError("no app ID: set WHATSAPP_APP_ID (your Meta app's App ID) or pass app_id=")
        return graph_id(app, "app ID (WHATSAPP_APP_ID)")

    def hit(self, source: Source, app_id: str | None) -> tuple[str, str | None]:
        """The app (``app_id`` or the configured one) and the source's cached handle if the
        fast path finds one (see :meth:`fast_path`)."""
        app = self.app(app_id)
        return app, self.fast_path(source, app)

    def fast_path(self, source: Source, app: str) -> str | None:
        """The cached handle of a known file (unchanged since it was hashed) or of a URL
        checked within ``url_revalidate``: no hashing, no request; else None."""
        now = self.ctx.valid_until(timedelta(0))  # the end of this second: computed once a second
        if is_path(source):
            fp = hashing.fingerprint(source)
            hit = self.ctx.handles.path_hit(fp, app, now)
            return None if hit is None or hashing.racily_clean(fp, hit[1]) else hit[0]
        sha256 = None
        if isinstance(source, str):
            key = self.sourcing.key(source)
            sources.refuse_credentials(source, key)
            known = self.ctx.store.url_source(key)
            if known is not None and self.ctx.clock() < known.checked_at + self.ctx.settings.url_revalidate:
                sha256 = known.sha256
        return None if sha256 is None else self.ctx.handles.valid(sha256, app, now)

    def handle_flow(self, source: Source, app: str) -> Flow[str]:
        """The source's handle for ``app``: from the registry, or made once."""
        if is_path(source):
            sample = yield from ask(Hashing(functools.partial(self._file_sample, Path(source), app)))
            return (yield from self._served_or_made(sample, app))
        if isinstance(source, Content):
            return (yield from self._content(source, app))
        if isinstance(source, str):
            key = self.sourcing.key(source)
            sources.refuse_credentials(source, key)
            content = yield from ask(Fetch(source, None))
            if content is None:  # no validators were sent: a 304 is the server's mistake
                raise NotInRegistry(f"{key}: HTTP 304 to a request without validators; check the server")
        else:
            content = yield from ask(Hashing(functools.partial(read, source)))
        return (yield from closing_after(content, self._content(content, app)))

    def _content(self, content: Content, app: str) -> Flow[str]:
        media_type = yield from ask(Hashing(functools.partial(content.media_type, None)))
        _check_type(content.label, media_type.mime_type)
        handle = yield from ask(Blocking(functools.partial(self.ctx.handles.valid, content.sha256, app,
                                                           self.ctx.clock())))
        if handle is not None:  # no need to spool it to a file
            return str(handle)
        files = content.file()
        path = yield from ask(Hashing(files.__enter__))
        try:
            sample = _Sample(path, content.sha256, media_type.mime_type, content.label, content.size)
            return (yield from self._served_or_made(sample, app))
        finally:
            yield from ask(Blocking(functools.partial(files.__exit__, None, None, None)))

    def _served_or_made(self, sample: _Sample, app: str) -> Flow[str]:
        """Serve a valid handle if one exists or appears while waiting; else claim and make it,
        exactly once across threads, tasks and processes."""
        ctx, handles, owner = self.ctx, self.ctx.handles, new_owner()
        delay, waited = 0.02, False
        if sample.fp is None:  # a read: the claim below is a write
            known = yield from ask(Blocking(functools.partial(handles.valid, sample.key, app, ctx.clock())))
            if known is not None:
                return str(known)

        def release_if_taken(outcome: tuple[Claim, str | None]) -> None:
            if outcome[0] is Claim.ACQUIRED:
                handles.release(sample.key, app, owner)

        while True:
            now = ctx.clock()
            claim, found = yield from ask(Blocking(functools.partial(
                handles.claim, sample.key, app, owner, now, now + ctx.lease_for, sample.size),
                undo=release_if_taken))
            if claim is Claim.ACQUIRED and not (waited and found is None and sample.fp is not None):
                return (yield from self._make(sample, app, owner, found))
            if claim is Claim.SERVE and sample.fp is None:
                return str(found)
            if claim is not Claim.WAIT:  # a file another caller made (or failed to start)
                return (yield from self._by_sha256(sample, app, owner if claim is Claim.ACQUIRED else None))
            waited = True
            yield from ask(Sleep(delay))  # another thread, task or process is making it
            delay = min(delay * 1.5, 0.25)

    def _by_sha256(self, sample: _Sample, app: str, owner: str | None) -> Flow[str]:
        """A file that another caller made a handle of (or failed before opening a session),
        served by its sha256 as any known content: ``owner``'s claim of it is given up."""
        if owner is not None:
            yield from ask(Blocking(functools.partial(self.ctx.handles.release, sample.key, app, owner)))
        assert sample.fp is not None  # only a file key's claim comes here
        hashed = yield from ask(Hashing(functools.partial(self._hashed, sample, sample.fp)))
        return (yield from self._served_or_made(hashed, app))

    def _make(self, sample: _Sample, app: str, owner: str, session: str | None) -> Flow[str]:
        """Make the handle: resume ``session`` (a former claimer's) if Meta still knows it,
        else open one (kept with the claim); send the rest; record the handle."""
        ctx, handles = self.ctx, self.ctx.handles
        keeper = LeaseKeeper(ctx, functools.partial(handles.renew, sample.key, app, owner))
        digest = RunningDigest() if sample.fp is not None else None
        try:
            try:
                offset = None if session is None else (yield from ask(SessionOffset(session, sample.size)))
                if session is None or offset is None:
                    offset = 0
                    session = yield from ask(OpenSession(sample.path, sample.mime_type, app))
                    yield from ask(Blocking(functools.partial(handles.keep_session, sample.key, app, owner,
                                                              session)))
                handle = yield from ask(Transfer(session, sample.path, offset, sample.size, digest))
            except MediaNotFound as exc:  # code 100/33 opening a session: the app is unknown
                raise ConfigError(f"app ID {app}: the Graph API does not know it for this token (code "
                                  f"{exc.code}, subcode {exc.subcode}); check WHATSAPP_APP_ID or pass "
                                  "app_id=") from None
            yield from ask(Blocking(functools.partial(self._record, sample, app, handle, digest)))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our claim
            keeper.stop()
            yield from ask(Blocking(functools.partial(handles.release, sample.key, app, owner)))
            raise
        keeper.stop()
        return handle

    def _record(self, sample: _Sample, app: str, handle: str, digest: RunningDigest | None) -> None:
        now = self.ctx.clock()
        expires = now + self.ctx.settings.handle_ttl
        if sample.fp is None or digest is None:
            self.ctx.handles.record(sample.key, app, handle, now, expires, sample.label)
            return
        hashing.ensure_unchanged(sample.fp)  # the bytes hashed as they were sent are the file's
        sha256 = digest.hexdigest()
        self.ctx.store.remember_path(sample.fp, sha256, sample.mime_type, wall_clock())
        self.ctx.handles.record_new(sample.key, sha256, app, handle, now, expires, sample.size, sample.label)

    def _file_sample(self, path: Path, app: str) -> _Sample:
        """A file's type (checked before any request) and its key: the sha256 the registry
        knows for its fingerprint; else, when a handle of the app may hold the same bytes (one
        of its size), its sha256, hashed now (its fingerprint recorded, so that the next
        request is answered without reading it: :meth:`fast_path`); else its file key."""
        fp = hashing.fingerprint(path)
        with hashing.open_source(path) as file:
            head = file.read(media_types.SNIFF_BYTES)
        mime_type = media_types.check(path, head, fp.size).mime_type
        _check_type(str(path), mime_type)
        sample = _Sample(str(path), file_key(fp), mime_type, fp.path, fp.size, fp)
        known = self.ctx.store.lookup_path(fp, "", self.ctx.clock())
        if known is not None and not hashing.racily_clean(fp, known.recorded_at):
            return sample._replace(key=known.sha256, fp=None)
        if self.ctx.handles.same_size(app, fp.size, self.ctx.clock()):
            return self._hashed(sample, fp)
        return sample

    def _hashed(self, sample: _Sample, fp: Fingerprint) -> _Sample:
        """``sample`` (the file of ``fp``) keyed by its sha256, hashed now; its fingerprint is
        recorded."""
        with hashing.open_source(sample.path) as file:
            sha256 = hashing.sha256_file(file)
        hashing.ensure_unchanged(fp)
        self.ctx.store.remember_path(fp, sha256, sample.mime_type, wall_clock())
        return sample._replace(key=sha256, fp=None)

    def invalidate_flow(self, handle: str, reason: str) -> Flow[None]:
        """Never serve ``handle`` again (Meta refused it); the next request makes a new one."""
        found = yield from ask(Blocking(functools.partial(self.ctx.handles.invalidate, handle,
                                                          self.ctx.clock(), reason)))
        if not found:
            raise NotInRegistry(f"header handle {handle[:40]!r}: not in the registry; check it")


def _check_type(label: str, mime_type: str) -> None:
    if mime_type not in HANDLE_TYPES:
        raise UnsupportedMedia(f"{label}: a template header sample must be a PDF, JPEG, PNG or MP4 "
                               f"(Meta's types), not {mime_type}; convert it first")


