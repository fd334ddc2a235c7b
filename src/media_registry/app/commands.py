"""The commands other than ``upload``: each parses nothing, makes one call on the registry (or
starts a program over it) and prints the result. Imported only when one of them runs."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

from .console import error, is_url_arg, print_json, print_report, printable, progress
from .reads import ls as _ls
from .reads import show as _show
from .reads import stats as _stats

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..registry import MediaRegistry

T = TypeVar("T")

# What `serve` and `daemon --metrics-port` import beyond the core: the `serve` extra.
SERVE_EXTRA = ("fastapi", "starlette", "uvicorn", "prometheus_client")


def open_registry(args: argparse.Namespace, *, create: bool = True) -> MediaRegistry:
    """The registry; read-only commands pass ``create=False`` (never create one)."""
    from ..registry import MediaRegistry

    return MediaRegistry.from_env(db=args.db, create=create)


def attempt(args: argparse.Namespace, action: Callable[..., T], *params: Any, **options: Any) -> T | None:
    """Run one item of a multi-item command; on failure say so in one line and go on."""
    from ..errors import MediaRegistryError

    try:
        return action(*params, **options)
    except MediaRegistryError as exc:
        if args.debug:
            raise
        error(str(exc))
        return None


def shown_as(reg: MediaRegistry, given: str) -> str:
    """How a path or URL given on the command line is printed: never with a URL's signature."""
    return reg.sources.key(given) if is_url_arg(given) else given


def _invalidate(args: argparse.Namespace) -> int:
    with open_registry(args) as reg:
        media_id: str = args.media_id
        if is_url_arg(media_id):  # the URL's content's current ID
            record = reg.lookup(media_id)
            if record is None or record.media_id is None:
                error(f"{shown_as(reg, media_id)}: no current media ID in the registry; "
                       "check the URL (see: media-registry ls)")
                return 1
            media_id = record.media_id
        reg.invalidate(media_id)
    if args.json:
        print_json({"media_id": media_id, "status": "invalidated"})
    else:
        print(f"{media_id}\tinvalidated")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    with open_registry(args) as reg, progress("refreshing") as advance:
        report = reg.refresh_expiring(dry_run=args.dry_run, on_action=advance)
    print_report(report, args.json)
    return 1 if report.count("failed") else 0


def _delete(args: argparse.Namespace) -> int:
    with open_registry(args) as reg:
        report = reg.delete(args.target)
    print_report(report, args.json)
    if report.count("pending"):
        error("the content is marked deleted and never served again, but the API could not "
               "delete every ID now (see why above); `media-registry purge` or the daemon retries them")
        return 1
    return 0


def _purge(args: argparse.Namespace) -> int:
    with open_registry(args) as reg, progress("purging") as advance:
        report = reg.purge(dry_run=args.dry_run, on_action=advance)
    print_report(report, args.json)
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


def _download(args: argparse.Namespace) -> int:
    if not args.media_ids and args.webhook is None:
        error("name at least one MEDIA_ID, or a webhook payload with --webhook FILE (- for stdin)")
        return 2
    skipped: list[str] = []

    def skip(problem: str) -> None:  # said at once: a later item's error must not swallow it
        skipped.append(problem)
        error(problem)

    with open_registry(args) as reg:
        results = []
        if args.webhook is not None:
            results.extend(reg.download_webhook(_read_json(args.webhook), args.out, on_invalid=skip))
        attempts = [attempt(args, reg.download, media_id, args.out) for media_id in args.media_ids]
    failed = attempts.count(None) + len(skipped)
    results.extend(result for result in attempts if result is not None)
    for result in results:
        status = "downloaded" if result.fetched else "present"
        if args.json:
            print_json(result.model_dump())
        else:
            print(f"{result.media_id}\t{status}\t{printable(str(result.path))}")
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


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _init(args: argparse.Namespace) -> int:
    with open_registry(args) as reg:
        print(f"registry ready at {printable(str(reg.settings.db))}")
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
    from .fake_api_command import fake_api_command  # the local server: only load it here

    return fake_api_command(args)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor_command  # httpx and the checks: only load them here

    return doctor_command(args)


def _handle(args: argparse.Namespace) -> int:
    from .handle_command import handle_command

    return handle_command(args)


# Every command but `upload`, by the name the command line gives it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ls": _ls, "show": _show, "invalidate": _invalidate, "refresh": _refresh, "delete": _delete,
    "purge": _purge, "download": _download, "daemon": _daemon, "serve": _serve, "stats": _stats,
    "init": _init, "migrate": _migrate, "demo": _demo, "fake-api": _fake_api, "doctor": _doctor,
    "handle": _handle,
}
from .inbox_commands import INBOX_COMMANDS  # noqa: E402  (it imports this module's helpers)

COMMANDS.update(INBOX_COMMANDS)
