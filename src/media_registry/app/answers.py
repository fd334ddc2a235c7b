"""What the service answers: its statuses, the shapes of its bodies and errors, and its
OpenAPI document."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..content import media_types
from ..errors import (
    AccessDenied,
    APIUnreachable,
    ContentDeleted,
    DownloadError,
    GraphAPIError,
    InputError,
    MediaRegistryError,
    MediaTooLarge,
    NotAuthenticated,
    NotInRegistry,
    RateLimited,
    RegistryError,
    SourceChanged,
    UnsafeDownloadURL,
    UnsupportedMedia,
)
from . import _connections
from .metrics import registry_trouble

log = logging.getLogger("media_registry.service")

# The largest thing WhatsApp takes (a 100 MB document); each kind's own limit is checked later.
MAX_BODY = max(media_types.MAX_BYTES.values())
MAX_JSON_BODY = 64 * 1024
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
DIGITS = r"^[0-9]{1,32}$"


class BodyTimeout(InputError):
    """The request's body did not arrive whole within the service's ``--body-timeout``."""


# The most specific class wins: the status of the first class in the error's MRO found here.
STATUS_BY_ERROR: dict[type[MediaRegistryError], int] = {
    BodyTimeout: 408,
    NotAuthenticated: 401,
    AccessDenied: 403,
    NotInRegistry: 404,
    SourceChanged: 409,
    ContentDeleted: 409,
    MediaTooLarge: 413,
    UnsupportedMedia: 415,
    InputError: 400,
    RateLimited: 503,
    APIUnreachable: 503,
    GraphAPIError: 502,
    RegistryError: 503,
    UnsafeDownloadURL: 403,
    DownloadError: 502,
    MediaRegistryError: 500,
}


# -- shapes -------------------------------------------------------------------------------


class MediaID(BaseModel):
    """A media ID valid now for a content on one phone number."""

    media_id: str
    sha256: str
    mime_type: str
    expires_at: datetime


class Upload(MediaID):
    """The answer to ``POST /v1/media``: ``cached`` when the ID was already there."""

    status: Literal["cached", "uploaded"]


class UrlSource(BaseModel):
    """Fetch the content from this URL (https; private addresses only if the service allows)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=8192, pattern=r"^[hH][tT][tT][pP][sS]?://")  # any case, as RFC 3986


class PathSource(BaseModel):
    """Read the content from this absolute path, under a folder given with ``--allow-root``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=4096, pattern=r"^/[^\x00]*$")


class ErrorDetail(BaseModel):
    """What went wrong, in the registry's one-line words."""

    type: str
    message: str


class ErrorBody(BaseModel):
    """Every error the service answers with."""

    error: ErrorDetail


class Health(BaseModel):
    """``/healthz``: ``ok``, or ``failing`` with what (``registry``, ``refresh`` or
    ``archive``) and why; and the inbound items not archived yet."""

    status: Literal["ok", "failing"]
    failing: Literal["registry", "refresh", "archive"] | None = None
    reason: str | None = None
    last_refresh_success: float | None = Field(None, description="Unix time, this process's")
    inbound_pending: int | None = Field(None, description="Inbound items not archived yet")


JsonSource = TypeAdapter(UrlSource | PathSource)
BEARER = HTTPBearer(auto_error=False, description="The service's MEDIA_REGISTRY_SERVICE_TOKEN")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of an endpoint for these error statuses."""
    words = {400: "Bad input", 401: "No valid client token", 403: "Source not allowed",
             404: "Not in the registry", 408: "The body did not arrive within --body-timeout",
             409: "The source changed, or its content was deleted, while it was uploaded; send it "
             "again", 413: "Too large", 415: "Unsupported media type",
             502: "Graph API error", 503: "Graph API or registry unavailable, retry later"}
    return {status: {"model": ErrorBody, "description": words[status]} for status in statuses}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The media's bytes (any content type but JSON: application/json, "
                       "text/json, application/*+json), or a JSON source.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                    "minLength": 1}},
            "application/json": {"schema": {"oneOf": [UrlSource.model_json_schema(),
                                                      PathSource.model_json_schema()]}},
        },
    }
}


def answer_errors_as_json(app: FastAPI) -> None:
    """Every error ``app`` meets answered as an :class:`ErrorBody`, and its OpenAPI document
    saying so."""
    app.add_exception_handler(MediaRegistryError, _registry_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MediaRegistryError)
    status = next(STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_BY_ERROR)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(int(retry_after))} if retry_after else {}
    if isinstance(exc, BodyTimeout):  # the rest of the body may still trickle in: hang up
        headers["Connection"] = "close"
    message = str(exc)
    if status == 503 and isinstance(exc, RegistryError):  # the message names the database
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        message = registry_trouble(exc)
    return _error(status, type(exc).__name__, message, headers)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    log.info("a client hung up before sending the whole body; nothing was recorded")
    return Response(status_code=400)  # nobody is left to read it


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    first = exc.errors()[0] if isinstance(exc, RequestValidationError) and exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return _error(400, "InputError", f"{where}: {first.get('msg', 'invalid')}; fix the request")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, "HTTPError", str(exc.detail), getattr(exc, "headers", None))


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    """Out of file descriptors (spooling a body, opening a path): 503 and a WARNING at most
    once a minute; any other OSError is unexpected."""
    if not _connections.is_out_of_files(exc):
        return await _unexpected_error(request, exc)
    _connections.OUT_OF_FILES.say(exc)
    return _error(503, "ServiceBusy", "the service is out of file descriptors for now; retry in "
                  "a moment", {"Retry-After": "1"})


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")  # the message may hold anything: keep it in the log
    return _error(500, "InternalError", f"unexpected {type(exc).__name__}; see the service's log")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with its 422 answers replaced by our 400 (validation errors)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        for operation in (op for item in schema["paths"].values() for op in item.values()):
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error_responses(400)[400] | {"content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
                responses["400"].pop("model", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
