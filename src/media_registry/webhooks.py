"""The media that WhatsApp webhook payloads carry (``entry[].changes[].value.messages[]``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

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
