"""Writing files and folders so that a failure never leaves a half-written one: write beside, then
rename. What appears has the permissions an ordinary ``open``/``mkdir`` gives under the user's
umask (temporary files are created private, and a planning system must be able to read the result)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

from dosediffusion.errors import InputError


def ordinary_mode(directory: bool = False) -> int:
    """The permission bits a new file (or folder) gets from ``open`` (``mkdir``) under the current umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: str | PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the final extension(s): some writers pick the format from it
    extension = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{extension}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, ordinary_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


#: A staging folder left this long by a process whose end cannot be seen (Windows) is stale.
STALE_AFTER_S = 24 * 3600
STAGING_SUFFIX = ".staging"


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on Windows, where probing a process could end it: assumed so)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders of ``folder`` (``.NAME.XXXX.PID.staging`` beside it) whose process has
    ended, and those of our older naming (``.NAME.XXXXXXXX``) or of an unknown process left for
    :data:`STALE_AFTER_S`; returns what was removed."""
    ours = re.compile(rf"^\.{re.escape(folder.name)}\.[A-Za-z0-9_]{{8}}(\.(\d+){re.escape(STAGING_SUFFIX)})?$")
    removed = []
    if not folder.parent.is_dir():
        return removed
    for candidate in folder.parent.iterdir():
        match = ours.match(candidate.name)
        if match is None or not candidate.is_dir():
            continue
        old = time.time() - candidate.stat().st_mtime > STALE_AFTER_S
        if old or (match.group(2) is not None and not _process_alive(int(match.group(2)))):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_folder(folder: str | PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``; when the block ends without error the staging folder
    becomes ``folder`` (an existing ``folder`` is replaced whole only with ``replace``, else it is an
    :class:`InputError`); on any error (a SIGTERM too: :func:`~dosediffusion.program.run_command` turns it
    into one) it is removed and ``folder`` is left as it was. Staging folders that earlier runs left
    behind (killed outright) are removed first (:func:`remove_stale_staging`)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=f".{os.getpid()}{STAGING_SUFFIX}",
                                    dir=folder.parent))
    try:
        os.chmod(staging, ordinary_mode(directory=True))
        yield staging
        if not folder.exists():
            staging.rename(folder)
        elif not replace:
            raise InputError("output folder exists already", folder)
        else:
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
