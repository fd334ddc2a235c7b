"""``python -m media_registry``: the ``media-registry`` command."""

import sys

from .app.cli import main

sys.exit(main())
