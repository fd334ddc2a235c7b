"""What the sync and async Graph API clients share, none of it I/O: settings, request shapes,
answer parsing, the retry policy, error mapping, the download allowlist and budget."""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import httpx
import tenacity

from ..content.media_types import MAX_BYTES
from ..defaults import DOWNLOAD_DEADLINE, DOWNLOAD_USER_AGENT, MAX_RETRIES, RETRY_BACKOFF, TIMEOUT, USER_AGENT
from ..defaults import MEDIA_HOSTS as MEDIA_HOST_SUFFIXES
from ..errors import (
    APIUnreachable,
    AuthError,
    DownloadError,
    DownloadURLExpired,
    GraphAPIError,
    IntegrityError,
    MediaRegistryError,
    UnsafeDownloadURL,
    from_graph_response,
    register_secret,
)
from ..models import MediaMetadata, graph_id
from ..models import phone_number_id as phone_number_id_checked
from ..setting_checks import check_token, check_user_agent
from . import versions
from .auth import OAUTH, BearerAuth
from .checks import check_api_base, configured
from .redirects import MAX_REDIRECTS, Redirects
from .urls import parse_url

# An upload session's ID as the Resumable Upload API gives it (it goes into a request path).
# Meta's carry a signature: "upload:MTphdHRh...?sig=ARZ...".
SESSION = re.compile(r"upload:[A-Za-z0-9_=+:-]{1,512}(\?sig=[A-Za-z0-9_=+-]{1,512})?")
# The largest media WhatsApp takes (documents): nothing larger is ever downloaded.
MAX_MEDIA_BYTES = max(MAX_BYTES.values())


class GraphBase:
    """What the sync and async clients share: settings, request shapes, answer parsing,
    retry policy, error mapping and the host allowlist. Subclasses only do the I/O."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        *,
        token: str | None,
        api_base: str,
        user_agent: str = USER_AGENT,
        download_user_agent: str = DOWNLOAD_USER_AGENT,
        timeout: float = TIMEOUT,
        download_deadline: float = DOWNLOAD_DEADLINE,
        max_retries: int = MAX_RETRIES,
        backoff: float = RETRY_BACKOFF,
        max_wait: float = 30.0,
        media_host_suffixes: Iterable[str] = MEDIA_HOST_SUFFIXES,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.api_base = configured(check_api_base, api_base, "WHATSAPP_API_BASE")
        self.clock = clock  # the registry's: a version's end date is judged by it
        self._token = token = configured(check_token, token, "WHATSAPP_TOKEN")
        register_secret(token, "token")
        self._timeout = timeout
        self._download_deadline = download_deadline
        self._download_headers = {"User-Agent": download_user_agent}
        self._max_retries = max_retries
        self._max_wait = max_wait
        # "Full jitter": a random wait up to backoff * 2**attempt, so retrying senders spread out.
        self._exponential = tenacity.wait_random_exponential(multiplier=backoff, max=max_wait)
        self._auth = BearerAuth(token, self.api_base, media_host_suffixes) if token else None
        self._client_options: dict[str, Any] = {
            "auth": self._auth,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "headers": {"User-Agent": configured(check_user_agent, user_agent, "MEDIA_REGISTRY_USER_AGENT")},
            "follow_redirects": False,
        }

    # -- request shapes and answers -----------------------------------------------------

    def _upload_request(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str,
                        ttl_minutes: int | None) -> tuple[str, dict[str, str], tuple[str, str]]:
        """URL, form fields, and (file name, MIME type) of the file part."""
        data = {"messaging_product": "whatsapp", "type": mime_type}
        if ttl_minutes is not None:  # No-Storage numbers: how long Meta keeps the media
            data["ttl_minutes"] = str(ttl_minutes)
        url = f"{self.api_base}/{phone_number_id_checked(phone_number_id)}/media"
        return url, data, (os.path.basename(path), mime_type)

    def _media_url(self, media_id: str) -> str:
        return f"{self.api_base}/{graph_id(media_id, 'media ID')}"

    @staticmethod
    def _params(phone_number_id: str | None) -> dict[str, str] | None:
        return {"phone_number_id": phone_number_id_checked(phone_number_id)} if phone_number_id else None

    @staticmethod
    def _media_id(payload: dict[str, Any]) -> str:
        media_id = payload.get("id")
        if not isinstance(media_id, str) or not media_id.isdigit():
            raise GraphAPIError(
                "Graph API accepted the upload but sent no media id (digits); try again, and "
                "report it if it persists"
            )
        return media_id

    @staticmethod
    def _metadata(payload: dict[str, Any], media_id: str) -> MediaMetadata:
        try:
            metadata = MediaMetadata.model_validate(payload)
        except ValueError as exc:
            raise GraphAPIError(
                f"Graph API sent unexpected metadata for media {media_id} ({exc.__class__.__name__}); "
                "check WHATSAPP_API_BASE"
            ) from None
        if metadata.file_size > MAX_MEDIA_BYTES:
            raise DownloadError(
                f"media {media_id} announces {metadata.file_size:,} bytes, over WhatsApp's largest "
                f"media size ({MAX_MEDIA_BYTES:,} bytes); refusing to download it"
            )
        return metadata

    @staticmethod
    def _check_deleted(payload: dict[str, Any], media_id: str) -> None:
        # The seed page documents {"deleted": true}, the official spec {"success": true}.
        if not (payload.get("success") or payload.get("deleted")):
            raise GraphAPIError(f"Graph API did not confirm deleting media {media_id}; try again")

    # -- template header handles (the Resumable Upload API) -----------------------------

    def _session_request(self, path: str | os.PathLike[str], mime_type: str,
                         app_id: str) -> tuple[str, dict[str, str]]:
        """The URL and query that open an upload session for the file."""
        params = {"file_name": os.path.basename(path), "file_length": str(os.path.getsize(path)),
                  "file_type": mime_type}
        return f"{self.api_base}/{graph_id(app_id, 'app ID (WHATSAPP_APP_ID)')}/uploads", params

    @staticmethod
    def _session_id(payload: dict[str, Any]) -> str:
        session = payload.get("id")
        if not isinstance(session, str) or not SESSION.fullmatch(session):
            raise GraphAPIError("Graph API opened no upload session (no id 'upload:...'); try again, "
                                "and check WHATSAPP_APP_ID")
        return session

    def _session_url(self, session: str) -> str:
        if not SESSION.fullmatch(session):  # a stored one too: it goes into a request path
            raise GraphAPIError(f"not an upload session ID: {session[:40]!r}")
        return f"{self.api_base}/{session}"

    @staticmethod
    def _transfer_headers(offset: int, size: int) -> dict[str, str]:
        return {"Authorization": OAUTH, "file_offset": str(offset), "Content-Length": str(size - offset)}

    @staticmethod
    def _handle(payload: dict[str, Any]) -> str | None:
        handle = payload.get("h")
        return handle if isinstance(handle, str) and handle else None

    @staticmethod
    def _resume_at(payload: dict[str, Any], size: int) -> int:
        offset = payload.get("file_offset")
        if not isinstance(offset, int) or not 0 <= offset <= size:
            raise GraphAPIError(f"Graph API gave no usable file_offset ({str(offset)[:40]!r}) for an "
                                "upload session; try again")
        return offset

    @staticmethod
    def _broken(exc: MediaRegistryError, last: bool) -> dict[str, Any]:
        """A transfer that failed: nothing (resume from the session's offset) if it may be
        resumed and attempts are left; else ``exc``, raised."""
        if last or not getattr(exc, "retryable", False):
            raise exc
        return {}

    @staticmethod
    def _unfinished(size: int) -> GraphAPIError:
        return GraphAPIError(f"the upload session kept breaking off before its {size:,} bytes all "
                             "arrived; check the network and try again (it resumes where it stopped)")

    # -- retries and errors -------------------------------------------------------------

    def _retry_policy(self) -> dict[str, Any]:
        if not self._token:
            raise AuthError("no access token: set WHATSAPP_TOKEN (or pass token=...)")
        versions.check(self.api_base, self.clock())
        return {
            "stop": tenacity.stop_after_attempt(self._max_retries + 1),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(lambda exc: getattr(exc, "retryable", False)),
            "reraise": True,
        }

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted: float | None = getattr(exc, "retry_after", None)
        if hinted is not None:
            return min(hinted, self._max_wait)
        return self._exponential(state)

    def _failed(self, exc: Exception, budget: Budget | None) -> MediaRegistryError:
        """What a request that raised ``exc`` (``budget``: of a download) amounts to."""
        if budget is not None:
            budget.check_time()  # a timeout at the deadline is the deadline's doing
        if isinstance(exc, httpx.TransportError):
            return self._unreachable(exc)
        # httpx reads a redirect's Location (an invalid IDN host, say) as the answer arrives.
        if budget is not None:
            return UnsafeDownloadURL(f"the download answered with a malformed redirect ({exc}); "
                                     "the token was not sent there")
        return GraphAPIError(f"the Graph API answered with a malformed redirect ({exc}); "
                             "check WHATSAPP_API_BASE")

    def _unreachable(self, exc: httpx.TransportError) -> APIUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            return APIUnreachable(
                f"Graph API at {self.api_base} timed out; check the network, or raise "
                "MEDIA_REGISTRY_TIMEOUT for large files on slow links"
            )
        return APIUnreachable(
            f"cannot reach the Graph API at {self.api_base} ({exc.__class__.__name__}); "
            "check the network and WHATSAPP_API_BASE"
        )

    def _parse(self, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success:
            if not isinstance(payload, dict):
                raise GraphAPIError(
                    f"Graph API answered HTTP {response.status_code} with something that is not "
                    "a JSON object; check WHATSAPP_API_BASE",
                    status=response.status_code,
                )
            return payload
        raise from_graph_response(
            response.status_code, payload, retry_after(response.headers.get("Retry-After"))
        )

    # -- downloads ----------------------------------------------------------------------

    def _download_request(self, url: httpx.URL, budget: Budget) -> httpx.Request:
        """A GET of ``url`` with the download User-Agent and what is left of the deadline;
        UnsafeDownloadURL if the token may not go there, before anything is sent."""
        return self._http.build_request(
            "GET", self._download_target(url), headers=self._download_headers,
            timeout=budget.timeout(self._timeout),
        )

    def _download_walk(self, url: str) -> Redirects:
        """The redirects from a download URL; each hop is checked as its request is built."""
        return Redirects(parse_url(url), hop=lambda target: target, too_many=lambda last: UnsafeDownloadURL(
            f"more than {MAX_REDIRECTS} redirects from {last.host}; refusing"))

    def _download_target(self, url: httpx.URL) -> httpx.URL:
        """``url`` if the token may go there; else UnsafeDownloadURL, before anything is sent."""
        url = parse_url(url)
        if self._auth is None:
            raise AuthError("no access token: set WHATSAPP_TOKEN (or pass token=...)")
        if not self._auth.allows(url):
            raise UnsafeDownloadURL(
                f"refusing to download from {url.scheme}://{url.host}: not the API's origin nor "
                "a Meta media host over https; the token was not sent (extend "
                "MEDIA_REGISTRY_MEDIA_HOSTS only if you trust that host)"
            )
        return url

    def _check_download(self, response: httpx.Response) -> None:
        if response.status_code in (403, 404, 410):
            raise DownloadURLExpired(f"download URL answered HTTP {response.status_code}")
        if not response.is_success:
            self._parse(response)

    def _broke_off(self, budget: Budget, exc: httpx.TransportError) -> DownloadError:
        budget.check_time()  # a read that timed out at the deadline is the deadline's doing
        return IntegrityError(
            f"the download broke off after {budget.received:,} bytes "
            f"({exc.__class__.__name__}); nothing was kept"
        )


class Budget:
    """What one download may still take: time until its deadline, bytes up to WhatsApp's
    largest media size (counted as decoded, so a compressed body cannot expand past it)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._ends = time.monotonic() + deadline
        self.received = 0

    def timeout(self, timeout: float) -> httpx.Timeout:
        """The request timeout, shortened to what is left before the deadline."""
        left = max(0.001, min(timeout, self._ends - time.monotonic()))
        return httpx.Timeout(left, connect=min(left, 10.0))

    def spend(self, chunk: bytes) -> bytes:
        """Count a decoded chunk; DownloadError past the cap or the deadline."""
        self.received += len(chunk)
        if self.received > MAX_MEDIA_BYTES:
            raise DownloadError(
                f"the download sent more than {MAX_MEDIA_BYTES:,} bytes, WhatsApp's largest media "
                "size; it was stopped and nothing was kept"
            )
        self.check_time()
        return chunk

    def check_time(self) -> None:
        """DownloadError once the deadline has passed."""
        if time.monotonic() > self._ends:
            raise DownloadError(
                f"the download did not finish within MEDIA_REGISTRY_DOWNLOAD_DEADLINE "
                f"({self._deadline:g} s; {self.received:,} bytes received); nothing was kept; "
                "raise it for large media on a slow link"
            )


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
