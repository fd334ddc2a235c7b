"""The public names: ``__all__`` is the one list, and every name in it imports."""

from __future__ import annotations

import subprocess
import sys

import media_registry


def test_every_name_in_all_imports() -> None:
    for name in media_registry.__all__:
        assert getattr(media_registry, name) is not None, name


def test_star_import_works_in_a_fresh_interpreter() -> None:
    code = (
        "from media_registry import *\n"
        "import media_registry\n"
        "missing = [n for n in media_registry.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "print(len(media_registry.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(media_registry.__all__)


def test_content_deleted_and_source_unreadable_are_public_errors() -> None:
    from media_registry import ContentDeleted, InputError, MediaRegistryError, SourceUnreadable

    assert issubclass(ContentDeleted, MediaRegistryError)
    assert issubclass(SourceUnreadable, InputError)
    assert {"ContentDeleted", "SourceUnreadable"} <= set(media_registry.__all__)


def test_every_error_class_is_public() -> None:
    from media_registry import errors

    classes = {
        name for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.MediaRegistryError)
    }
    assert classes <= set(media_registry.__all__), classes - set(media_registry.__all__)
