"""The client's auth: the bearer token goes to the API's own origin and Meta's media hosts
over https, and nowhere else."""

from __future__ import annotations

from collections.abc import Generator, Iterable

import httpx

from .checks import check_media_hosts, configured
from .urls import origin

# The marker a request carries to get the token as "OAuth <token>" rather than "Bearer <token>".
OAUTH = "OAuth"


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer`` to requests for the API's own origin and Meta's media
    hosts over https, and to nothing else."""

    def __init__(self, token: str, api_base: str, media_host_suffixes: Iterable[str]) -> None:
        self._header = f"Bearer {token}"
        self._oauth = f"OAuth {token}"
        self._api_origin = origin(httpx.URL(api_base))
        self._suffixes = configured(check_media_hosts, media_host_suffixes, "MEDIA_REGISTRY_MEDIA_HOSTS")

    def allows(self, url: httpx.URL) -> bool:
        """Whether the token may be sent to ``url``."""
        if origin(url) == self._api_origin:
            return True
        host = url.host.lower()
        return url.scheme == "https" and any(
            host.endswith(suffix) or host == suffix.lstrip(".") for suffix in self._suffixes
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach the header when the destination is allowed. A request marked
        ``Authorization: OAuth`` (an upload session's, as Meta documents it) gets the token in
        that scheme."""
        oauth = request.headers.get("Authorization") == OAUTH
        if self.allows(request.url):
            request.headers["Authorization"] = self._oauth if oauth else self._header
        elif oauth:
            del request.headers["Authorization"]
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<token hidden>)"
