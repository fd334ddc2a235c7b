"""The effect vocabulary of the registry's flows, and the logic both drivers share.

A flow is a generator: it yields an :data:`Effect` (a Graph API call, blocking local work, a
pause), receives its result (or has its error thrown in) and finally returns a value. The
rules live in flows; :class:`~media_registry.registry.MediaRegistry` performs effects inline
and :class:`~media_registry.registry.AsyncMediaRegistry` awaits them, running every blocking
one in a thread (:func:`in_thread`) so that nothing blocking runs on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, Protocol, TypeVar

from .blobs import VerifiedFile
from .sources import Validators

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class GraphOperations(Protocol[R_co]):
    """The Graph API calls flows make. ``GraphClient`` answers each at once
    (``R_co`` is the result), ``AsyncGraphClient`` with a coroutine to await."""

    def upload(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str,
               ttl_minutes: int | None = None) -> R_co: ...

    def get_media(self, media_id: str, phone_number_id: str | None = None) -> R_co: ...

    def delete(self, media_id: str, phone_number_id: str | None = None) -> R_co: ...

    def download_to(self, url: str, file: VerifiedFile) -> R_co: ...


@dataclass(frozen=True)
class Upload:
    """POST a file to ``/{phone_number_id}/media``; the flow receives its media ID."""

    path: str
    mime_type: str
    phone_number_id: str
    ttl_minutes: int | None

    def on(self, graph: GraphOperations[R]) -> R:
        """The call on ``graph``."""
        return graph.upload(self.path, self.mime_type, self.phone_number_id, self.ttl_minutes)


@dataclass(frozen=True)
class _ByMediaID:
    media_id: str
    phone_number_id: str | None


class GetMedia(_ByMediaID):
    """GET a media ID's metadata; the flow receives a ``MediaMetadata``."""

    def on(self, graph: GraphOperations[R]) -> R:
        """The call on ``graph``."""
        return graph.get_media(self.media_id, self.phone_number_id)


class DeleteMedia(_ByMediaID):
    """DELETE a media ID at the API."""

    def on(self, graph: GraphOperations[R]) -> R:
        """The call on ``graph``."""
        return graph.delete(self.media_id, self.phone_number_id)


@dataclass(frozen=True)
class DownloadTo:
    """Stream a download URL into an open :class:`~media_registry.blobs.VerifiedFile`."""

    url: str
    file: VerifiedFile

    def on(self, graph: GraphOperations[R]) -> R:
        """The call on ``graph``."""
        return graph.download_to(self.url, self.file)


class SourceOperations(Protocol[R_co]):
    """What flows ask of a URL-source fetcher (``SourceFetcher`` or ``AsyncSourceFetcher``)."""

    def fetch(self, url: str, known: Validators | None = None) -> R_co: ...


@dataclass(frozen=True)
class Fetch:
    """Download a URL source; the flow receives a :class:`~media_registry.sources.Content`,
    or None when the server answers 304 (``known`` still holds)."""

    url: str
    known: Validators | None

    def on(self, sources: SourceOperations[R]) -> R:
        """The call on ``sources``."""
        return sources.fetch(self.url, self.known)


@dataclass(frozen=True)
class Send:
    """Call the sender's ``send(media_id)`` (awaited when it returns an awaitable); the flow
    receives what it returns, or has its error thrown in."""

    send: Callable[[str], Any]
    media_id: str


@dataclass(frozen=True)
class Blocking(Generic[T]):
    """Local work that may wait (the registry's write lock, the disk); the flow receives
    ``work()``. Once started it always runs to its end. If its flow is cancelled meanwhile,
    ``undo`` is applied to the abandoned result (e.g. to release a lease just taken)."""

    work: Callable[[], T]
    undo: Callable[[T], object] | None = None


@dataclass(frozen=True)
class Hashing(Blocking[T]):
    """Blocking work that may read a whole file."""


@dataclass(frozen=True)
class Sleep:
    """A pause (backoff, waiting on another sender's lease)."""

    seconds: float


Effect = Upload | GetMedia | DeleteMedia | DownloadTo | Fetch | Send | Blocking[Any] | Sleep
Flow = Generator[Effect, Any, T]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(timezone.utc)


class Run(Generic[T]):
    """A flow being driven: both drivers loop ``while (effect := run.next()) is not None``,
    performing each effect and handing back its ``value`` or its ``error``."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.value: Any = None
        self.error: BaseException | None = None

    def next(self) -> Effect | None:
        """The flow's next effect, or None once it has returned (see :attr:`result`)."""
        error, self.error = self.error, None
        try:
            return self._flow.throw(error) if error is not None else self._flow.send(self.value)
        except StopIteration as stop:
            self.result: T = stop.value
            return None


class _Handoff(Generic[T]):
    """Work in a worker thread whose result its awaiting task may abandon (cancelled): then
    whichever side learns last that both happened undoes the result, never on the loop."""

    def __init__(self, effect: Blocking[T]) -> None:
        self._effect = effect
        self._lock = threading.Lock()
        self._abandoned = False
        self._finished = False
        self._result: T | None = None

    def run(self) -> T:
        """Do the work (in the worker thread); undo it here if it was abandoned meanwhile."""
        result = self._effect.work()
        with self._lock:
            self._finished, self._result = True, result
            abandoned = self._abandoned
        if abandoned:
            self._undo(result)
        return result

    def abandon(self) -> None:
        """Give up the result (on the loop): undo it in a new thread if it already exists."""
        with self._lock:
            self._abandoned = True
            finished, result = self._finished, self._result
        if finished:
            threading.Thread(target=self._undo, args=(result,), name="media-registry-undo").start()

    def _undo(self, result: T) -> None:
        if self._effect.undo is not None:
            self._effect.undo(result)


async def in_thread(effect: Blocking[T]) -> T:
    """Perform a blocking effect in a thread. Cancelling the awaiting task cannot stop the
    thread: the work still runs to its end (shielded, so a queued one starts anyway), and
    what it acquired for the abandoned flow is undone by ``effect.undo``."""
    handoff = _Handoff(effect)
    future = asyncio.ensure_future(asyncio.to_thread(handoff.run))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        handoff.abandon()
        future.add_done_callback(_retrieve)  # an error of abandoned work is nobody's to raise
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
