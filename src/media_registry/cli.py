"""The ``media-registry`` command: argument parsing and printing only.

Every command is a thin wrapper over a :class:`~media_registry.MediaRegistry` method.
Exit status: 0 ok, 1 an operation failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .errors import InputError, MediaRegistryError
from .models import MediaRecord, Report
from .registry import MediaRegistry

Command = Callable[[argparse.Namespace], int]
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except MediaRegistryError as exc:
        if args.debug:
            raise
        _error(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, not a traceback, even for the unforeseen
        if args.debug:
            raise
        _error(f"unexpected {exc.__class__.__name__}: {exc}; rerun with --debug and report it")
    return 1


def _error(message: str) -> None:
    print(f"media-registry: error: {message}", file=sys.stderr)


def _open(args: argparse.Namespace) -> MediaRegistry:
    return MediaRegistry.from_env(db=args.db)


# -- commands ---------------------------------------------------------------------------


def _attempt(args: argparse.Namespace, action: Callable[..., T], *params: Any, **options: Any) -> T | None:
    """Run one item of a multi-item command; on failure say so in one line and go on."""
    try:
        return action(*params, **options)
    except MediaRegistryError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return None


def _upload(args: argparse.Namespace) -> int:
    failed = 0
    with _open(args) as reg, _progress("uploading") as advance:
        for path in args.paths:
            outcome = _attempt(args, reg.get_or_upload_with_status, path,
                               phone_number_id=args.phone_number_id, mime_type=args.mime_type)
            advance(path)
            if outcome is None:
                failed += 1
                continue
            status = "uploaded" if outcome.uploaded else "cached"
            if args.json:
                print(json.dumps({"media_id": outcome.media_id, "status": status, "path": path}), flush=True)
            else:
                print(f"{outcome.media_id}\t{status}\t{path}", flush=True)
    return 1 if failed else 0


def _refresh(args: argparse.Namespace) -> int:
    with _open(args) as reg, _progress("refreshing") as advance:
        report = reg.refresh_expiring(dry_run=args.dry_run, on_action=advance)
    _print_report(report, args.json)
    return 1 if report.count("failed") else 0


def _delete(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        report = reg.delete(args.target)
    _print_report(report, args.json)
    if report.count("pending"):
        _error("the API could not delete every ID now; `media-registry purge` retries them")
    return 0


def _purge(args: argparse.Namespace) -> int:
    with _open(args) as reg, _progress("purging") as advance:
        report = reg.purge(dry_run=args.dry_run, on_action=advance)
    _print_report(report, args.json)
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from .scheduler import run_daemon  # APScheduler is only needed here

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("apscheduler", "httpx"):  # one line per action is ours to write
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with MediaRegistry.from_env(db=args.db, refresh_interval=args.refresh_every,
                                purge_interval=args.purge_every) as reg:
        run_daemon(reg)
    return 0


def _print_report(report: Report, as_json: bool) -> None:
    for action in report.actions:
        print(action.model_dump_json() if as_json else action.describe())
    if not report.actions and not as_json:
        print("nothing to do")


@contextmanager
def _progress(what: str) -> Iterator[Callable[[object], None]]:
    """A rich progress counter on stderr when it is a terminal; a no-op otherwise."""
    if not sys.stderr.isatty():
        yield lambda _action: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description} {task.completed} done"),
               TimeElapsedColumn())
    # Lines printed meanwhile go above the bar; stdout is left alone when it is piped.
    with Progress(*columns, transient=True, console=Console(stderr=True),
                  redirect_stdout=sys.stdout.isatty()) as progress:
        task = progress.add_task(what, total=None)
        yield lambda _action: progress.advance(task)


def _download(args: argparse.Namespace) -> int:
    if not args.media_ids and args.webhook is None:
        _error("name at least one MEDIA_ID, or a webhook payload with --webhook FILE (- for stdin)")
        return 2
    with _open(args) as reg:
        results = []
        if args.webhook is not None:
            results.extend(reg.download_webhook(_read_json(args.webhook), args.out))
        attempts = [_attempt(args, reg.download, media_id, args.out) for media_id in args.media_ids]
    failed = attempts.count(None)
    results.extend(result for result in attempts if result is not None)
    for result in results:
        status = "downloaded" if result.fetched else "present"
        if args.json:
            print(result.model_dump_json())
        else:
            print(f"{result.media_id}\t{status}\t{result.path}")
    return 1 if failed else 0


def _read_json(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as exc:
        raise InputError(f"{source}: cannot read the webhook payload ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: the webhook payload is not JSON ({exc.msg}, line {exc.lineno})") from None


def _ls(args: argparse.Namespace) -> int:
    within = timedelta(days=args.expiring) if args.expiring is not None else None
    with _open(args) as reg:
        records = reg.records(expiring_within=within)
    if args.json:
        for record in records:
            print(record.model_dump_json(exclude={"history"}))
        return 0
    rows = [
        (r.phone_number_id or "-", r.sha256[:12], r.media_id or "-", r.mime_type,
         _size(r.size_bytes), _when(r.uploaded_at), _when(r.expires_at), ", ".join(r.paths) or "-")
        for r in records
    ]
    _table(("PHONE NUMBER", "SHA256", "MEDIA ID", "TYPE", "SIZE", "UPLOADED (UTC)",
            "EXPIRES (UTC)", "PATHS"), rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        record = reg.lookup(args.target)
    if record is None:
        _error(f"{args.target}: not in the registry; upload it first, or check the path, "
               "sha256 or media ID")
        return 1
    if args.json:
        print(record.model_dump_json())
        return 0
    _print_record(record)
    return 0


def _print_record(record: MediaRecord) -> None:
    fields = {
        "sha256": record.sha256,
        "type": record.mime_type,
        "size": _size(record.size_bytes),
        "phone number": record.phone_number_id or "-",
        "media ID": record.media_id or "-",
        "uploaded": _when(record.uploaded_at),
        "expires": _when(record.expires_at),
        "deleted": _when(record.deleted_at),
    }
    for name, value in fields.items():
        print(f"{name + ':':14}{value}")
    for path in record.paths:
        print(f"{'path:':14}{path}")
    print("history:")
    for event in record.history:
        parts = [_when(event.at), event.action, event.media_id, event.path, event.detail]
        print("  " + "  ".join(p for p in parts if p))


def _stats(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        counts = reg.stats()
    if args.json:
        print(json.dumps(counts))
    else:
        by_phone = counts.pop("by_phone_number")
        for name, value in counts.items():
            print(f"{name + ':':18}{value}")
        for phone, numbers in by_phone.items():
            print(f"number {phone}: {numbers['live_ids']} live, {numbers['expiring_ids']} expiring")
    return 0


def _init(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        print(f"registry ready at {reg.settings.db}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .dburl import PostgresURL
    from .migrate import migrate_to_postgres

    settings = load_settings(db=args.db)
    copies = migrate_to_postgres(settings.db, args.to, host_id=settings.host_id)
    for copy in copies:
        print(f"{copy.table + ':':10}{copy.copied_rows} of {copy.source_rows} rows")
    print(f"migrated {settings.db} into {PostgresURL(args.to)} as host {settings.host_id}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # the demo pulls in the local server; only load it here

    for line in run_demo():
        print(line, flush=True)
    return 0


# -- formatting -------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:g} {unit}"
        size = round(size / 1000, 1)  # type: ignore[assignment]
    return f"{size:g} GB"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


# -- parser -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="media-registry",
        description="Media IDs for the WhatsApp Cloud API that are valid now, uploaded once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--db", help="registry file (default: $MEDIA_REGISTRY_DB or ./media-registry.db)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=run)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="JSON lines instead of text")
        return sub

    upload = command("upload", _upload, "get or upload each file; print '<media_id> <status> <path>'")
    upload.add_argument("paths", nargs="+", metavar="PATH")
    upload.add_argument("--phone-number-id", help="default: $WHATSAPP_PHONE_NUMBER_ID")
    upload.add_argument("--mime-type", help="assert the type (it must agree with the bytes)")

    ls = command("ls", _ls, "list contents with their current media IDs")
    ls.add_argument("--expiring", type=float, metavar="DAYS", help="only IDs expiring within DAYS")

    show = command("show", _show, "one content with its paths and history")
    show.add_argument("target", metavar="PATH|SHA256|MEDIA_ID")

    refresh = command("refresh", _refresh, "upload again the IDs that expire within refresh_before")
    refresh.add_argument("--dry-run", action="store_true", help="only say what would be uploaded")

    delete = command("delete", _delete, "forget a content and delete its media IDs at the API")
    delete.add_argument("target", metavar="PATH|SHA256|MEDIA_ID")

    purge = command("purge", _purge, "delete vanished and deleted content remotely; drop expired IDs")
    purge.add_argument("--dry-run", action="store_true", help="only say what would be done")

    download = command("download", _download, "fetch inbound media, verified, written atomically")
    download.add_argument("media_ids", nargs="*", metavar="MEDIA_ID")
    download.add_argument("--out", metavar="DIR", help="folder (default: $MEDIA_REGISTRY_BLOB_DIR)")
    download.add_argument("--webhook", metavar="FILE", help="download the media of a webhook payload (- for stdin)")

    daemon = command("daemon", _daemon, "run refresh and purge on a schedule until SIGTERM/SIGINT",
                     json_flag=False)
    daemon.add_argument("--refresh-every", metavar="DURATION",
                        help="seconds or ISO 8601 (default: $MEDIA_REGISTRY_REFRESH_INTERVAL or PT1H)")
    daemon.add_argument("--purge-every", metavar="DURATION",
                        help="seconds or ISO 8601 (default: $MEDIA_REGISTRY_PURGE_INTERVAL or PT1H)")

    command("stats", _stats, "counts and health of the registry")
    command("init", _init, "create the registry file", json_flag=False)
    migrate = command("migrate", _migrate, "copy this SQLite registry into PostgreSQL (the file is left untouched)",
                      json_flag=False)
    migrate.add_argument("--to", required=True, metavar="URL", help="postgresql://user:password@host:port/dbname")

    command("demo", _demo, "run the main job end to end on a built-in local Graph API",
            json_flag=False)
    return parser
