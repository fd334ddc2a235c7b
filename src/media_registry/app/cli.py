"""The ``media-registry`` command: argument parsing and printing only.

Every command is a thin wrapper over a :class:`~media_registry.MediaRegistry` method.
Exit status: 0 ok, 1 an operation failed, 2 bad usage.
"""

from __future__ import annotations

import argparse  # every run parses its arguments
import os
import sys
from contextlib import contextmanager

from .. import __version__
from ..setting_checks import PHONE_NUMBER_ID

# Start-up is most of what a cached upload costs a shell script, so this module imports only
# what every run needs; the rest is imported by the commands that use it. (TYPE_CHECKING
# without `typing`, which alone costs a fifth of --version.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from datetime import datetime
    from typing import Any, TypeVar

    from ..models import MediaRecord, Report
    from ..registry import MediaRegistry

    Command = Callable[[argparse.Namespace], int]
    T = TypeVar("T")

# What `serve` and `daemon --metrics-port` import beyond the core: the `serve` extra.
SERVE_EXTRA = ("fastapi", "starlette", "uvicorn", "prometheus_client")

# Library messages name Python arguments; on the command line the same hint names a flag.
CLI_HINTS = {
    "pass phone_number_id=": "pass --phone-number-id",
    " (or pass token=...)": "",  # no flag: a token on the command line would show in `ps`
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)  # exits here for --version and --help
    from ..errors import MediaRegistryError, redact

    if args.json and not args.json_applies:
        _error(f"--json does not apply to {args.command}; leave it out")
        return 2
    try:
        status: int = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in a traceback at exit
        return status
    except BrokenPipeError:  # the reader left (`ls | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, not a traceback, even for the unforeseen
        if args.debug:  # the traceback, with every secret a server may have echoed redacted
            import traceback

            sys.stderr.write(redact("".join(traceback.format_exception(exc))))
        elif isinstance(exc, MediaRegistryError):
            _error(str(exc))
        else:
            _error(f"unexpected {exc.__class__.__name__}: {exc}; rerun with --debug and report it")
    return 1


def _error(message: str) -> None:
    from ..errors import one_line, redact

    message = _printable(one_line(redact(message)))
    for python, cli in CLI_HINTS.items():
        message = message.replace(python, cli)
    print(f"media-registry: error: {message}", file=sys.stderr)


def _open(args: argparse.Namespace, *, create: bool = True) -> MediaRegistry:
    """The registry; read-only commands pass ``create=False`` (never create one)."""
    from ..registry import MediaRegistry

    return MediaRegistry.from_env(db=args.db, create=create)


# -- commands ---------------------------------------------------------------------------


def _attempt(args: argparse.Namespace, action: Callable[..., T], *params: Any, **options: Any) -> T | None:
    """Run one item of a multi-item command; on failure say so in one line and go on."""
    from ..errors import MediaRegistryError

    try:
        return action(*params, **options)
    except MediaRegistryError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return None


def _upload(args: argparse.Namespace) -> int:
    if args.quiet and args.json:
        _error("--quiet and --json do not go together; pick one")
        return 2
    phone = args.phone_number_id
    if phone is not None and not PHONE_NUMBER_ID.fullmatch(phone):  # before the registry is touched
        _error(f"{phone[:80]!r} is not a phone number ID (1 to 32 digits); check the value given")
        return 2
    paths = _upload_paths(args.paths, args.recursive)
    if paths is None:
        return 2
    done = _cache_hits(args, paths)
    if done == len(paths):
        return 0
    failed = 0
    with _open(args) as reg, _progress("uploading", len(paths) - done) as advance:
        for given in paths[done:]:
            source = sys.stdin.buffer if given == "-" else given
            path = _shown(reg, given)
            outcome = _attempt(args, reg.get_or_upload_with_status, source,
                               phone_number_id=args.phone_number_id, mime_type=args.mime_type)
            advance(path)
            if outcome is None:
                failed += 1
            else:
                _print_upload(args, outcome.media_id, "uploaded" if outcome.uploaded else "cached", path)
    return 1 if failed else 0


def _invalidate(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        media_id: str = args.media_id
        if _is_url(media_id):  # the URL's content's current ID
            record = reg.lookup(media_id)
            if record is None or record.media_id is None:
                _error(f"{_shown(reg, media_id)}: no current media ID in the registry; "
                       "check the URL (see: media-registry ls)")
                return 1
            media_id = record.media_id
        reg.invalidate(media_id)
    if args.json:
        _print_json({"media_id": media_id, "status": "invalidated"})
    else:
        print(f"{media_id}\tinvalidated")
    return 0


def _shown(reg: MediaRegistry, given: str) -> str:
    """How a path or URL given on the command line is printed: never with a URL's signature."""
    return reg.sources.key(given) if _is_url(given) else given


def _is_url(given: str) -> bool:
    # The check of media_registry.sources.is_url, without importing httpx on a cache hit.
    return given[:8].lower().startswith(("https://", "http://"))


def _cache_hits(args: argparse.Namespace, paths: Sequence[str]) -> int:
    """Print the leading paths that are cache hits, read without the full settings (start-up
    is most of a cached upload's cost); return how many. A miss leaves the rest to the registry."""
    from ._quick import CacheHits, hit_settings

    settings = hit_settings(os.environ, args.db, args.phone_number_id)
    if settings is None or args.mime_type:
        return 0
    hits = CacheHits(settings)
    try:
        for done, path in enumerate(paths):
            media_id = None if path == "-" or _is_url(path) else hits.media_id(path)
            if media_id is None:
                return done
            _print_upload(args, media_id, "cached", path)
        return len(paths)
    finally:
        hits.close()


def _print_upload(args: argparse.Namespace, media_id: str, status: str, path: str) -> None:
    if args.quiet:
        print(media_id, flush=True)
    elif args.json:
        _print_json({"media_id": media_id, "status": status, "path": path}, flush=True)
    else:
        print(f"{media_id}\t{status}\t{_printable(path)}", flush=True)


def _upload_paths(paths: Sequence[str], recursive: bool) -> list[str] | None:
    """The files to upload: the paths given, or with ``--recursive`` every file under the
    folders given (hidden ones left out); None after saying why when a folder is given without it,
    or ``-`` more than once or with standard input closed."""
    if "-" in paths and (paths.count("-") > 1 or sys.stdin is None):
        _error("-: standard input is read once, and must be open; give - once and pipe the content in")
        return None
    if not recursive:
        for path in paths:
            if os.path.isdir(path):
                _error(f"{path}: is a folder; pass --recursive (-r) to upload every file under it")
                return None
        return list(paths)
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            files.extend(os.path.join(folder, name) for name in sorted(names) if not name.startswith("."))
    return files


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
        _error("the content is marked deleted and never served again, but the API could not "
               "delete every ID now (see why above); `media-registry purge` or the daemon retries them")
        return 1
    return 0


def _purge(args: argparse.Namespace) -> int:
    with _open(args) as reg, _progress("purging") as advance:
        report = reg.purge(dry_run=args.dry_run, on_action=advance)
    _print_report(report, args.json)
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from ..registry import MediaRegistry
    from .scheduler import run_daemon  # APScheduler is only needed here

    metrics = _extra("metrics", "daemon --metrics-port") if args.metrics_port is not None else None
    _log_to_stderr()
    with MediaRegistry.from_env(db=args.db, refresh_interval=args.refresh_every,
                                purge_interval=args.purge_every) as reg:
        if metrics is None:
            run_daemon(reg)
            return 0
        monitor = metrics.Monitor(reg)
        server = metrics.serve_in_background(monitor, args.metrics_port)
        try:
            run_daemon(reg, monitor.observe_pass)
        finally:
            server.shutdown()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    service = _extra("service", "serve")
    _log_to_stderr()
    options = service.Options(allow_roots=tuple(Path(root) for root in args.allow_root),
                              allow_private_urls=args.allow_private_urls,
                              body_timeout=args.body_timeout, graceful_timeout=args.graceful_timeout,
                              limit_concurrency=args.limit_concurrency)
    service.run_service(host=args.host, port=args.port, options=options,
                        run_schedule_too=not args.no_schedule, db=args.db,
                        refresh_interval=args.refresh_every, purge_interval=args.purge_every)
    return 0


def _extra(module: str, command: str) -> Any:
    """Import a module that needs the ``serve`` extra, or say how to install it."""
    import importlib

    from ..errors import ConfigError

    try:
        return importlib.import_module(f"media_registry.app.{module}")
    except ImportError as exc:
        if exc.name not in SERVE_EXTRA:
            raise
        raise ConfigError(f"`{command}` needs the serve extra ({exc.name} is not installed): "
                          "pip install 'media-registry[serve]'") from None


def _log_to_stderr() -> None:
    import logging

    from ..errors import RedactingFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.INFO, handlers=[handler],
                        format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("apscheduler", "httpx"):  # one line per action is ours to write
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _print_report(report: Report, as_json: bool) -> None:
    for action in report.actions:
        if as_json:
            _print_json(action.model_dump())
        else:
            print(_printable(action.describe()))
    if not report.actions and not as_json:
        print("nothing to do")


@contextmanager
def _progress(what: str, total: int | None = None) -> Iterator[Callable[[object], None]]:
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


def _download(args: argparse.Namespace) -> int:
    if not args.media_ids and args.webhook is None:
        _error("name at least one MEDIA_ID, or a webhook payload with --webhook FILE (- for stdin)")
        return 2
    skipped: list[str] = []

    def skip(problem: str) -> None:  # said at once: a later item's error must not swallow it
        skipped.append(problem)
        _error(problem)

    with _open(args) as reg:
        results = []
        if args.webhook is not None:
            results.extend(reg.download_webhook(_read_json(args.webhook), args.out, on_invalid=skip))
        attempts = [_attempt(args, reg.download, media_id, args.out) for media_id in args.media_ids]
    failed = attempts.count(None) + len(skipped)
    results.extend(result for result in attempts if result is not None)
    for result in results:
        status = "downloaded" if result.fetched else "present"
        if args.json:
            _print_json(result.model_dump())
        else:
            print(f"{result.media_id}\t{status}\t{_printable(str(result.path))}")
    return 1 if failed else 0


def _read_json(source: str) -> Any:
    import json

    from ..errors import InputError

    try:
        text = sys.stdin.read() if source == "-" else _read_text(source)
        return json.loads(text)
    except OSError as exc:
        raise InputError(f"{source}: cannot read the webhook payload ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: the webhook payload is not JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise InputError(f"{source}: the webhook payload is nested too deeply to be a webhook") from None


# The listing streams, so its columns cannot be fitted to all the rows: these widths fit
# the usual values, and a longer one only shifts the rest of its own row.
LS_COLUMNS = {"PHONE NUMBER": 15, "SHA256": 12, "MEDIA ID": 16, "STATE": 7, "SIZE": 8,
              "UPLOADED (UTC)": 16, "EXPIRES (UTC)": 16, "TYPE": 15, "PATHS": 0}


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _ls(args: argparse.Namespace) -> int:
    from datetime import timedelta

    within = timedelta(days=args.expiring) if args.expiring is not None else None
    listed = 0
    with _open(args, create=False) as reg:
        for record in reg.records(expiring_within=within):
            if args.json:
                _print_json(record.model_dump(exclude={"history"}))
            else:
                if not listed:
                    _print_row(tuple(LS_COLUMNS))
                _print_row((record.phone_number_id or "-", record.sha256[:12], record.media_id or "-",
                            record.state, _size(record.size_bytes), _when(record.uploaded_at),
                            _when(record.expires_at), record.mime_type, ", ".join(record.paths) or "-"))
            listed += 1
    if not listed:
        print(f"no media ID expires within {args.expiring:g} days" if within is not None
              else "the registry is empty; add files with: media-registry upload FILE", file=sys.stderr)
    return 0


def _print_row(cells: Sequence[str]) -> None:
    print("  ".join(_printable(cell).ljust(width) for cell, width in zip(cells, LS_COLUMNS.values())).rstrip())


def _show(args: argparse.Namespace) -> int:
    with _open(args, create=False) as reg:
        record, shown = reg.lookup(args.target), _shown(reg, args.target)
    if record is None:
        _error(f"{shown}: not in the registry; upload it first, or check the path, "
               "media ID or sha256 (see: media-registry ls)")
        return 1
    if args.json:
        _print_json(record.model_dump())
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
        "state": record.state,
    }
    for name, value in fields.items():
        print(f"{name + ':':14}{_printable(value)}")
    for path in record.paths:
        print(f"{'path:':14}{_printable(path)}")
    print("history:")
    for event in record.history:
        parts = [_when(event.at), event.action, event.media_id, event.path, event.detail]
        print("  " + "  ".join(_printable(p) for p in parts if p))


def _stats(args: argparse.Namespace) -> int:
    with _open(args, create=False) as reg:
        counts = reg.stats()
    if args.json:
        _print_json(counts)
    else:
        by_phone = counts.pop("by_phone_number")
        for name, value in counts.items():
            print(f"{name + ':':18}{value}")
        for phone, numbers in by_phone.items():
            print(f"number {phone}: {numbers['live_ids']} live, {numbers['expiring_ids']} expiring")
    return 0


def _init(args: argparse.Namespace) -> int:
    with _open(args) as reg:
        print(f"registry ready at {_printable(str(reg.settings.db))}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from ..config import load_settings
    from .migrate import migrate_to_postgres, migration_target

    settings = load_settings(db=args.db)
    target, setting = migration_target(args.to, args.to_file, os.environ)
    copies = migrate_to_postgres(settings.db, target, host_id=settings.host_id, setting=setting)
    width = max(len(copy.table) for copy in copies) + 2
    for copy in copies:
        print(f"{copy.table + ':':{width}}{copy.source_rows} rows: {copy.copied} copied, "
              f"{copy.updated} updated, {copy.unchanged} unchanged")
    print(f"migrated {settings.db} into {target} as host {settings.host_id}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # the demo pulls in the local server; only load it here

    for line in run_demo():
        print(line, flush=True)
    return 0


def _fake_api(args: argparse.Namespace) -> int:
    import shlex
    import signal
    import threading

    from ..errors import InputError
    from ..testing import FakeGraphAPI  # the local server: only load it here

    try:
        api = FakeGraphAPI(port=args.port)
    except OSError as exc:
        raise InputError(f"port {args.port}: cannot listen on it ({exc.strerror}); "
                         "pick another --port, or leave it out for a free one") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with api:
        settings = {"WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
                    "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id}
        for name, value in settings.items():
            print(f"export {name}={shlex.quote(value)}")
        sys.stdout.flush()
        print(f"local Graph API serving at {api.origin}; Ctrl-C stops it", file=sys.stderr, flush=True)
        stop.wait()
    return 0


# -- formatting -------------------------------------------------------------------------


def _print_json(data: Mapping[str, Any], flush: bool = False) -> None:
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


def _printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\t``, ``\\x1b``): a file
    name must not forge a line or a column of the output, nor drive the terminal."""
    if text.isprintable():
        return text
    import unicodedata

    return "".join(char if char.isprintable() or unicodedata.category(char) == "Zs"
                   else char.encode("unicode_escape", "backslashreplace").decode("ascii") for char in text)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:g} {unit}"
        size = round(size / 1000, 1)  # type: ignore[assignment]
    return f"{size:g} GB"


# -- parser -----------------------------------------------------------------------------


def _days(text: str) -> float:
    """A number of days from 0 to a century (``nan``, ``inf`` and ``-1`` are refused)."""
    try:
        days = float(text)
    except ValueError:
        days = -1
    if not 0 <= days <= 36500:  # also False for nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 0 to 36500 (e.g. 3 or 0.5)")
    return days


def _count(text: str) -> int:
    """A whole number from 1 to 86400 (seconds, or connections)."""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 86400):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 86400")
    return int(text)


def _port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: a free one)."""
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 0 to 65535")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="media-registry",
        description="Media IDs for the WhatsApp Cloud API that are valid now, uploaded once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--db", help="registry file (default: $MEDIA_REGISTRY_DB or ./media-registry.db)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text, where it applies")
    # The same options after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND", dest="command")

    def command(name: str, run: Command, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(run=run, json_applies=json_flag)
        if json_flag:
            sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                             help="JSON lines instead of text")
        return sub

    upload = command("upload", _upload, "get or upload each file, https:// URL, or - (standard "
                     "input); print '<media_id> <status> <path>'")
    upload.add_argument("paths", nargs="+", metavar="PATH|URL|-")
    upload.add_argument("--phone-number-id", help="default: $WHATSAPP_PHONE_NUMBER_ID")
    upload.add_argument("--mime-type", help="assert the type (it must agree with the bytes)")
    upload.add_argument("-r", "--recursive", action="store_true",
                        help="upload every file under the folders given (hidden ones left out)")
    upload.add_argument("-q", "--quiet", action="store_true", help="print only the media IDs, one per line")

    ls = command("ls", _ls, "list contents with their current media IDs")
    ls.add_argument("--expiring", type=_days, metavar="DAYS", help="only IDs expiring within DAYS")

    target_help = "a path, URL, media ID, sha256, or sha256 prefix of 8+ hex digits (as ls prints it)"
    show = command("show", _show, "one content with its paths and history")
    show.add_argument("target", metavar="PATH|URL|MEDIA_ID|SHA256", help=target_help)

    invalidate = command("invalidate", _invalidate, "Meta refused this media ID at send time: "
                         "never serve it again (the next upload of its content uploads anew)")
    invalidate.add_argument("media_id", metavar="MEDIA_ID|URL", help="a media ID, or a URL source (its current ID)")

    refresh = command("refresh", _refresh, "upload again the IDs that expire within refresh_before")
    refresh.add_argument("--dry-run", action="store_true", help="only say what would be uploaded")

    delete = command("delete", _delete, "forget a content and delete its media IDs at the API")
    delete.add_argument("target", metavar="PATH|URL|MEDIA_ID|SHA256", help=target_help)

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
    daemon.add_argument("--metrics-port", type=int, metavar="N",
                        help="also serve /metrics and /healthz on 127.0.0.1:N (the serve extra)")

    serve = command("serve", _serve, "an HTTP service for senders in any language, with the "
                    "daemon's schedule (the serve extra)", json_flag=False)
    serve.add_argument("--host", default="127.0.0.1",
                       help="bind address (default 127.0.0.1; beyond loopback needs "
                       "$MEDIA_REGISTRY_SERVICE_TOKEN)")
    serve.add_argument("--port", type=int, default=8080, help="bind port (default 8080)")
    serve.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                       help='a folder whose files clients may name with {"path": ...} (repeatable)')
    serve.add_argument("--allow-private-urls", action="store_true",
                       help="let URL sources reach loopback, private and link-local addresses")
    serve.add_argument("--no-schedule", action="store_true",
                       help="leave refresh and purge to a separate `daemon`")
    serve.add_argument("--body-timeout", type=_count, default=60, metavar="SECONDS",
                       help="a request body must arrive whole within this, or 408 (default 60)")
    serve.add_argument("--graceful-timeout", type=_count, default=30, metavar="SECONDS",
                       help="on SIGTERM, requests still running after this are cancelled (default 30)")
    serve.add_argument("--limit-concurrency", type=_count, metavar="N",
                       help="connections held at once; more are answered 503 (default 256, "
                       "fewer if RLIMIT_NOFILE is low)")
    for flag, name in (("--refresh-every", "REFRESH"), ("--purge-every", "PURGE")):
        serve.add_argument(flag, metavar="DURATION",
                           help=f"seconds or ISO 8601 (default: $MEDIA_REGISTRY_{name}_INTERVAL or PT1H)")

    command("stats", _stats, "counts and health of the registry")
    command("init", _init, "create the registry file", json_flag=False)
    migrate = command("migrate", _migrate, "copy this SQLite registry into PostgreSQL (the file is left untouched); "
                      "the server is $MEDIA_REGISTRY_MIGRATE_TO, --to-file or --to", json_flag=False)
    to = migrate.add_mutually_exclusive_group()
    to.add_argument("--to-file", metavar="FILE", help="a file holding postgresql://user:password@host:port/dbname")
    to.add_argument("--to", metavar="URL", help="postgresql://user:password@host:port/dbname; ps shows it "
                    "with its password to every user: prefer $MEDIA_REGISTRY_MIGRATE_TO or --to-file")

    command("demo", _demo, "run the main job end to end on a built-in local Graph API",
            json_flag=False)
    fake_api = command("fake-api", _fake_api, "serve the built-in local Graph API until Ctrl-C "
                       "and print the export lines that point this command at it", json_flag=False)
    fake_api.add_argument("--port", type=_port, default=0, help="default: a free port")
    return parser
