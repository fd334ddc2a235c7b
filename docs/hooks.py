"""MkDocs hooks: the docstrings' Sphinx roles (``:class:`~a.b.C```), which mkdocstrings leaves
as text before the code, shown as Sphinx shows them: the code alone, ``~`` keeping the last
name only."""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):<code>(~?)([^<]*)</code>")


def on_page_content(html: str, **_: Any) -> str:
    """The page's HTML with each role dropped and its ``~`` applied."""
    return ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)
