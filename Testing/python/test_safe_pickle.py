"""The restricted unpickler: numpy data loads, anything that could run code is refused unrun."""

import io
import pickle
import zipfile

import numpy as np
import pytest

from dosediffusion.errors import InputError, UnsafeFileError
from dosediffusion.io.safe_pickle import load_npz


def _npz_with_member_pickle(path, payload: bytes):
    """An npz whose arr_0.npy is an object-array header followed by ``payload``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("arr_0.npy", header.getvalue() + payload)


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def test_numpy_arrays_scalars_and_plain_values_load(tmp_path):
    data = {"img": np.arange(6, dtype=np.int16).reshape(2, 3), "mask": np.ones(4, bool), "iso": [np.float32(1.5), 2],
            "spacing": (2.5, 2.5, 2.0), "isVMAT": True, "name": "x", "none": None}
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, data, plain=np.linspace(0, 1, 5))
    members = load_npz(path)
    back = members["arr_0"].item()
    np.testing.assert_array_equal(back["img"], data["img"])
    assert back["iso"] == [1.5, 2] and back["spacing"] == (2.5, 2.5, 2.0) and back["isVMAT"] is True
    np.testing.assert_array_equal(members["plain"], np.linspace(0, 1, 5))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_a_foreign_global_is_refused_and_never_runs(tmp_path, target, protocol):
    marker = tmp_path / "pwned"
    module, name = target.split(".")
    call = getattr(__import__(module), name)
    arg = {"os.system": f"touch {marker}", "builtins.eval": f"open({str(marker)!r}, 'w')",
           "subprocess.Popen": ["touch", str(marker)]}[target]
    path = tmp_path / "evil.npz"
    _npz_with_member_pickle(path, pickle.dumps({"img": _Evil(call, arg)}, protocol=protocol))
    with pytest.raises(UnsafeFileError, match=name):
        load_npz(path)
    assert not marker.exists()
    # the same payload really is dangerous: plain np.load would have run it (not called here)


def test_not_an_npz_is_an_input_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable npz"):
        load_npz(path)
