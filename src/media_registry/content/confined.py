"""Opening a file named by a client, under a folder the service may read, without ever
following a name out of that folder.

The path is walked one component at a time from the folder's descriptor (``openat`` with
``O_NOFOLLOW``); a symlink is read here and its target walked the same way, so a link that
stays inside the folder (a deploy's ``current -> release/``) keeps working and a step out is
refused, whatever is swapped in meanwhile. The file is then read through its descriptor,
never reopened by name.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ..errors import AccessDenied, InputError, SourceNotFound, SourceUnreadable

MAX_LINKS = 40  # the kernel's own limit: more is a loop
STEP = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_under(roots: Sequence[Path], given: str) -> io.BufferedReader:
    """``given`` (absolute) opened for reading, if it lies under one of ``roots`` (resolved
    folders); the file object's ``name`` is ``given``.

    Raises AccessDenied when the path is, or at any step goes, outside them; SourceNotFound,
    SourceUnreadable (permission, not a regular file) or InputError (a symlink loop)."""
    found = _within(roots, given)
    if found is None:
        raise _outside(given)
    root, parts = found
    try:
        descriptor = _walk(root, parts, given)
    except FileNotFoundError:
        raise SourceNotFound(f"{given}: no such file; check the path") from None
    except NotADirectoryError:
        raise SourceNotFound(f"{given}: no such file (a part of it is not a folder); check the path") from None
    except PermissionError:
        raise SourceUnreadable(f"{given}: permission denied; make it readable by the service") from None
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # the service's state, not the file's
            raise
        raise SourceUnreadable(f"{given}: cannot open it ({exc.strerror}); check the file") from None
    # A trailing / or /. names a folder, as POSIX reads it (the parts walked have lost it).
    if given.endswith(("/", "/.")) and not stat.S_ISDIR(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise SourceNotFound(f"{given}: not a directory (a trailing / or /. names one); name the "
                             "file without it")
    return _regular(descriptor, given)


def _within(roots: Sequence[Path], given: str) -> tuple[Path, tuple[str, ...]] | None:
    """The root ``given`` names and the parts left to walk from it: by its words first (any
    ``..`` in the rest is walked, so stepping out is seen), else by its resolved form (a root
    reached through a symlink outside it, as the service was started with)."""
    for candidate in (PurePosixPath(given), PurePosixPath(os.path.realpath(given))):
        for root in roots:
            if candidate.is_relative_to(root):
                return root, candidate.relative_to(root).parts
    return None


def _walk(root: Path, parts: tuple[str, ...], given: str) -> int:
    """The descriptor ``parts`` lead to from ``root``, each step taken from the descriptor
    of the folder before it."""
    folders = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    pending = list(reversed(parts))
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(folders) == 1:
                    raise _outside(given)
                os.close(folders.pop())
                continue
            found = _step(folders[-1], part, last=not pending)
            if isinstance(found, int):
                folders.append(found)
                continue
            links += 1
            if links > MAX_LINKS:
                raise InputError(f"{given}: too many symlinks (a loop); fix the links")
            target = PurePosixPath(found)
            if target.is_absolute():  # walked again from the root, if it names a place in it
                if not target.is_relative_to(root):
                    raise _outside(given)
                target = target.relative_to(root)
                while len(folders) > 1:
                    os.close(folders.pop())
            pending.extend(reversed(target.parts))
        return folders.pop()
    finally:
        for descriptor in folders:
            os.close(descriptor)


def _step(folder: int, name: str, last: bool) -> int | str:
    """The descriptor of ``name`` in ``folder`` (a folder unless ``last``), or, for a
    symlink, its target."""
    try:
        return os.open(name, STEP if last else STEP | os.O_DIRECTORY, dir_fd=folder)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:
            return os.readlink(name, dir_fd=folder)
        except OSError:
            raise exc from None  # not a symlink: what the open said stands


def _regular(descriptor: int, given: str) -> io.BufferedReader:
    """A file object over ``descriptor`` once ``fstat`` says it is a regular file."""
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise SourceUnreadable(f"{given}: is {what}; name a file")
    os.set_blocking(descriptor, True)
    raw = io.FileIO(descriptor, "rb")
    raw.name = given  # errors and the registry's events name the path, not a descriptor
    return io.BufferedReader(raw)


def _outside(given: str) -> AccessDenied:
    return AccessDenied(f"{given}: outside the folders this service may read; start it with "
                        "--allow-root FOLDER for the folders senders may name")
