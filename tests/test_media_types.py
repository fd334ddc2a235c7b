"""Sniffing by bytes and WhatsApp's type and size table, checked before any request."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from media_registry import MediaTooLarge, MislabelledMedia, UnsupportedMedia
from media_registry.content.media_types import DOC, MAX_BYTES, PPTX, XLSX, check, sniff
from media_registry.testing import SAMPLE_HEADS, sample_media


@pytest.mark.parametrize("mime_type", sorted(SAMPLE_HEADS))
def test_each_supported_type_is_sniffed_from_its_bytes(tmp_path: Path, mime_type: str) -> None:
    path = tmp_path / "no-extension"
    data = sample_media(mime_type, salt="x")
    path.write_bytes(data)
    assert check(path, data, len(data)).mime_type == mime_type


def test_the_name_does_not_decide_the_type(tmp_path: Path) -> None:
    data = sample_media("image/png")
    assert check(tmp_path / "photo.jpg", data, len(data)).mime_type == "image/png"


def _zip(*names: str, padding: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "x" * padding)
        for name in names:
            archive.writestr(name, "<x/>")
    return buffer.getvalue()


@pytest.mark.parametrize(("folder", "expected"), [("xl/workbook.xml", XLSX), ("ppt/presentation.xml", PPTX)])
def test_ooxml_is_told_apart_even_when_its_folders_come_late(tmp_path: Path, folder: str, expected: str) -> None:
    path = tmp_path / "report.zip"
    path.write_bytes(_zip(folder, padding=20_000))
    assert sniff(path, path.read_bytes()[:8192]) == expected


def test_a_plain_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "archive.docx"
    data = _zip("readme.txt")
    path.write_bytes(data)
    with pytest.raises(UnsupportedMedia, match="application/zip"):
        check(path, data, len(data))


def test_ole2_office_files_take_their_format_from_the_name_or_the_caller(tmp_path: Path) -> None:
    data = bytes.fromhex("D0CF11E0A1B11AE1") + bytes(600)
    assert check(tmp_path / "old.doc", data, len(data)).mime_type == DOC
    with pytest.raises(UnsupportedMedia, match="rename it or pass its MIME type"):
        check(tmp_path / "old.bin", data, len(data))
    assert check(tmp_path / "old.bin", data, len(data), declared=DOC).mime_type == DOC


def test_a_declared_type_must_agree_with_the_bytes(tmp_path: Path) -> None:
    data = sample_media("image/png")
    with pytest.raises(MislabelledMedia, match="declared image/jpeg but the bytes are image/png"):
        check(tmp_path / "logo.png", data, len(data), declared="image/jpeg")
    assert check(tmp_path / "logo.png", data, len(data), declared="image/png").kind == "image"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"GIF89a" + bytes(40), "image/gif"),
        (b"\x00\x01\x02\x03binary", "unrecognised"),
        (b"OggS\x00\x02" + bytes(22) + b"\x01vorbis", "Opus"),
    ],
)
def test_unsupported_content_says_why(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(UnsupportedMedia, match=reason):
        check(tmp_path / "x.bin", data, len(data))


@pytest.mark.parametrize(
    ("mime_type", "kind"),
    [("image/jpeg", "image"), ("audio/mpeg", "audio"), ("video/mp4", "video"),
     ("application/pdf", "document"), ("image/webp", "sticker")],
)
def test_each_kind_has_its_size_limit(tmp_path: Path, mime_type: str, kind: str) -> None:
    head = sample_media(mime_type)
    limit = MAX_BYTES[kind]
    assert check(tmp_path / "f", head, limit).kind == kind
    with pytest.raises(MediaTooLarge, match=f"limit for {kind}"):
        check(tmp_path / "f", head, limit + 1)


def test_animated_stickers_get_the_larger_limit(tmp_path: Path) -> None:
    head = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x02" + bytes(20) + b"ANIM"
    assert check(tmp_path / "s.webp", head, 400_000).kind == "sticker"
    with pytest.raises(MediaTooLarge, match="animated sticker"):
        check(tmp_path / "s.webp", head, MAX_BYTES["animated sticker"] + 1)
