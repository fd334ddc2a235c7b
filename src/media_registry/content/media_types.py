"""What a file is, judged by its bytes, and whether WhatsApp takes it.

The type is sniffed from magic bytes (the ``filetype`` library plus the checks it lacks:
OLE2 and OOXML Office files, 3GPP, Opus in Ogg, animated WebP, plain text). The file name
only breaks the tie where the bytes cannot: an OLE2 container is a .doc, .xls or .ppt.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import filetype

from ..errors import MediaTooLarge, MislabelledMedia, UnsupportedMedia

SNIFF_BYTES = 8192

MB = 1_000_000  # WhatsApp's limits are read as decimal units: never above what Meta means.
KB = 1_000

DOC = "application/msword"
XLS = "application/vnd.ms-excel"
PPT = "application/vnd.ms-powerpoint"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"

KIND_BY_MIME = {
    "image/jpeg": "image",
    "image/png": "image",
    "image/webp": "sticker",
    "audio/aac": "audio",
    "audio/amr": "audio",
    "audio/mpeg": "audio",
    "audio/mp4": "audio",
    "audio/ogg": "audio",
    "video/mp4": "video",
    "video/3gpp": "video",
    "text/plain": "document",
    "application/pdf": "document",
    DOC: "document",
    XLS: "document",
    PPT: "document",
    DOCX: "document",
    XLSX: "document",
    PPTX: "document",
}

MAX_BYTES = {
    "image": 5 * MB,
    "audio": 16 * MB,
    "video": 16 * MB,
    "document": 100 * MB,
    "sticker": 100 * KB,
    "animated sticker": 500 * KB,
}

OLE2_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")
OLE2_BY_SUFFIX = {".doc": DOC, ".xls": XLS, ".ppt": PPT}
OOXML_BY_FOLDER = {"word/": DOCX, "xl/": XLSX, "ppt/": PPTX}
# filetype names some WhatsApp-compatible variants differently.
ALIASES = {"video/x-m4v": "video/mp4", "audio/x-m4a": "audio/mp4"}


@dataclass(frozen=True)
class MediaType:
    """A sniffed, WhatsApp-supported type: MIME type, kind and the size limit that applies."""

    mime_type: str
    kind: str
    max_bytes: int


def supported_types() -> str:
    """What WhatsApp accepts, in words, for messages."""
    return ("JPEG or PNG images, WebP stickers, AAC, AMR, MP3, M4A or Opus audio, MP4 or 3GP "
            "video, PDF, Word, Excel, PowerPoint or plain-text documents")


def sniff(path: Path, head: bytes) -> str | None:
    """The MIME type the bytes show (``head`` is the file's first bytes), or None."""
    if head.startswith(OLE2_MAGIC):
        return OLE2_BY_SUFFIX.get(path.suffix.lower(), "application/x-ole-storage")
    if head[4:8] == b"ftyp" and head[8:10] == b"3g":
        return "video/3gpp"
    guessed = filetype.guess_mime(head)
    if guessed in ("application/zip", *OOXML_BY_FOLDER.values()):
        return _ooxml_type(path) or guessed
    if guessed is None and _looks_like_text(head):
        return "text/plain"
    return ALIASES.get(guessed, guessed) if guessed else None


def _ooxml_type(path: Path) -> str | None:
    # The folder names in the zip tell Word, Excel and PowerPoint apart; the first 8 KB
    # that filetype reads may not reach them.
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    for folder, mime_type in OOXML_BY_FOLDER.items():
        if any(name.startswith(folder) for name in names):
            return mime_type
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed block is still text.
        return exc.start >= len(head) - 3
    return True


def check(path: Path, head: bytes, size: int, declared: str | None = None, *,
          name: str | None = None) -> MediaType:
    """Sniff and validate a file before any request: type supported, size within its limit.

    ``declared`` is a MIME type the caller asserted; it must agree with the bytes (it also
    settles what the bytes cannot, e.g. which Office format an OLE2 container holds).
    ``name`` is how errors name the source when ``path`` is only a temporary copy of it.
    Raises UnsupportedMedia, MislabelledMedia or MediaTooLarge with a one-line reason.
    """
    label = path if name is None else name
    if size == 0:
        raise UnsupportedMedia(f"{label}: the file is empty; WhatsApp needs at least one byte")
    mime_type = _resolve(label, sniff(path, head), declared)
    kind = KIND_BY_MIME[mime_type]
    if mime_type == "audio/ogg" and b"OpusHead" not in head:
        raise UnsupportedMedia(
            f"{label}: Ogg audio without the Opus codec; WhatsApp plays only Opus in Ogg, "
            "convert it (e.g. ffmpeg -c:a libopus)"
        )
    if mime_type == "image/webp" and _is_animated_webp(head):
        kind = "animated sticker"
    limit = MAX_BYTES[kind]
    if size > limit:
        raise MediaTooLarge(
            f"{label}: {size:,} bytes is over WhatsApp's {limit:,}-byte limit for {kind} "
            f"({mime_type}); compress it or send a smaller file"
        )
    return MediaType(mime_type=mime_type, kind=kind.split()[-1], max_bytes=limit)


def _resolve(path: str | Path, sniffed: str | None, declared: str | None) -> str:
    if declared is not None:
        declared = declared.split(";")[0].strip().lower()
        if declared not in KIND_BY_MIME:
            raise UnsupportedMedia(
                f"{path}: WhatsApp does not accept {declared}; it takes {supported_types()}"
            )
        if sniffed == "application/x-ole-storage" and declared in OLE2_BY_SUFFIX.values():
            return declared
        if sniffed != declared:
            raise MislabelledMedia(
                f"{path}: declared {declared} but the bytes are {sniffed or 'unrecognised'}; "
                "drop the declared type or fix the file"
            )
        return declared
    if sniffed == "application/x-ole-storage":
        raise UnsupportedMedia(
            f"{path}: an old-style Office file with no .doc/.xls/.ppt name; rename it "
            "or pass its MIME type"
        )
    if sniffed not in KIND_BY_MIME:
        found = sniffed or "of an unrecognised type"
        raise UnsupportedMedia(
            f"{path}: content is {found}, which WhatsApp does not accept; convert it to "
            f"{supported_types()}"
        )
    return sniffed


def _is_animated_webp(head: bytes) -> bool:
    # An extended (VP8X) WebP sets bit 1 of its flags byte when it holds an animation.
    return head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x02)


ZIP_MAGIC = b"PK\x03\x04"


def size_limit(head: bytes) -> int:
    """The most WhatsApp takes of content that starts with ``head``: the limit of the kind
    those bytes show (the larger one for stickers), else the largest limit of all. A
    download or a stream is cut off as soon as it exceeds this, before the exact check."""
    if head.startswith((OLE2_MAGIC, ZIP_MAGIC)):  # Office files: only the whole file tells more
        return MAX_BYTES["document"]
    kind = KIND_BY_MIME.get(sniff(Path(), head) or "")
    if kind == "sticker":
        return MAX_BYTES["animated sticker"]
    return MAX_BYTES[kind] if kind else max(MAX_BYTES.values())
