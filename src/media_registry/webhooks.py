"""The media that WhatsApp webhook payloads carry (``entry[].changes[].value.messages[]``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .models import InboundMedia, graph_id, sha256_hex

MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")


def media_in_webhook(payload: dict[str, Any]) -> Iterator[InboundMedia]:
    """Every media item in a webhook payload (a decoded JSON dict), in message order.

    Messages without media (text, reactions, statuses) are passed over; a media ID that is
    not digits raises InputError (it would go into a request path).
    """
    for entry in payload.get("entry") or ():
        for change in entry.get("changes") or ():
            value = change.get("value") or {}
            phone_number_id = (value.get("metadata") or {}).get("phone_number_id")
            for message in value.get("messages") or ():
                kind = message.get("type")
                media = message.get(kind) if kind in MEDIA_KINDS else None
                if not isinstance(media, dict) or "id" not in media:
                    continue
                yield InboundMedia(
                    media_id=graph_id(str(media["id"]), "webhook media ID"),
                    kind=kind,
                    mime_type=media.get("mime_type"),
                    sha256=sha256_hex(media["sha256"]) if media.get("sha256") else None,
                    caption=media.get("caption"),
                    filename=media.get("filename"),
                    animated=media.get("animated"),
                    voice=media.get("voice"),
                    sender=message.get("from"),
                    message_id=message.get("id"),
                    phone_number_id=phone_number_id,
                )
