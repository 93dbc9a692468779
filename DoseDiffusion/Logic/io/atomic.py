"""Writing files and folders so that a failure never leaves a half-written one: write beside, then
rename. What appears has the permissions an ordinary ``open``/``mkdir`` gives under the user's
umask (temporary files are created private, and a planning system must be able to read the result)."""

from __future__ import annotations

import os
import shutil
import tempfile
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


@contextmanager
def atomic_folder(folder: str | PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``; when the block ends without error the staging folder
    becomes ``folder`` (an existing ``folder`` is replaced whole only with ``replace``, else it is an
    :class:`InputError`); on any error it is removed and ``folder`` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
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
