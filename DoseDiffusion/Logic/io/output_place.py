"""Whether an output place (a folder a command will create or fill, a file it will write) can be
written, checked before any slow work so that a long prediction never ends in a permission error."""

from __future__ import annotations

import os
import tempfile
from os import PathLike
from pathlib import Path

from dosediffusion.errors import InputError


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or the closest of its parents that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_output_place(path: str | PathLike, *, folder: bool, option: str = "--out") -> Path:
    """``path`` as a Path when a ``folder`` (or, with ``folder=False``, a file) can be written there;
    else an :class:`InputError` that says why (a file where a folder is wanted or the reverse, a file
    among its parents, a parent this user cannot write in: a test file is made and removed there)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"is a file, not a folder: choose another {option}", path)
    if not folder and path.is_dir():
        raise InputError(f"is a folder: give {option} a file name", path)
    existing = _nearest_existing(path.parent)  # a folder is made (staged) beside, a file written beside
    if not existing.is_dir():
        raise InputError(f"{existing} is a file, so no folder can be made there: choose another {option}", path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".dosediffusion-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"cannot write in {existing} ({error.strerror or error}): choose another {option}",
                         path) from None
    return path
