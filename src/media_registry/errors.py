"""Every failure media-registry raises, in one hierarchy.

    MediaRegistryError
    ├── InputError              bad input from the caller; nothing was sent anywhere
    │   ├── SourceNotFound      no such file (ENOENT, ENOTDIR), or a URL answered 404/410
    │   ├── SourceUnreadable    the source exists but cannot be read (permission, not a regular file, I/O)
    │   ├── SourceChanged       the file changed while it was read
    │   ├── SourceUnavailable   a URL source could not be fetched (network, HTTP error)
    │   ├── UnsafeSourceURL     a URL source that is neither https nor http to this machine
    │   ├── UnsupportedMedia    a type WhatsApp does not take, or an empty file
    │   ├── MislabelledMedia    the given MIME type contradicts the bytes
    │   ├── MediaTooLarge       over WhatsApp's limit for that kind
    │   ├── NotInRegistry       a path, sha256 or media ID the registry does not know
    │   ├── ConfigError         a missing or invalid setting
    │   └── AccessDenied        the service refuses this caller or source (403)
    │       └── NotAuthenticated    no valid service token (401)
    ├── GraphAPIError           the Graph API refused, failed or could not be reached
    │   ├── AuthError           the token is missing, expired or invalid (code 190, HTTP 401)
    │   ├── RateLimited         HTTP 429 or codes 4, 80007, 130429
    │   ├── MediaNotFound       unknown, expired or deleted media ID (code 100, subcode 33)
    │   └── APIUnreachable      connection failed or timed out after every retry
    ├── RegistryError           the registry database (an SQLite file or a PostgreSQL server)
    │   ├── RegistryLocked      another writer held the lock past the busy timeout
    │   ├── RegistryUnreachable the PostgreSQL server is down, restarting or out of reach
    │   ├── RegistryCorrupt     the file is not a media-registry database
    │   ├── SchemaTooNew        written by a newer media-registry
    │   └── ContentDeleted      the content was deleted while this call uploaded it
    └── DownloadError           inbound media
        ├── UnsafeDownloadURL   a download URL outside the allowed hosts
        ├── DownloadURLExpired  the short-lived download URL expired (fetched again)
        └── IntegrityError      the bytes do not match the size or sha256 announced

Every message is one line: what went wrong, with which file, and what to do about it.
Every message also passes through :func:`redact` when the error is made, so a secret that a
server echoes (the token, a database password: see :func:`register_secret`) never reaches
output, logs or tracebacks.
"""

from __future__ import annotations

import _thread  # threading's lock, without threading: every command's start-up imports this module

TYPE_CHECKING = False  # without `typing` or `logging`: every command's start-up imports this module
if TYPE_CHECKING:
    import logging
    from typing import Any

# Shorter values would mangle ordinary words if replaced, and are no secret anyway.
MIN_SECRET_LENGTH = 6

_secrets: dict[str, str] = {}  # value -> label shown in its place
_secrets_lock = _thread.allocate_lock()


def register_secret(value: str | None, label: str = "secret") -> None:
    """Redact ``value`` as ``<label>`` from every error message and log line from now on
    (the WhatsApp token, a database password). Values under MIN_SECRET_LENGTH are ignored."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets[value] = label


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by its label, longest first."""
    with _secrets_lock:
        known = sorted(_secrets.items(), key=lambda item: -len(item[0]))
    for value, label in known:
        text = text.replace(value, f"<{label}>")
    return text


def one_line(text: str) -> str:
    """``text`` with its line breaks (an API's multi-line message) folded into spaces."""
    return " ".join(text.split())


class RedactingFilter:
    """A logging filter (``addFilter`` takes any object with this method) that redacts
    registered secrets from messages and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        import logging  # loaded already wherever a record is filtered

        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class MediaRegistryError(Exception):
    """Base of every error media-registry raises; its message is one line, secrets redacted."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(one_line(redact(arg)) if isinstance(arg, str) else arg for arg in args))


class InputError(MediaRegistryError):
    """The caller's input is unusable; no request was made."""


class SourceNotFound(InputError):
    """The source file does not exist (ENOENT, ENOTDIR), or a URL answered 404/410.

    Only this error means a source vanished: purge forgets a path for it, never for
    :class:`SourceUnreadable`.
    """


class SourceUnreadable(InputError):
    """The source exists but cannot be read: permission denied, not a regular file, an I/O
    error, or a stream that failed or was not binary; the original error is ``__cause__``."""


class SourceChanged(InputError):
    """The source file changed while it was being hashed or uploaded."""


class SourceUnavailable(InputError):
    """A URL source could not be fetched: unreachable, timed out, or an HTTP error."""


class UnsafeSourceURL(InputError):
    """A URL source (or a redirect) that is neither https nor http to a loopback host."""


class UnsupportedMedia(InputError):
    """The content is of a type WhatsApp does not accept, or empty."""


class MislabelledMedia(InputError):
    """The MIME type the caller gave contradicts what the bytes are."""


class MediaTooLarge(InputError):
    """The content exceeds WhatsApp's size limit for its kind."""


class NotInRegistry(InputError):
    """The path, sha256 or media ID named is not in the registry."""


class ConfigError(InputError):
    """A setting is missing or invalid."""


class AccessDenied(InputError):
    """The service refuses the request: a path outside the allowed folders, or a URL to a
    loopback, private or link-local address."""


class NotAuthenticated(AccessDenied):
    """The request to the service carries no valid client token."""


class GraphAPIError(MediaRegistryError):
    """The Graph API answered with an error, or could not be reached.

    Carries Graph's error fields when the response had an error envelope.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed if sent again later."""
        return self.is_transient or (self.status is not None and self.status >= 500)


class AuthError(GraphAPIError):
    """The access token is missing, expired or invalid; retrying cannot help."""


class RateLimited(GraphAPIError):
    """The Graph API asked to slow down."""

    @property
    def retryable(self) -> bool:
        """Rate limits always pass with time."""
        return True


class MediaNotFound(GraphAPIError):
    """The media ID is unknown to the Graph API: never issued, expired or deleted."""


class APIUnreachable(GraphAPIError):
    """The Graph API could not be reached (connection error or timeout)."""

    @property
    def retryable(self) -> bool:
        """Network trouble may pass."""
        return True


class RegistryError(MediaRegistryError):
    """The registry database cannot be used."""


class RegistryLocked(RegistryError):
    """Another writer held the registry past the busy timeout."""


class RegistryUnreachable(RegistryError):
    """The PostgreSQL server could not be reached (down, restarting, or the network)."""


class RegistryCorrupt(RegistryError):
    """The file at the registry path is not a usable media-registry database."""


class SchemaTooNew(RegistryError):
    """The registry was written by a newer version of media-registry."""


class ContentDeleted(RegistryError):
    """The content was deleted while this call uploaded it: deletion wins, nothing is served."""


class DownloadError(MediaRegistryError):
    """Inbound media could not be fetched safely."""


class UnsafeDownloadURL(DownloadError):
    """A download URL points outside the hosts allowed to receive the token."""


class DownloadURLExpired(DownloadError):
    """The download URL (valid about 5 minutes) has expired; get the media again."""


class IntegrityError(DownloadError):
    """Downloaded bytes do not match the announced size or sha256."""


RATE_LIMIT_CODES = frozenset({4, 80007, 130429})


def from_graph_response(status: int, payload: Any, retry_after: float | None) -> GraphAPIError:
    """Map a Graph API error response (status and decoded JSON, if any) onto the hierarchy."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = error.get("code")
    subcode = error.get("error_subcode")
    fields: dict[str, Any] = {
        "status": status,
        "code": code,
        "subcode": subcode,
        "fbtrace_id": error.get("fbtrace_id"),
        "is_transient": bool(error.get("is_transient")),
        "retry_after": retry_after,
    }
    detail = error.get("message") or f"HTTP {status} without an error message"
    tag = f" (HTTP {status}" + (f", code {code}" if code else "") + (
        f", subcode {subcode}" if subcode else "") + ")"
    if code == 190 or status == 401:
        return AuthError(
            f"Graph API rejected the access token: {detail}{tag}; "
            "set a valid WHATSAPP_TOKEN (a system-user token does not expire)",
            **fields,
        )
    if status == 429 or code in RATE_LIMIT_CODES:
        return RateLimited(
            f"Graph API rate limit: {detail}{tag}; wait and try again, or send less often",
            **fields,
        )
    if code == 100 and subcode == 33:
        return MediaNotFound(
            f"Graph API does not know this media ID: {detail}{tag}; "
            "it expired or was deleted, upload the file again",
            **fields,
        )
    advice = "; try again later" if status >= 500 or fields["is_transient"] else ""
    return GraphAPIError(f"Graph API error: {detail}{tag}{advice}", **fields)
