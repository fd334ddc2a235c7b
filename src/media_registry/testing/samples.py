"""Sample media: the smallest bytes that media-registry and the Graph API recognise as each type."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable

from ..errors import UnsupportedMedia


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png() -> bytes:
    pixels = b"".join(b"\x00" + b"\x25\xd3\x66" * 4 for _ in range(4))  # 4x4, one green
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(pixels)) + _png_chunk(b"IEND", b""))


def _docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("word/document.xml", '<?xml version="1.0"?><document/>')
    return buffer.getvalue()


# The smallest heads that identify each type; enough for sniffing and for the fake API.
SAMPLE_HEADS: dict[str, Callable[[], bytes]] = {
    "image/png": _png,
    "image/jpeg": lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "image/webp": lambda: b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00",
    "audio/mpeg": lambda: b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "audio/ogg": lambda: b"OggS\x00\x02" + bytes(22) + b"OpusHead\x01\x01",
    "audio/amr": lambda: b"#!AMR\n\x3c\x48\xf5\x1f\x96\x66\x79\xe1",
    "audio/aac": lambda: b"\xff\xf1\x50\x80\x02\x1f\xfc",
    "audio/mp4": lambda: b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom",
    "video/mp4": lambda: b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "video/3gpp": lambda: b"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x003gp4",
    "application/pdf": lambda: b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "text/plain": lambda: b"Opening hours: Mon-Fri 9:00-18:00\n",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": _docx,
}


def sample_media(mime_type: str, *, size: int = 0, salt: str = "") -> bytes:
    """Bytes that media-registry (and the Graph API) recognise as ``mime_type``.

    ``salt`` makes distinct contents of one type; ``size`` pads the result to that many
    bytes (zeros, or spaces for text), e.g. to cross a size limit.
    """
    if mime_type not in SAMPLE_HEADS:
        raise UnsupportedMedia(
            f"sample_media: no sample for {mime_type!r}; pick one of {', '.join(sorted(SAMPLE_HEADS))}"
        )
    data = SAMPLE_HEADS[mime_type]()
    filler = b" " if mime_type == "text/plain" else b"\x00"
    if salt:
        data += (b"\n" if mime_type == "text/plain" else b"\x00") + salt.encode()
    return data + filler * max(0, size - len(data))
