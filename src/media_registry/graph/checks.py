"""The Graph client's own settings, checked: its API base and Meta's media hosts.
Each check raises ValueError; :func:`configured` turns that into a ConfigError naming the setting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigError
from .urls import is_loopback, parse_url

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_api_base(api_base: str) -> str:
    """``api_base`` without its trailing slash; ValueError unless https, or http on loopback."""
    url = parse_url(api_base, ValueError)
    if url.scheme == "https" and url.host:
        return api_base.rstrip("/")
    if url.scheme == "http" and is_loopback(url.host):
        return api_base.rstrip("/")
    raise ValueError(
        "must start with https:// (http:// only for a local test server on 127.0.0.1, ::1 or "
        "localhost: anything else would carry the token in clear text)"
    )


def check_media_hosts(suffixes: Iterable[str]) -> tuple[str, ...]:
    """Host suffixes, lower-cased; ValueError unless each is a dot and a domain (``.fbsbx.com``):
    ``fbsbx.com`` would also match ``evilfbsbx.com``, an empty one every host."""
    checked = []
    for suffix in suffixes:
        labels = suffix.lower().split(".")
        if labels[0] != "" or len(labels) < 3 or not all(_HOST_LABEL.match(label) for label in labels[1:]):
            raise ValueError(
                f"{suffix!r} is not a host suffix: write a dot and a domain, e.g. \".fbsbx.com\""
            )
        checked.append(suffix.lower())
    return tuple(checked)



def configured(check: Callable[[Any], Any], value: Any, name: str) -> Any:
    """``check(value)``, or ConfigError naming the setting ``name`` with the check's reason."""
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"invalid {name}: {exc}") from None
