"""The command line's arguments: those of the commands a shell script runs most, read
without argparse, and the values argparse checks for the parser.

``upload PATH...``, ``ls``, ``show TARGET`` and ``stats`` with plain options pay the start-up
on every call, and argparse (with gettext, which looks for translations each time it builds
a parser) is a large part of it. For those arguments, this module gives the attributes
argparse would give; anything else (help, a misspelt or abbreviated option, an option
argparse may read another way, an error) returns None, and argparse parses it, so every
message stays argparse's own.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..setting_checks import PHONE_NUMBER_ID

TYPE_CHECKING = False  # without `typing`: this module is start-up
if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Iterator, Sequence

# The flags each command takes here, by the attribute each sets (any other flag: argparse).
_FLAGS = {"--json": "json", "--debug": "debug"}
_UPLOAD_FLAGS = {**_FLAGS, "-q": "quiet", "--quiet": "quiet"}
# Each command read here: its flags, and how many positional arguments it takes (at least, at most).
_COMMANDS: dict[str, tuple[dict[str, str], int, int | None]] = {
    "upload": (_UPLOAD_FLAGS, 1, None), "ls": (_FLAGS, 0, 0), "show": (_FLAGS, 1, 1), "stats": (_FLAGS, 0, 0),
}
# What argparse sets for each command when no flag is given.
_DEFAULTS: dict[str, dict[str, object]] = {
    "upload": {"phone_number_id": None, "mime_type": None, "recursive": False, "quiet": False},
    "ls": {"expiring": None},
    "show": {},
    "stats": {},
}
_POSITIONALS = {"upload": "paths", "show": "target"}


def plain_args(argv: Sequence[str]) -> Namespace | None:
    """The arguments as argparse parses them, for a plain run of a command named above;
    None for anything else."""
    values: dict[str, object] = {"db": None, "debug": False, "json": False}
    given = iter(argv)
    command = _leading_options(given, values)
    if command not in _COMMANDS:
        return None
    flags, fewest, most = _COMMANDS[command]
    values.update(_DEFAULTS[command], command=command, json_applies=True)
    positionals: list[str] = []
    ended = False  # an option after the positionals ends them: argparse refuses any more
    for arg in given:
        if arg == "-" or not arg.startswith("-"):
            if ended:
                return None
            positionals.append(arg)
        elif not _option(arg, given, flags, values):
            return None
        else:
            ended = bool(positionals)
    if not fewest <= len(positionals) <= (len(positionals) if most is None else most):
        return None
    if command in _POSITIONALS:
        values[_POSITIONALS[command]] = positionals if most is None else positionals[0]
    return SimpleNamespace(**values)  # type: ignore[return-value]  # argparse.Namespace's attributes


def _leading_options(given: Iterator[str], values: dict[str, object]) -> str | None:
    """Read the options before the command; the command (None if an option is not read here)."""
    for arg in given:
        if not arg.startswith("-"):
            return arg
        if not _option(arg, given, _FLAGS, values):
            return None
    return None


def _option(arg: str, given: Iterator[str], flags: dict[str, str], values: dict[str, object]) -> bool:
    """Read one option into ``values`` (``--db`` takes the next argument); False if it is not
    one read here."""
    if arg.startswith("--db="):
        values["db"] = arg[5:]
    elif arg == "--db":
        db = next(given, None)
        if db is None or db.startswith("-"):
            return False  # argparse's error, or a value it may read otherwise
        values["db"] = db
    elif arg in flags:
        values[flags[arg]] = True
    else:
        return False
    return True


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
