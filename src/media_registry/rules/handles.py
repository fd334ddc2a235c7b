"""Template header handles: a sample made once per content and app through Meta's Resumable
Upload API, and served from the registry for ``handle_ttl`` (Meta documents no lifetime for a
handle) or until invalidated.

Any source ``get_or_upload`` takes will do; its type is checked from the bytes before any
request (Meta takes PDF, JPEG, PNG and MP4 as a header's sample). One uploader per content
and app at a time, fleet-wide: the others wait for its handle.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from ..content import hashing, media_types, sources
from ..content.sources import Content
from ..errors import ConfigError, MediaNotFound, NotInRegistry, UnsupportedMedia
from ..models import graph_id
from ..store import new_owner
from ..store.handles import Claim
from .context import Context, wall_clock
from .effects import Blocking, Fetch, Flow, Hashing, HeaderHandle, Sleep, ask
from .sending import LeaseKeeper
from .sources import Source, Sourcing, closing_after, is_path, read

# What Meta takes as a template header's sample (image, video or document header).
HANDLE_TYPES = ("application/pdf", "image/jpeg", "image/png", "video/mp4")
REFUSED_HANDLE = "Meta refused it"


class _Sample(NamedTuple):
    """The bytes to send: a file (the source's own, or a Content's spool), checked and hashed."""

    path: str
    sha256: str
    mime_type: str
    label: str


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
            sample = yield from ask(Hashing(functools.partial(self._file_sample, Path(source))))
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
            sample = _Sample(path, content.sha256, media_type.mime_type, content.label)
            return (yield from self._served_or_made(sample, app))
        finally:
            yield from ask(Blocking(functools.partial(files.__exit__, None, None, None)))

    def _served_or_made(self, sample: _Sample, app: str) -> Flow[str]:
        """Serve a valid handle if one exists or appears while waiting; else claim and make it,
        exactly once across threads, tasks and processes."""
        ctx, handles, owner = self.ctx, self.ctx.handles, new_owner()
        delay = 0.02
        known = yield from ask(Blocking(functools.partial(handles.valid, sample.sha256, app, ctx.clock())))
        if known is not None:  # a read: the claim below is a write
            return str(known)

        def release_if_taken(outcome: tuple[Claim, str | None]) -> None:
            if outcome[0] is Claim.ACQUIRED:
                handles.release(sample.sha256, app, owner)

        while True:
            now = ctx.clock()
            claim, handle = yield from ask(Blocking(functools.partial(
                handles.claim, sample.sha256, app, owner, now, now + ctx.lease_for), undo=release_if_taken))
            if handle is not None:
                return handle
            if claim is Claim.ACQUIRED:
                return (yield from self._make(sample, app, owner))
            yield from ask(Sleep(delay))  # another thread, task or process is making it
            delay = min(delay * 1.5, 0.25)

    def _make(self, sample: _Sample, app: str, owner: str) -> Flow[str]:
        ctx, handles = self.ctx, self.ctx.handles
        keeper = LeaseKeeper(ctx, functools.partial(handles.renew, sample.sha256, app, owner))
        try:
            try:
                handle = yield from ask(HeaderHandle(sample.path, sample.mime_type, app))
            except MediaNotFound as exc:  # code 100/33 opening a session: the app is unknown
                raise ConfigError(f"app ID {app}: the Graph API does not know it for this token (code "
                                  f"{exc.code}, subcode {exc.subcode}); check WHATSAPP_APP_ID or pass "
                                  "app_id=") from None
            now = ctx.clock()
            yield from ask(Blocking(functools.partial(
                handles.record, sample.sha256, app, handle, now, now + ctx.settings.handle_ttl, sample.label)))
        except BaseException:  # errors, cancellation, Ctrl-C: nobody may wait on our claim
            keeper.stop()
            yield from ask(Blocking(functools.partial(handles.release, sample.sha256, app, owner)))
            raise
        keeper.stop()
        return handle

    def _file_sample(self, path: Path) -> _Sample:
        """A file's type (checked before any request) and sha256; its fingerprint is recorded,
        so that the next request for it is answered without reading it (:meth:`fast_path`)."""
        fp = hashing.fingerprint(path)
        with hashing.open_source(path) as file:
            head = file.read(media_types.SNIFF_BYTES)
            media_type = media_types.check(path, head, fp.size)
            _check_type(str(path), media_type.mime_type)
            file.seek(0)
            sha256 = hashing.sha256_file(file)
        hashing.ensure_unchanged(fp)
        self.ctx.store.remember_path(fp, sha256, media_type.mime_type, wall_clock())
        return _Sample(str(path), sha256, media_type.mime_type, fp.path)

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


