"""``media-registry fake-api``: the built-in local Graph API, served until Ctrl-C, with the
export lines that point this command (and any sender reading the environment) at it."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import signal
import sys
import threading
from datetime import timedelta

from ..errors import InputError
from ..testing import FakeGraphAPI


def fake_api_command(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; exit 0."""
    api = local_api(args.port, args.phone_number_id or [])
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with api:
        for line in export_lines(api):
            print(line)
        sys.stdout.flush()
        print(f"local Graph API serving at {api.origin} (Graph API {api.version} by default; any "
              f"version answers); kill an ID: curl -X POST {api.origin}/_fake/media/ID/kill; "
              "Ctrl-C stops it", file=sys.stderr, flush=True)
        stop.wait()
    return 0


def export_lines(api: FakeGraphAPI) -> list[str]:
    """The shell lines that point a sender at ``api``; the last names every number it serves."""
    settings = {"WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
                "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "WHATSAPP_APP_ID": api.app_id}
    if api.ttl_by_phone_number:
        settings["MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER"] = json.dumps(
            {phone: f"PT{int(ttl.total_seconds() // 60)}M" for phone, ttl in api.ttl_by_phone_number.items()})
    lines = [f"export {name}={shlex.quote(value)}" for name, value in settings.items()]
    others = sorted(api.phone_numbers - {api.phone_number_id})
    numbers = [api.phone_number_id, *others]
    return [*lines, f"# phone numbers: {' '.join(numbers)} (the first is the default)"]


def local_api(port: int, numbers: list[tuple[str, int | None]]) -> FakeGraphAPI:
    """The local API on ``port`` serving ``numbers`` (the first the default), or InputError."""
    ttls = {phone: timedelta(minutes=minutes) for phone, minutes in numbers if minutes is not None}
    phones = [phone for phone, _ in numbers]
    make = functools.partial(FakeGraphAPI, port=port, phone_numbers=phones, ttl_by_phone_number=ttls)
    try:  # the first number given is the default, in place of the built-in one
        return make(phone_number_id=phones[0]) if phones else make()
    except OSError as exc:
        raise InputError(f"port {port}: cannot listen on it ({exc.strerror}); "
                         "pick another --port, or leave it out for a free one") from None
