"""The one redirect loop: every client here follows redirects by hand, so that each hop is
checked before anything is sent to it.

:class:`Redirects` is the policy without I/O (which answer is a redirect, where it leads, how
many are followed); :func:`follow` and :func:`afollow` drive it with a sync or an async client,
as httpx drives its auth flows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

MAX_REDIRECTS = 5


class Redirects:
    """One request's walk from ``first``: each redirect's target goes through ``hop`` (which
    checks it, or raises) before it is requested; past :data:`MAX_REDIRECTS`, ``too_many(last)``."""

    def __init__(self, first: httpx.URL, hop: Callable[[httpx.URL], httpx.URL],
                 too_many: Callable[[httpx.URL], Exception]) -> None:
        self.target = first
        self._hop = hop
        self._too_many = too_many
        self._left = MAX_REDIRECTS

    @staticmethod
    def leads_on(response: httpx.Response) -> bool:
        """Whether ``response`` is a redirect to follow rather than the answer."""
        return response.has_redirect_location

    def take(self, response: httpx.Response) -> None:
        """Move on to where the redirect ``response`` (closed by now) leads."""
        self.target = self._hop(self.target.join(response.headers["Location"]))
        if not self._left:
            raise self._too_many(self.target)
        self._left -= 1


def follow(walk: Redirects, send: Callable[[httpx.URL], httpx.Response]) -> tuple[httpx.URL, httpx.Response]:
    """Send to each hop of ``walk``: the URL and the answer that is not a redirect."""
    while True:
        response = send(walk.target)
        if not walk.leads_on(response):
            return walk.target, response
        response.close()  # before its target is checked: a refused hop leaves nothing open
        walk.take(response)


async def afollow(walk: Redirects, send: Callable[[httpx.URL], Awaitable[httpx.Response]]
                  ) -> tuple[httpx.URL, httpx.Response]:
    """:func:`follow` with an async client."""
    while True:
        response = await send(walk.target)
        if not walk.leads_on(response):
            return walk.target, response
        await response.aclose()
        walk.take(response)
