"""What the command line prints: one-line errors, JSON lines, reports, progress, and text made safe
for a terminal. Imported on every run, so it imports only what every run needs."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

TYPE_CHECKING = False  # without `typing`, which alone costs a fifth of --version
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from datetime import datetime
    from typing import Any

    from ..models import Report

# Library messages name Python arguments; on the command line the same hint names a flag.
CLI_HINTS = {
    "pass phone_number_id=": "pass --phone-number-id",
    " (or pass token=...)": "",  # no flag: a token on the command line would show in `ps`
}


def error(message: str) -> None:
    """Say what went wrong in one line on stderr, secrets redacted, hints naming flags."""
    from ..errors import one_line, redact

    message = printable(one_line(redact(message)))
    for python, cli in CLI_HINTS.items():
        message = message.replace(python, cli)
    print(f"media-registry: error: {message}", file=sys.stderr)


def is_url_arg(given: str) -> bool:
    """Whether a command-line argument names a URL rather than a file."""
    # The check of media_registry.content.sources.is_url, without importing httpx on a cache hit.
    return given[:8].lower().startswith(("https://", "http://"))


def print_json(data: Mapping[str, Any], flush: bool = False) -> None:
    """One JSON line: the record's own keys, times as ISO-8601 UTC ending in Z."""
    import json

    print(json.dumps(data, ensure_ascii=False, default=_json_value), flush=flush)


def _json_value(value: object) -> str:
    from datetime import datetime, timezone

    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\t``, ``\\x1b``): a file
    name must not forge a line or a column of the output, nor drive the terminal."""
    if text.isprintable():
        return text
    import unicodedata

    return "".join(char if char.isprintable() or unicodedata.category(char) == "Zs"
                   else char.encode("unicode_escape", "backslashreplace").decode("ascii") for char in text)


def when(moment: datetime | None) -> str:
    """A time as the listings print it, to the minute; ``-`` for none."""
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def size(size: int) -> str:
    """A size in bytes as people read it: ``12 B``, ``3.4 MB``."""
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:g} {unit}"
        size = round(size / 1000, 1)  # type: ignore[assignment]
    return f"{size:g} GB"


def print_report(report: Report, as_json: bool) -> None:
    """One line per action of a report (JSON lines with ``as_json``)."""
    for action in report.actions:
        if as_json:
            print_json(action.model_dump())
        else:
            print(printable(action.describe()))
    if not report.actions and not as_json:
        print("nothing to do")


@contextmanager
def progress(what: str, total: int | None = None) -> Iterator[Callable[[object], None]]:
    """A rich progress line on stderr when it is a terminal (``uploading 37/50, 12/s``);
    a no-op otherwise."""
    if not sys.stderr.isatty():
        yield lambda _action: None
        return
    import time

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    # Lines printed meanwhile go above the bar; stdout is left alone when it is piped.
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  transient=True, console=Console(stderr=True),
                  redirect_stdout=sys.stdout.isatty()) as progress:
        task = progress.add_task(what, total=total)

        def advance(_action: object) -> None:
            done = int(progress.tasks[task].completed) + 1
            rate = done / max(time.monotonic() - started, 1e-3)
            count = f"{done}/{total}" if total else str(done)
            progress.update(task, advance=1, description=f"{what} {count}, {rate:.0f}/s")

        yield advance
