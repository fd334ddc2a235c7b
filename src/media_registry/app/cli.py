"""The ``media-registry`` command: argument parsing, and ``upload`` with its lean cache hit.

Every command is a thin wrapper over a :class:`~media_registry.MediaRegistry` method; the
others are in :mod:`.commands`, imported only when one of them runs. Exit status: 0 ok, 1 an
operation failed, 2 bad usage.
"""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..defaults import BODY_TIMEOUT, DB, GRACEFUL_TIMEOUT
from ..setting_checks import PHONE_NUMBER_ID
from ._argv import count, days, plain_args, port, served_number
from .console import error, is_url_arg, print_json, printable, progress

# Start-up is most of what a cached upload costs a shell script, so this module imports only
# what every run needs; the rest is imported by the commands that use it. (TYPE_CHECKING
# without `typing`, which alone costs a fifth of --version.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse  # imported by the parser alone: a plain run is read by plain_args
    from collections.abc import Callable, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = plain_args(argv) or _parser(_command_given(argv)).parse_args(argv)  # exits for --version, --help
    # httpx imports its own command-line client (click, rich and pygments, a sixth of the
    # start-up of every command that loads httpx) whenever they are installed; this process
    # never runs it, and httpx falls back to a stub when the import fails.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from ..errors import MediaRegistryError, redact

    if args.json and not args.json_applies:
        error(f"--json does not apply to {args.command}; leave it out")
        return 2
    try:
        status = _upload(args) if args.command == "upload" else _run(args)
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
            error(str(exc))
        else:
            error(f"unexpected {exc.__class__.__name__}: {exc}; rerun with --debug and report it")
    return 1


def _run(args: argparse.Namespace) -> int:
    """A command other than ``upload``: its module is imported only now."""
    from .reads import READS  # without the other commands' modules

    if args.command in READS:
        return READS[args.command](args)
    from .commands import COMMANDS

    return COMMANDS[args.command](args)


def _upload(args: argparse.Namespace) -> int:
    if args.quiet and args.json:
        error("--quiet and --json do not go together; pick one")
        return 2
    phone = args.phone_number_id
    if phone is not None and not PHONE_NUMBER_ID.fullmatch(phone):  # before the registry is touched
        error(f"{phone[:80]!r} is not a phone number ID (1 to 32 digits); check the value given")
        return 2
    paths = _upload_paths(args.paths, args.recursive)
    if paths is None:
        return 2
    done = _cache_hits(args, paths)
    if done == len(paths):
        return 0
    from .commands import attempt, open_registry, shown_as

    failed = 0
    with open_registry(args) as reg, progress("uploading", len(paths) - done) as advance:
        for given in paths[done:]:
            source = sys.stdin.buffer if given == "-" else given
            path = shown_as(reg, given)
            outcome = attempt(args, reg.get_or_upload_with_status, source,
                               phone_number_id=args.phone_number_id, mime_type=args.mime_type)
            advance(path)
            if outcome is None:
                failed += 1
            else:
                _print_upload(args, outcome.media_id, "uploaded" if outcome.uploaded else "cached", path)
    return 1 if failed else 0


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
            media_id = None if path == "-" or is_url_arg(path) else hits.media_id(path)
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
        print_json({"media_id": media_id, "status": status, "path": path}, flush=True)
    else:
        print(f"{media_id}\t{status}\t{printable(path)}", flush=True)


def _upload_paths(paths: Sequence[str], recursive: bool) -> list[str] | None:
    """The files to upload: the paths given, or with ``--recursive`` every file under the
    folders given (hidden ones left out); None after saying why when a folder is given without it,
    or ``-`` more than once or with standard input closed."""
    if "-" in paths and (paths.count("-") > 1 or sys.stdin is None):
        error("-: standard input is read once, and must be open; give - once and pipe the content in")
        return None
    if not recursive:
        for path in paths:
            if os.path.isdir(path):
                error(f"{path}: is a folder; pass --recursive (-r) to upload every file under it")
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


def _columns() -> int:
    """``shutil.get_terminal_size().columns``, as argparse's help measures it, without importing
    shutil (its archive modules are a tenth of a cached upload's start-up)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__  # None without a console
    if columns > 0 or stdout is None:
        return columns if columns > 0 else 80
    try:
        return os.get_terminal_size(stdout.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _formatter(prog: str) -> argparse.HelpFormatter:
    import argparse

    return argparse.HelpFormatter(prog, width=_columns() - 2)


def _upload_arguments(upload: argparse.ArgumentParser) -> None:
    upload.add_argument("paths", nargs="+", metavar="PATH|URL|-")
    upload.add_argument("--phone-number-id", help="default: $WHATSAPP_PHONE_NUMBER_ID")
    upload.add_argument("--mime-type", help="assert the type (it must agree with the bytes)")
    upload.add_argument("-r", "--recursive", action="store_true",
                        help="upload every file under the folders given (hidden ones left out)")
    upload.add_argument("-q", "--quiet", action="store_true", help="print only the media IDs, one per line")


def _ls_arguments(ls: argparse.ArgumentParser) -> None:
    ls.add_argument("--expiring", type=days, metavar="DAYS", help="only IDs expiring within DAYS")


TARGET_HELP = "a path, URL, media ID, sha256, or sha256 prefix of 8+ hex digits (as ls prints it)"


def _target_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("target", metavar="PATH|URL|MEDIA_ID|SHA256", help=TARGET_HELP)


def _invalidate_arguments(invalidate: argparse.ArgumentParser) -> None:
    invalidate.add_argument("media_id", metavar="MEDIA_ID|URL", help="a media ID, or a URL source (its current ID)")


def _refresh_arguments(refresh: argparse.ArgumentParser) -> None:
    refresh.add_argument("--dry-run", action="store_true", help="only say what would be uploaded")


def _purge_arguments(purge: argparse.ArgumentParser) -> None:
    purge.add_argument("--dry-run", action="store_true", help="only say what would be done")


def _download_arguments(download: argparse.ArgumentParser) -> None:
    download.add_argument("media_ids", nargs="*", metavar="MEDIA_ID")
    download.add_argument("--out", metavar="DIR", help="folder (default: $MEDIA_REGISTRY_BLOB_DIR)")
    download.add_argument("--webhook", metavar="FILE", help="download the media of a webhook payload (- for stdin)")


def _daemon_arguments(daemon: argparse.ArgumentParser) -> None:
    daemon.add_argument("--refresh-every", metavar="DURATION",
                        help="seconds or ISO 8601 (default: $MEDIA_REGISTRY_REFRESH_INTERVAL or PT1H)")
    daemon.add_argument("--purge-every", metavar="DURATION",
                        help="seconds or ISO 8601 (default: $MEDIA_REGISTRY_PURGE_INTERVAL or PT1H)")
    daemon.add_argument("--metrics-port", type=int, metavar="N",
                        help="also serve /metrics and /healthz on 127.0.0.1:N (the serve extra)")


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
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
    serve.add_argument("--body-timeout", type=count, default=BODY_TIMEOUT, metavar="SECONDS",
                       help=f"a request body must arrive whole within this, or 408 (default {BODY_TIMEOUT})")
    serve.add_argument("--graceful-timeout", type=count, default=GRACEFUL_TIMEOUT, metavar="SECONDS",
                       help=f"on SIGTERM, requests still running after this are cancelled (default {GRACEFUL_TIMEOUT})")
    serve.add_argument("--limit-concurrency", type=count, metavar="N",
                       help="connections held at once; more are answered 503 (default 256, "
                       "fewer if RLIMIT_NOFILE is low)")
    for flag, name in (("--refresh-every", "REFRESH"), ("--purge-every", "PURGE")):
        serve.add_argument(flag, metavar="DURATION",
                           help=f"seconds or ISO 8601 (default: $MEDIA_REGISTRY_{name}_INTERVAL or PT1H)")


def _webhook_arguments(webhook: argparse.ArgumentParser) -> None:
    webhook.add_argument("file", metavar="FILE|-", help="the payload as Meta posts it (- for stdin)")


def _archive_arguments(archive: argparse.ArgumentParser) -> None:
    archive.add_argument("--once", action="store_true", required=True, help="one pass, under the daemon's lock")


def _migrate_arguments(migrate: argparse.ArgumentParser) -> None:
    to = migrate.add_mutually_exclusive_group()
    to.add_argument("--to-file", metavar="FILE", help="a file holding postgresql://user:password@host:port/dbname")
    to.add_argument("--to", metavar="URL", help="postgresql://user:password@host:port/dbname; ps shows it "
                    "with its password to every user: prefer $MEDIA_REGISTRY_MIGRATE_TO or --to-file")


def _handle_arguments(handle: argparse.ArgumentParser) -> None:
    handle.add_argument("source", metavar="FILE|URL|-")
    handle.add_argument("--app-id", help="default: $WHATSAPP_APP_ID")


def _fake_api_arguments(fake_api: argparse.ArgumentParser) -> None:
    fake_api.add_argument("--port", type=port, default=0, help="default: a free port")
    fake_api.add_argument("--phone-number-id", type=served_number, action="append", metavar="ID[:TTL_MINUTES]",
                          help="a number to serve (repeatable; the first is the default); with "
                          ":TTL_MINUTES a No-Storage number whose media live that long (60 to 43200)")


def _no_arguments(command: argparse.ArgumentParser) -> None:
    """A command that takes only the common options."""


# Each command, in the order --help lists them: its help, whether --json applies, its arguments.
SUBCOMMANDS: dict[str, tuple[str, bool, Callable[[argparse.ArgumentParser], None]]] = {
    "upload": ("get or upload each file, https:// URL, or - (standard input); print '<media_id> <status> <path>'",
               True, _upload_arguments),
    "ls": ("list contents with their current media IDs", True, _ls_arguments),
    "show": ("one content with its paths and history", True, _target_arguments),
    "invalidate": ("Meta refused this media ID at send time: never serve it again (the next upload of its "
                   "content uploads anew)", True, _invalidate_arguments),
    "refresh": ("upload again the IDs that expire within refresh_before", True, _refresh_arguments),
    "delete": ("forget a content and delete its media IDs at the API", True, _target_arguments),
    "purge": ("delete vanished and deleted content remotely; drop expired IDs", True, _purge_arguments),
    "download": ("fetch inbound media, verified, written atomically", True, _download_arguments),
    "daemon": ("run refresh and purge on a schedule until SIGTERM/SIGINT", False, _daemon_arguments),
    "serve": ("an HTTP service for senders in any language, with the daemon's schedule (the serve extra)",
              False, _serve_arguments),
    "stats": ("counts and health of the registry", True, _no_arguments),
    "inbox": ("inbound items from webhooks not archived yet (pending, failed) or lost", True, _no_arguments),
    "webhook": ("record a saved webhook payload for the archive and handle its statuses", True,
                _webhook_arguments),
    "archive": ("archive the inbound items due now (the daemon's archive worker, for cron)", True,
                _archive_arguments),
    "init": ("create the registry file", False, _no_arguments),
    "migrate": ("copy this SQLite registry into PostgreSQL (the file is left untouched); the server is "
                "$MEDIA_REGISTRY_MIGRATE_TO, --to-file or --to", False, _migrate_arguments),
    "handle": ("print a template header handle for a PDF, JPEG, PNG or MP4 (made once per content and app; "
               "needs $WHATSAPP_APP_ID)", True, _handle_arguments),
    "doctor": ("check the settings, registry, token, phone numbers, API version, clock, download folder and "
               "daemon; exit 1 if anything is broken", True, _no_arguments),
    "demo": ("run the main job end to end on a built-in local Graph API", False, _no_arguments),
    "fake-api": ("serve the built-in local Graph API until Ctrl-C and print the export lines that point this "
                 "command at it", False, _fake_api_arguments),
}
# The options before the command that never change which command argparse runs.
PLAIN_OPTIONS = ("--debug", "--json")


def _command_given(argv: Sequence[str]) -> str | None:
    """The command argparse will run when only plain options come before it (``--db DB``,
    ``--debug``, ``--json``); None for anything else (help, a prefix, ``--``, no command)."""
    given = iter(argv)
    for arg in given:
        if arg == "--db":
            next(given, None)
        elif arg in SUBCOMMANDS:
            return arg
        elif not (arg in PLAIN_OPTIONS or arg.startswith("--db=")):
            return None
    return None


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, that command's arguments alone: a run parses one
    command, and building all of them is a tenth of a cached upload. Nothing else differs: the
    other commands' options show only in their own help and errors."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="media-registry", formatter_class=_formatter,
        description="Media IDs for the WhatsApp Cloud API that are valid now, uploaded once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--db", help=f"registry file (default: $MEDIA_REGISTRY_DB or ./{DB})")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text, where it applies")
    # The same options after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False, formatter_class=_formatter)
    common.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND", dest="command")
    for name, (help_text, json_flag, add_arguments) in SUBCOMMANDS.items():
        if only not in (None, name):
            continue
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common],
                                  formatter_class=_formatter)
        sub.set_defaults(json_applies=json_flag)
        if json_flag:
            sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                             help="JSON lines instead of text")
        add_arguments(sub)
    return parser
