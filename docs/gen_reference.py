"""The site's reference pages, generated at build time (mkdocs-gen-files), never written by hand:
the Python API from ``__all__`` and the docstrings, every setting from the ``Settings`` model,
every command from the command line's parser, the HTTP API from ``serve``'s OpenAPI document,
and the changelog. Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import mkdocs_gen_files

import media_registry
from media_registry.config import Settings
from media_registry.setting_checks import variable

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "src" / "media_registry" / "config.py"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Under mkdocs' logger: a warning here fails `mkdocs build --strict`.
log = logging.getLogger("mkdocs.plugins.gen_reference")


# The sections of the Python API page, by the module a public name lives in; a name from a
# module not listed here gets a section of its own, named after the module.
SECTIONS = {"media_registry.registry": "Registries", "media_registry.rules.sending": "Registries",
            "media_registry.models": "Records", "media_registry.config": "Settings",
            "media_registry.graph.refusal": "Refused media IDs", "media_registry.errors": "Errors"}


def python_api() -> str:
    """One mkdocstrings block per public name (``__all__``), grouped by where the name lives."""
    sections: dict[str, list[str]] = {title: [] for title in SECTIONS.values()}
    for name in media_registry.__all__:
        if not name.startswith("__"):
            home = getattr(media_registry, name).__module__
            sections.setdefault(SECTIONS.get(home, f"`{home}`"), []).append(f"::: {home}.{name}")
    from media_registry import testing

    sections["Test helpers"] = [f"::: media_registry.testing.{name}" for name in testing.__all__]
    sections["Test helpers"].append("::: media_registry.testing.plugin")
    lines = ["# Python API", "", "Every public name of `media_registry` (its `__all__`), and the test",
             "helpers of `media_registry.testing`, with their docstrings.", ""]
    for title, blocks in sections.items():
        lines += [f"## {title}", "", *(line for block in blocks for line in (block, ""))]
    return "\n".join(lines)


def setting_meanings() -> dict[str, str]:
    """Each field's docstring (the string right under it in ``Settings``), read from the source."""
    tree = ast.parse(CONFIG.read_text())
    model = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    meanings: dict[str, str] = {}
    for field, after in zip(model.body, model.body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            meanings[field.target.id] = markdown(" ".join(after.value.value.split()))
    return meanings


def markdown(text: str) -> str:
    """A docstring's reST literals (double backquotes) as Markdown's."""
    return text.replace("``", "`")


def iso_duration(value: timedelta) -> str:
    """A duration in ISO 8601, as the environment takes it (``P30D``, ``PT1H``, ``PT5M``)."""
    seconds = int(value.total_seconds())
    if seconds and seconds % 86400 == 0:
        return f"P{seconds // 86400}D"
    for unit, size in (("H", 3600), ("M", 60)):
        if seconds and seconds % size == 0:
            return f"PT{seconds // size}{unit}"
    return f"PT{seconds}S"


def shown_default(value: Any) -> str:
    """A default as the environment would take it."""
    if value is None:
        return "(none)"
    if isinstance(value, timedelta):
        return f"`{iso_duration(value)}`"
    if isinstance(value, tuple):
        return f"`{json.dumps(list(value))}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def settings_page() -> str:
    """Every field of the model: variable, default, meaning. A field without a docstring is a
    warning, which fails the strict build."""
    meanings = setting_meanings()
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = meanings.get(name)
        if meaning is None:
            log.warning(
                "setting %s has no meaning: write a docstring under its field in config.py", name)
        default = shown_default(field.get_default(call_default_factory=True))
        if name == "host_id":
            default = "the hostname"
        cell = (meaning or "").replace("|", "\\|")
        rows.append(f"| `{variable(name)}` | {default} | {cell} |")
    doc = markdown((Settings.__doc__ or "").strip())
    return "\n".join(["# Settings", "", doc, "",
                      "Each is an environment variable, or a keyword argument of the same name in "
                      "lower case without the prefix (`MediaRegistry(min_validity=3600)`).", "", *rows, ""])


def cli_page() -> str:
    """Every command's help, as the parser prints it."""
    from media_registry.app.cli import _parser

    os.environ["COLUMNS"] = "100"  # the same wrapping on every machine
    parser = _parser()
    lines = ["# Command line", "", "Every command, as `media-registry COMMAND --help` prints it.", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser):
        lines += [f"## `{name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def openapi_document() -> dict[str, Any]:
    """``serve``'s OpenAPI document, from the application itself (a registry on a throwaway
    file, no server, no network)."""
    from media_registry import AsyncMediaRegistry
    from media_registry.app.endpoints import Options
    from media_registry.app.metrics import Monitor
    from media_registry.app.service import create_app

    with tempfile.TemporaryDirectory() as folder:
        registry = AsyncMediaRegistry(Path(folder) / "openapi.db")
        try:
            return create_app(registry, Monitor(registry), Options(token="documented")).openapi()
        finally:
            asyncio.run(registry.aclose())


def http_page() -> str:
    """Each operation: summary, parameters, request body, responses; then the whole document."""
    document = openapi_document()
    lines = ["# HTTP API", "", f"`media-registry serve`, OpenAPI {document['openapi']}, version "
             f"{document['info']['version']}. The service also serves this document at `/openapi.json`.", ""]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method in HTTP_METHODS:
                lines += _operation(method, path, operation)
    lines += ["## The document", "", "```json", json.dumps(document, indent=2), "```", ""]
    return "\n".join(lines)


def _operation(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"## `{method.upper()} {path}`", "", f"**{operation.get('summary', '')}**", ""]
    if operation.get("description"):
        lines += [markdown(operation["description"]), ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | required |", "| --- | --- | --- |"]
        lines += [f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} |" for p in parameters]
        lines.append("")
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        lines += ["Request body: " + ", ".join(f"`{kind}`" for kind in body), ""]
    lines += ["| status | meaning |", "| --- | --- |"]
    lines += [f"| {status} | {answer.get('description', '')} |" for status, answer in operation["responses"].items()]
    return [*lines, ""]


def metrics_page() -> str:
    """Every metric a service exposes, from the collectors themselves (a registry on a
    throwaway file)."""
    from media_registry import AsyncMediaRegistry
    from media_registry.app.metrics import Monitor

    with tempfile.TemporaryDirectory() as folder:
        registry = AsyncMediaRegistry(Path(folder) / "metrics.db")
        try:
            families = list(Monitor(registry).metrics.collect())
        finally:
            asyncio.run(registry.aclose())
    rows = ["| metric | type | meaning |", "| --- | --- | --- |"]
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        # A gauge read from an empty registry has no samples to show its labels: its family has them.
        labels = list(getattr(family, "_labelnames", ())) or sorted(
            {label for sample in family.samples for label in sample.labels if label != "le"})
        shown = f"{name}{{{', '.join(labels)}}}" if labels else name
        rows.append(f"| `{shown}` | {family.type} | {family.documentation} |")
    return "\n".join(["# Metrics", "", "What `/metrics` exposes (on `serve`, and on `daemon --metrics-port`).",
                      "", *rows, ""])


PAGES = {
    "reference/python.md": python_api,
    "reference/settings.md": settings_page,
    "reference/cli.md": cli_page,
    "reference/http.md": http_page,
    "reference/metrics.md": metrics_page,
    # Its links point into docs/ from the repository's root; on the site they are siblings.
    "contributing.md": lambda: (ROOT / "CONTRIBUTING.md").read_text().replace("](docs/", "]("),
    "changelog.md": lambda: (ROOT / "CHANGELOG.md").read_text(),
}

for page, make in PAGES.items():
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(make())
