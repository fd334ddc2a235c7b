"""The typed effects the registry's flows yield, and how each performs itself.

A flow is a generator: it asks for an :class:`Effect` (a Graph API call, blocking local work,
a pause) with ``result = yield from ask(effect)``, receives its result (or has its error
thrown in) and finally returns a value. ``Effect[R]`` says what the flow receives: ``R``.
Each effect performs itself against the sync environment (:meth:`Effect.run`: the
``MediaRegistry``'s clients) or the async one (:meth:`Effect.arun`: the
``AsyncMediaRegistry``'s, every blocking effect in a thread (:func:`in_thread`), so nothing
blocking runs on the event loop). A driver loops over :class:`Run`; a test can step a flow
by hand, answering each effect itself.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from ..content.blobs import Sink
    from ..content.sources import Content, Validators
    from ..graph.client import AsyncGraphClient, GraphClient
    from ..graph.fetch import AsyncSourceFetcher, SourceFetcher
    from ..graph.transfer import RunningDigest
    from ..models import MediaMetadata

T = TypeVar("T")
R = TypeVar("R")


class Env(Protocol):
    """What sync effects run against (a ``MediaRegistry``)."""

    @property
    def graph(self) -> GraphClient: ...

    @property
    def sources(self) -> SourceFetcher: ...


class AsyncEnv(Protocol):
    """What async effects run against (an ``AsyncMediaRegistry``)."""

    @property
    def graph(self) -> AsyncGraphClient: ...

    @property
    def sources(self) -> AsyncSourceFetcher: ...

    @property
    def hash_slot(self) -> asyncio.Semaphore: ...


class Effect(ABC, Generic[R]):
    """Something a flow asks its driver for; the flow receives an ``R``."""

    __slots__ = ()

    @abstractmethod
    def run(self, env: Env) -> R:
        """Perform the effect inline."""

    @abstractmethod
    async def arun(self, env: AsyncEnv) -> R:
        """Perform the effect on the event loop, blocking work in a thread."""


Flow = Generator[Effect[Any], Any, T]


def ask(effect: Effect[R]) -> Generator[Effect[Any], Any, R]:
    """Yield ``effect`` and return its result, typed: ``x = yield from ask(Upload(...))``."""
    result: R = yield effect
    return result


@dataclass(frozen=True)
class Upload(Effect[str]):
    """POST a file to ``/{phone_number_id}/media``; the flow receives its media ID."""

    path: str
    mime_type: str
    phone_number_id: str
    ttl_minutes: int | None

    def run(self, env: Env) -> str:
        """See :meth:`Effect.run`."""
        return env.graph.upload(self.path, self.mime_type, self.phone_number_id, self.ttl_minutes)

    async def arun(self, env: AsyncEnv) -> str:
        """See :meth:`Effect.arun`."""
        return await env.graph.upload(self.path, self.mime_type, self.phone_number_id, self.ttl_minutes)


@dataclass(frozen=True)
class OpenSession(Effect[str]):
    """Open an upload session of an app for a file; the flow receives its ID."""

    path: str
    mime_type: str
    app_id: str

    def run(self, env: Env) -> str:
        """See :meth:`Effect.run`."""
        return env.graph.open_session(self.path, self.mime_type, self.app_id)

    async def arun(self, env: AsyncEnv) -> str:
        """See :meth:`Effect.arun`."""
        return await env.graph.open_session(self.path, self.mime_type, self.app_id)


@dataclass(frozen=True)
class SessionOffset(Effect["int | None"]):
    """Ask an upload session where to resume; the flow receives the offset, or None when
    Meta no longer knows the session."""

    session: str
    size: int

    def run(self, env: Env) -> int | None:
        """See :meth:`Effect.run`."""
        return env.graph.session_offset(self.session, self.size)

    async def arun(self, env: AsyncEnv) -> int | None:
        """See :meth:`Effect.arun`."""
        return await env.graph.session_offset(self.session, self.size)


@dataclass(frozen=True)
class Transfer(Effect[str]):
    """Send a file to an upload session from an offset (hashed into ``digest`` as it goes, if
    given); the flow receives the header handle."""

    session: str
    path: str
    offset: int
    size: int
    digest: RunningDigest | None

    def run(self, env: Env) -> str:
        """See :meth:`Effect.run`."""
        return env.graph.transfer(self.session, self.path, self.offset, self.size, self.digest)

    async def arun(self, env: AsyncEnv) -> str:
        """See :meth:`Effect.arun`."""
        return await env.graph.transfer(self.session, self.path, self.offset, self.size, self.digest)


@dataclass(frozen=True)
class GetMedia(Effect["MediaMetadata"]):
    """GET a media ID's metadata."""

    media_id: str
    phone_number_id: str | None

    def run(self, env: Env) -> MediaMetadata:
        """See :meth:`Effect.run`."""
        return env.graph.get_media(self.media_id, self.phone_number_id)

    async def arun(self, env: AsyncEnv) -> MediaMetadata:
        """See :meth:`Effect.arun`."""
        return await env.graph.get_media(self.media_id, self.phone_number_id)


@dataclass(frozen=True)
class DeleteMedia(Effect[None]):
    """DELETE a media ID at the API."""

    media_id: str
    phone_number_id: str | None

    def run(self, env: Env) -> None:
        """See :meth:`Effect.run`."""
        env.graph.delete(self.media_id, self.phone_number_id)

    async def arun(self, env: AsyncEnv) -> None:
        """See :meth:`Effect.arun`."""
        await env.graph.delete(self.media_id, self.phone_number_id)


@dataclass(frozen=True)
class DownloadTo(Effect[None]):
    """Stream a download URL into an open :class:`~media_registry.content.blobs.Sink`."""

    url: str
    file: Sink

    def run(self, env: Env) -> None:
        """See :meth:`Effect.run`."""
        env.graph.download_to(self.url, self.file)

    async def arun(self, env: AsyncEnv) -> None:
        """See :meth:`Effect.arun`."""
        await env.graph.download_to(self.url, self.file)


@dataclass(frozen=True)
class Fetch(Effect["Content | None"]):
    """Download a URL source: its :class:`~media_registry.content.sources.Content`, or None when the
    server answers 304 (``known`` still holds)."""

    url: str
    known: Validators | None

    def run(self, env: Env) -> Content | None:
        """See :meth:`Effect.run`."""
        return env.sources.fetch(self.url, self.known)

    async def arun(self, env: AsyncEnv) -> Content | None:
        """See :meth:`Effect.arun`."""
        return await env.sources.fetch(self.url, self.known)


@dataclass(frozen=True)
class Send(Effect[Any]):
    """Call the sender's ``send(media_id)`` (awaited when it returns an awaitable); the flow
    receives what it returns, or has its error thrown in."""

    send: Callable[[str], Any]
    media_id: str

    def run(self, env: Env) -> Any:
        """See :meth:`Effect.run`."""
        return self.send(self.media_id)

    async def arun(self, env: AsyncEnv) -> Any:
        """See :meth:`Effect.arun`."""
        result = self.send(self.media_id)
        return await result if inspect.isawaitable(result) else result


@dataclass(frozen=True)
class Blocking(Effect[T]):
    """Local work that may wait (the registry's write lock, the disk); the flow receives
    ``work()``. Once started it always runs to its end. If its flow is cancelled meanwhile,
    ``undo`` is applied to the abandoned result (e.g. to release a lease just taken)."""

    work: Callable[[], T]
    undo: Callable[[T], object] | None = None

    def run(self, env: Env) -> T:
        """See :meth:`Effect.run`."""
        return self.work()

    async def arun(self, env: AsyncEnv) -> T:
        """See :meth:`Effect.arun`: in a thread."""
        return await in_thread(self)


@dataclass(frozen=True)
class Hashing(Blocking[T]):
    """Blocking work that may read a whole file."""

    async def arun(self, env: AsyncEnv) -> T:
        """In a thread, one at a time: hashing threads contend with the event loop for the
        GIL (8 new 10 MB files at once: 38 ms stalls become 8 ms)."""
        async with env.hash_slot:
            return await in_thread(self)


@dataclass(frozen=True)
class Sleep(Effect[None]):
    """A pause (backoff, waiting on another sender's lease)."""

    seconds: float

    def run(self, env: Env) -> None:
        """See :meth:`Effect.run`."""
        time.sleep(self.seconds)

    async def arun(self, env: AsyncEnv) -> None:
        """See :meth:`Effect.arun`."""
        await asyncio.sleep(self.seconds)


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(timezone.utc)


class Run(Generic[T]):
    """A flow being driven: a driver loops ``while (effect := run.next()) is not None``,
    performing each effect and handing back its ``value`` or its ``error``."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.value: object = None
        self.error: BaseException | None = None

    def next(self) -> Effect[Any] | None:
        """The flow's next effect, or None once it has returned (see :attr:`result`)."""
        error, self.error = self.error, None
        try:
            return self._flow.throw(error) if error is not None else self._flow.send(self.value)
        except StopIteration as stop:
            self.result: T = stop.value
            return None


def drive(flow: Flow[T], env: Env) -> T:
    """Run a flow, performing its effects inline."""
    run = Run(flow)
    while (effect := run.next()) is not None:
        try:
            run.value = effect.run(env)
        except BaseException as exc:  # handed to the flow, which decides
            run.error = exc
    return run.result


async def adrive(flow: Flow[T], env: AsyncEnv) -> T:
    """Run a flow, awaiting its effects."""
    run = Run(flow)
    while (effect := run.next()) is not None:
        try:
            run.value = await effect.arun(env)
        except BaseException as exc:  # cancellation too: the flow releases its lease
            run.error = exc
    return run.result


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
