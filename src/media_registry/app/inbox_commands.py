"""The inbox's commands: ``inbox`` (inbound items not archived, or lost), ``webhook``
(record a saved payload and handle its statuses) and ``archive --once`` (drain the archive
queue under the daemon's lock, for cron)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .commands import _read_json, open_registry
from .console import error, print_json, print_report, printable, when

INBOX_COLUMNS = {"STATE": 8, "MEDIA ID": 16, "PHONE NUMBER": 15, "EXPIRES (UTC)": 16, "REASON": 0}


def _inbox(args: argparse.Namespace) -> int:
    with open_registry(args, create=False) as reg:
        items = reg.webhooks.inbox(("pending", "failed", "lost"))
    if not args.json:
        print("  ".join(name.ljust(width) for name, width in INBOX_COLUMNS.items()).rstrip())
    for item in items:
        if args.json:
            print_json(item._asdict())
        else:
            cells = (item.state, item.media_id, item.phone_number_id or "-", when(item.expires_at),
                     printable(item.reason or ""))
            print("  ".join(cell.ljust(width) for cell, width in zip(cells, INBOX_COLUMNS.values())).rstrip())
    return 0


def _webhook(args: argparse.Namespace) -> int:
    payload = _read_json(args.file)
    with open_registry(args) as reg:
        report = reg.handle_webhook(payload, on_invalid=error)
    if args.json:
        print_json(report.model_dump())
        return 1 if report.invalid else 0
    for media_id in report.recorded:
        print(f"{media_id}\trecorded")
    for media_id in report.duplicates:
        print(f"{media_id}\talready recorded")
    for repair in report.repairs:
        print(f"{repair.media_id}\t{repair.action}\t(message {printable(repair.message_id)} failed: "
              f"code {repair.code})")
    return 1 if report.invalid else 0


def _archive(args: argparse.Namespace) -> int:
    from .scheduler import only_daemon

    with open_registry(args) as reg, only_daemon(reg):
        report = reg.archive_pending()
    print_report(report, args.json)
    return 1 if report.count("failed") else 0


INBOX_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inbox": _inbox, "webhook": _webhook, "archive": _archive,
}
