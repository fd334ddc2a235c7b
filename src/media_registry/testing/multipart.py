"""The multipart/form-data parser the fake Graph API reads uploads with."""

from __future__ import annotations

import re


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """Parse multipart/form-data into {name: (value, part content type)}."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in body.split(b"--" + match[1].encode())[1:-1]:
        head, _, value = part[2:].partition(b"\r\n\r\n")
        headers = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', headers)
        part_type = re.search(r"(?im)^content-type:\s*([^\r\n;]+)", headers)
        if name:
            fields[name[1]] = (value[:-2], part_type[1].strip() if part_type else None)
    return fields
