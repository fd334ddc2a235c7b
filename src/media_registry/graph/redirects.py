"""The one redirect loop: every client here follows redirects by hand, so that each hop is
checked before anything is sent to it.

:func:`redirects` is the policy without I/O (which answer is a redirect, where it leads, how
many are followed); :func:`follow` and :func:`afollow` drive it with a sync or an async client,
as httpx drives its auth flows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator

import httpx

MAX_REDIRECTS = 5

# Yields each URL to request, is sent each answer, returns once an answer is not a redirect.
Walk = Generator[httpx.URL, httpx.Response, None]


def redirects(first: httpx.URL, hop: Callable[[httpx.URL], httpx.URL],
              too_many: Callable[[httpx.URL], Exception]) -> Walk:
    """The walk from ``first``: each redirect's target goes through ``hop`` (which checks it,
    or raises) before it is requested; past :data:`MAX_REDIRECTS`, ``too_many(last URL)``."""
    target = first
    for _ in range(MAX_REDIRECTS + 1):
        response = yield target
        if not response.has_redirect_location:
            return
        target = hop(target.join(response.headers["Location"]))
    raise too_many(target)


def follow(walk: Walk, send: Callable[[httpx.URL], httpx.Response]) -> tuple[httpx.URL, httpx.Response]:
    """Send to each URL of ``walk``: the URL and answer that is not a redirect. Every redirect's
    answer is closed, also when its target is refused."""
    target = next(walk)
    while True:
        response = send(target)
        try:
            following = walk.send(response)
        except StopIteration:
            return target, response
        finally:
            if response.has_redirect_location:
                response.close()
        target = following


async def afollow(walk: Walk, send: Callable[[httpx.URL], Awaitable[httpx.Response]]
                  ) -> tuple[httpx.URL, httpx.Response]:
    """:func:`follow` with an async client."""
    target = next(walk)
    while True:
        response = await send(target)
        try:
            following = walk.send(response)
        except StopIteration:
            return target, response
        finally:
            if response.has_redirect_location:
                await response.aclose()
        target = following
