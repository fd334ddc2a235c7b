"""``media-registry handle FILE|URL|-``: print a template header handle."""

from __future__ import annotations

import argparse
import sys

from .commands import open_registry, shown_as
from .console import print_json


def handle_command(args: argparse.Namespace) -> int:
    """Print the source's header handle (made once per content and app)."""
    with open_registry(args) as reg:
        source = sys.stdin.buffer if args.source == "-" else args.source
        handle = reg.get_header_handle(source, app_id=args.app_id)
        shown = shown_as(reg, args.source)
    if args.json:
        print_json({"handle": handle, "source": shown})
    else:
        print(handle)
    return 0
