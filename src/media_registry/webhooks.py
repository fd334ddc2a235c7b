"""What WhatsApp webhook payloads carry: media (``entry[].changes[].value.messages[]``) and
message statuses (``...value.statuses[]``); and the check of their signature."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pydantic

from .errors import InputError
from .models import InboundMedia, graph_id, sha256_hex

MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")

OnInvalid = Callable[[str], None]
log = logging.getLogger("media_registry.webhooks")


def media_in_webhook(payload: Any, on_invalid: OnInvalid | None = None) -> Iterator[InboundMedia]:
    """Every media item in a webhook payload (a decoded JSON dict), in message order.

    Messages without media (text, reactions, statuses) are passed over. A part of the wrong
    shape (a list or string where an object belongs, a media message without an ID, a media
    ID that is not digits and would reach a request path, a sha256 that is neither hex nor
    base64, a field of the wrong type) is skipped, and the other items still come:
    ``on_invalid`` gets one line naming it (default: a warning on the
    ``media_registry.webhooks`` logger).
    """
    report = on_invalid or log.warning
    if not isinstance(payload, dict):
        report(f"webhook payload: a JSON {_json_type(payload)}, not an object; nothing to download")
        return
    for in_entry, entry in _objects(payload.get("entry"), "webhook entry", report):
        for in_change, change in _objects(entry.get("changes"), f"{in_entry}.changes", report):
            value = change.get("value")
            if not isinstance(value, dict):
                if value is not None:
                    report(f"{in_change}.value: a JSON {_json_type(value)}, not an object; skipped")
                continue
            metadata = value.get("metadata")
            phone = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            for where, message in _objects(value.get("messages"), f"{in_change}.value.messages", report):
                try:
                    item = _media(message, phone)
                except ValueError as exc:  # pydantic's ValidationError too
                    report(f"{where}: {exc}; skipped")
                    continue
                if item is not None:
                    yield item


class FailedStatus(NamedTuple):
    """A ``failed`` status of a message this business sent, with its first error."""
    message_id: str
    phone_number_id: str | None
    code: int | None
    error: str


class Repair(pydantic.BaseModel):
    """What a failed send with a media error did: ``invalidated`` (the ID is no longer
    served: the next send uploads anew), or ``reported`` (the content was repaired on this
    number lately already, so the failure is about something else, e.g. a type the
    recipient's client refused)."""

    message_id: str
    media_id: str
    phone_number_id: str
    code: int
    action: str
    error: str


class WebhookReport(pydantic.BaseModel):
    """What :meth:`~media_registry.MediaRegistry.handle_webhook` did with one payload."""

    recorded: list[str] = []  # media IDs newly recorded for the archive
    duplicates: list[str] = []  # media IDs recorded before (a redelivered webhook)
    invalid: list[str] = []  # one line per malformed item, which was skipped
    statuses: int = 0  # message statuses read
    repairs: list[Repair] = []


def verify_signature(body: bytes, header: str | None, app_secret: str) -> bool:
    """Whether ``header`` (``X-Hub-Signature-256``: ``sha256=`` and the hex HMAC-SHA256 of the
    raw ``body`` keyed with the app secret) signs ``body``; compared in constant time. An
    empty secret verifies nothing: anyone could make its signatures."""
    if not app_secret or not header or not header.isascii():
        return False
    scheme, _, given = header.strip().partition("=")
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return scheme.lower() == "sha256" and hmac.compare_digest(given.lower().encode(), expected.encode())


def failed_statuses(payload: Any, on_invalid: OnInvalid | None = None) -> Iterator[FailedStatus]:
    """Every ``failed`` message status in a webhook payload, with its first error's code;
    statuses of the wrong shape go to ``on_invalid`` (as for :func:`media_in_webhook`)."""
    report = on_invalid or log.warning
    for phone, where, status in _values(payload, "statuses", report):
        message_id = status.get("id")
        if status.get("status") != "failed":
            continue
        if not isinstance(message_id, str) or not message_id:
            report(f"{where}: a failed status without a message ID; skipped")
            continue
        errors = status.get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = first.get("code")
        details = first.get("error_data", {}).get("details") if isinstance(first.get("error_data"), dict) else None
        error = str(details or first.get("message") or first.get("title") or "no error given")[:500]
        yield FailedStatus(message_id, phone, code if isinstance(code, int) and not isinstance(code, bool)
                           else None, error)


def count_statuses(payload: Any) -> int:
    """How many message statuses a payload carries (of any shape)."""
    return sum(1 for _ in _values(payload, "statuses", lambda _line: None))


def _values(payload: Any, field: str, report: OnInvalid) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """The objects of ``value.<field>`` across a payload, each with its number and place."""
    if not isinstance(payload, dict):
        return
    for in_entry, entry in _objects(payload.get("entry"), "webhook entry", lambda _line: None):
        for in_change, change in _objects(entry.get("changes"), f"{in_entry}.changes", lambda _line: None):
            value = change.get("value")
            if not isinstance(value, dict):
                continue
            metadata = value.get("metadata")
            phone = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            for where, child in _objects(value.get(field), f"{in_change}.value.{field}", report):
                yield phone, where, child


def _objects(children: Any, where: str, report: OnInvalid) -> Iterator[tuple[str, dict[str, Any]]]:
    """The objects of a JSON list, each with its place (``webhook entry[0].changes[1]``)."""
    if children is None:
        return
    if not isinstance(children, list):
        report(f"{where}: a JSON {_json_type(children)}, not a list; skipped")
        return
    for index, child in enumerate(children):
        if isinstance(child, dict):
            yield f"{where}[{index}]", child
        else:
            report(f"{where}[{index}]: a JSON {_json_type(child)}, not an object; skipped")


def _media(message: dict[str, Any], phone_number_id: Any) -> InboundMedia | None:
    """The media of one message, None for a message without media; ValueError if malformed."""
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in MEDIA_KINDS:
        return None
    media = message.get(kind)
    if not isinstance(media, dict) or not _is_id(media.get("id")):
        raise ValueError(f"a message of type {kind} without a media ID")
    try:
        media_id = graph_id(str(media["id"]), "webhook media ID")
    except InputError as exc:
        raise ValueError(str(exc)) from None
    sha256 = media.get("sha256")
    try:
        digest = sha256_hex(sha256) if sha256 else None
    except (ValueError, AttributeError):  # AttributeError: not a string at all
        raise ValueError(f"media {media_id}: the sha256 {str(sha256)[:80]!r} is neither hex "
                         "nor base64 of 32 bytes") from None
    try:
        return InboundMedia(
            media_id=media_id,
            kind=kind,
            mime_type=media.get("mime_type"),
            sha256=digest,
            caption=media.get("caption"),
            filename=media.get("filename"),
            animated=media.get("animated"),
            voice=media.get("voice"),
            sender=message.get("from"),
            message_id=message.get("id"),
            phone_number_id=phone_number_id,
            timestamp=message.get("timestamp"),
            url=media.get("url"),
        )
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(map(str, error["loc"]))
        raise ValueError(f"media {media_id}: {field}: {error['msg'].lower()}") from None


def _is_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != ""


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
