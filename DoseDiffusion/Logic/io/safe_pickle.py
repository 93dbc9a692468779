"""Loading pickled numpy data without running code.

The GDP-HMM challenge stores each case as an ``.npz`` whose ``arr_0`` member is a pickled dict of
arrays (``np.load(..., allow_pickle=True)`` in its loader). Unpickling can call any importable
function, so a crafted file could run code. :func:`load_npz` never calls ``np.load`` with
``allow_pickle=True``: numeric members are read with ``allow_pickle=False`` and object members are
unpickled by :class:`RestrictedUnpickler`, which admits only the globals numpy needs to rebuild
arrays, scalars and dtypes. Plain containers (dict, list, tuple, str, numbers, bool, None) need no
global and pass; anything else raises :class:`~dosediffusion.errors.UnsafeFileError`.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from os import PathLike
from typing import IO, Any

import numpy as np

from dosediffusion.errors import InputError, UnsafeFileError

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside numpy's array/scalar/dtype reconstruction."""

    def __init__(self, file: IO[bytes], source: str | None = None):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType"))
        if not allowed:
            raise UnsafeFileError(f"refused to unpickle '{module}.{name}': only numpy arrays and plain values are loaded", self._source)
        return super().find_class(module, name)


def load_npy(stream: IO[bytes], source: str | None = None) -> Any:
    """One ``.npy`` stream: numeric arrays directly, object arrays through :class:`RestrictedUnpickler`."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        _, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if not dtype.hasobject:
        stream.seek(0)
        return np.lib.format.read_array(stream, allow_pickle=False)
    return RestrictedUnpickler(stream, source).load()


def load_npz(path: str | PathLike) -> dict[str, Any]:
    """All members of an ``.npz`` file, name → value (arrays; 0-d object arrays stay arrays).

    Raises:
        UnsafeFileError: a member's pickle names a global other than numpy's own.
        InputError: the file is not a readable npz.
    """
    source = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as raw:  # read once into memory: read_array needs seek
                    members[info.filename[:-4]] = load_npy(io.BytesIO(raw.read()), source)
            return members
    except UnsafeFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"not a readable npz file ({error})", source) from None
