"""Argument values the command line's parser checks (argparse shows the message of a refused one)."""

from __future__ import annotations

from ..setting_checks import PHONE_NUMBER_ID


def _refused(message: str) -> Exception:
    """The error argparse shows as ``message`` for an argument's value."""
    import argparse

    return argparse.ArgumentTypeError(message)


def days(text: str) -> float:
    """A number of days from 0 to a century (``nan``, ``inf`` and ``-1`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 36500:  # also False for nan
        raise _refused(f"{text!r} is not a number of days from 0 to 36500 (e.g. 3 or 0.5)")
    return value


def count(text: str) -> int:
    """A whole number from 1 to 86400 (seconds, or connections)."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 86400):
        raise _refused(f"{text!r} is not a whole number from 1 to 86400")
    return int(text)


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: a free one)."""
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise _refused(f"{text!r} is not a port from 0 to 65535")
    return int(text)


def served_number(text: str) -> tuple[str, int | None]:
    """``ID[:TTL_MINUTES]``: a phone number ID for ``fake-api``, No-Storage with a TTL."""
    phone, colon, minutes = text.partition(":")
    if not PHONE_NUMBER_ID.fullmatch(phone):
        raise _refused(f"{phone!r} is not a phone number ID (1 to 32 digits)")
    if colon and not (minutes.isascii() and minutes.isdigit() and 60 <= int(minutes) <= 43200):
        raise _refused(f"{minutes!r} is not a TTL in whole minutes from 60 to 43200")
    return phone, int(minutes) if colon else None
