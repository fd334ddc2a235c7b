"""The documentation site builds with `mkdocs build --strict` (never --quiet, which hides the
warnings that strict counts): a broken link or anchor, a page
missing from the tree, a setting without its meaning, all fail it; and the reference pages
hold every setting, command and endpoint, generated from the code."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from media_registry.config import Settings
from media_registry.setting_checks import variable

ROOT = Path(__file__).parent.parent
# MkDocs plugins print a banner about a future MkDocs 2 unless told not to.
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "-d", str(site)], cwd=config.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **QUIET})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def test_the_site_builds_strictly_with_every_page_of_the_tree(site: Path) -> None:
    for name in ("getting-started", "python-guide", "command-line", "service", "fleets", "operations",
                 "guarantees", "architecture", "changelog", "contributing"):
        assert (site / name / "index.html").is_file(), name


def test_the_settings_page_names_every_setting_with_its_default(site: Path) -> None:
    settings = page(site, "reference/settings")
    for name in Settings.model_fields:
        assert f"<code>{variable(name)}</code>" in settings, name
    assert "<code>P30D</code>" in settings  # the TTL's default, as the environment writes it


def test_the_command_line_page_has_every_command(site: Path) -> None:
    from media_registry.app.cli import _parser

    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    reference = page(site, "reference/cli")
    assert commands and all(f'id="{name}"' in reference for name in commands)


def test_the_http_page_has_every_endpoint_and_the_python_page_every_public_name(site: Path) -> None:
    http = page(site, "reference/http")
    for path in ("/v1/media", "/v1/media/{sha256}", "/v1/media/{media_id}/invalidate", "/metrics", "/healthz"):
        assert f"{path}</code>" in http, path
    python = page(site, "reference/python")
    import media_registry

    for name in media_registry.__all__:
        if not name.startswith("__"):
            assert f'.{name}"' in python, name


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    """The same link checks as the site's, on a page that links to nothing."""
    validation = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["validation"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [the guide](missing-guide.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump({"site_name": "t", "validation": validation}))
    result = mkdocs_build(config, tmp_path / "site")
    assert result.returncode != 0 and "missing-guide.md" in result.stdout + result.stderr


def test_the_architecture_tree_names_every_module_of_the_package() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text[text.index("src/media_registry/\n"):text.index("```", text.index("src/media_registry/\n"))]
    listed, folder = set(), ""
    for line in tree.splitlines()[1:]:
        name = line.split()[0] if line.strip() else ""
        if line.startswith("  ") and not line.startswith("    "):
            folder = name if name.endswith("/") else ""
            listed.add(name)
        elif line.startswith("    "):
            listed.add(folder + name)
    package = ROOT / "src" / "media_registry"
    modules = {str(path.relative_to(package)) for path in package.rglob("*")
               if path.suffix in (".py", ".sql") and "__pycache__" not in path.parts and path.name != "__init__.py"}
    assert modules - listed == set()


def test_the_error_tree_of_the_python_guide_names_every_error_class() -> None:
    import media_registry
    import media_registry.errors as errors

    for module in pkgutil.walk_packages(media_registry.__path__, "media_registry."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)  # every error class defined, whatever ran before
    guide = (ROOT / "docs" / "python-guide.md").read_text()
    tree = guide[guide.index("MediaRegistryError\n├──"):]
    tree = tree[:tree.index("```")]

    def descendants(cls: type) -> set[str]:
        return {cls.__name__}.union(*(descendants(sub) for sub in cls.__subclasses__()))

    named = set(re.findall(r"\b[A-Z]\w+", tree))
    assert descendants(errors.MediaRegistryError) - named == set()
