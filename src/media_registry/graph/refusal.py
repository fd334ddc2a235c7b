"""Recognising Meta's refusal of a media ID at send time.

When a message names a media ID that Meta no longer accepts (it expired, the number was
re-registered, a No-Storage TTL ran out, another tool deleted it), ``/messages`` answers at
once with HTTP 400 and Graph error code 100: "(#100) Param image['id'] is not a valid whatsapp
business account media attachment ID". Senders reach that answer in many shapes: an
``httpx.Response``, an ``httpx.HTTPStatusError``, an SDK's exception (pywa's ``WhatsAppError``
carries ``code`` and ``message``), or our own :class:`~media_registry.errors.GraphAPIError`.
:func:`media_id_refused` reads them all by duck typing, so no SDK is a dependency.
"""

from __future__ import annotations

import re
from typing import Any

REFUSAL = re.compile(r"is not a valid whatsapp business account media attachment id", re.IGNORECASE)
INVALID_PARAMETER = 100


def media_id_refused(outcome: object) -> bool:
    """Whether ``outcome`` (a response or an exception) says Meta refused the media ID as no
    longer valid: Graph error code 100 with Meta's "not a valid ... media attachment ID"."""
    return _refused(outcome, depth=0)


def _refused(outcome: Any, depth: int) -> bool:
    if outcome is None or depth > 4:  # wrapped errors: follow a few links, never a cycle
        return False
    if not isinstance(outcome, BaseException) and hasattr(outcome, "status_code"):
        return _response_refused(outcome)
    code = getattr(outcome, "code", None)
    if isinstance(code, int):  # pywa's WhatsAppError has .message; our GraphAPIError, its text
        status = getattr(outcome, "status", None) or getattr(outcome, "status_code", None)
        message = getattr(outcome, "message", None)
        text = message if isinstance(message, str) else str(outcome)
        return status in (None, 400) and _graph_error_refused({"code": code, "message": text})
    response = getattr(outcome, "response", None)  # httpx.HTTPStatusError, requests' HTTPError
    if response is not None and _refused(response, depth + 1):
        return True
    return _refused(getattr(outcome, "__cause__", None), depth + 1)


def _response_refused(response: Any) -> bool:
    if response.status_code != 400:
        return False
    try:
        payload = response.json()
    except (ValueError, RuntimeError):  # not JSON, or a streamed body never read
        return False
    error = payload.get("error") if isinstance(payload, dict) else None
    return isinstance(error, dict) and _graph_error_refused(error)


def _graph_error_refused(error: dict[str, Any]) -> bool:
    message = error.get("message")
    return (error.get("code") == INVALID_PARAMETER and isinstance(message, str)
            and REFUSAL.search(message) is not None)
