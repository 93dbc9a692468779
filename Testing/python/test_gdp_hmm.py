"""GDP-HMM challenge npz files: the challenge's layout read into a Case, safely."""

import json

import numpy as np
import pytest
from case_builders import box_case

from dosediffusion.cli.main import main
from dosediffusion.errors import UnsafeFileError
from dosediffusion.io.gdp_hmm import read_gdp_hmm_case, write_gdp_hmm_npz
from dosediffusion.io.load import load_case


def _challenge_file(path, with_geometry=True):
    """A file laid out as the challenge's DICOM2NPZ.py writes it (savez_compressed of one dict)."""
    shape = (10, 12, 14)
    z, y, x = np.indices(shape)
    ptv_high = ((abs(z - 5) <= 2) & (abs(y - 6) <= 2) & (abs(x - 7) <= 2)).astype(np.uint8)
    ptv_low = ((abs(z - 5) <= 3) & (abs(y - 6) <= 3) & (abs(x - 7) <= 3)).astype(np.uint8)
    data = {
        "img": np.full(shape, 40, np.int16),
        "dose": (np.arange(np.prod(shape)).reshape(shape) % 700).astype(np.uint32),
        "dose_scale": 0.1,
        "Body": np.ones(shape, np.uint8),
        "PTV70OPT": ptv_high,
        "PTV56": ptv_low,
        "SpinalCord_05": (x == 1).astype(np.uint8),
        "Parotids-PTV": np.zeros(shape, np.uint8),
        "isocenter": np.array([5.0, 6.0, 7.0], np.float32),
        "isVMAT": False,
        "angle_list": np.array([40.0, 0.0, 320.0], np.float32),
        "beam_plate": np.zeros(shape, np.float32),
        "angle_plate": np.zeros(shape[1:], np.float32),
    }
    data["all_mask"] = ["Body", "PTV70OPT", "PTV56", "SpinalCord_05", "Parotids-PTV"]
    if with_geometry:
        data.update(origin=[-10.0, -20.0, 30.0], spacing=(2.5, 2.5, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.savez_compressed(path, data)
    return data


def test_challenge_layout_becomes_a_case(tmp_path):
    data = _challenge_file(tmp_path / "HN_001+A.npz")
    ptv_dict = {"PTV_High": {"PDose": 70, "OPTName": "PTV70OPT", "StructName": "PTV70"},
                "PTV_Low": {"PDose": 56, "OPTName": "PTV56OPT", "StructName": "PTV56"}}
    case = read_gdp_hmm_case(tmp_path / "HN_001+A.npz", ptv_dict=ptv_dict)
    assert case.case_id == "HN_001+A" and case.grid.shape == (10, 12, 14)
    assert case.grid.spacing == (2.5, 2.5, 2.0) and case.grid.origin == (-10.0, -20.0, 30.0)
    np.testing.assert_allclose(case.dose, data["dose"] * 0.1, rtol=1e-6)
    roles = {n: (s.role, s.prescription_gy) for n, s in case.structures.items()}
    assert roles == {"Body": ("body", None), "PTV70OPT": ("ptv", 70.0), "PTV56": ("ptv", 56.0),
                     "SpinalCord_05": ("oar", None), "Parotids-PTV": ("oar", None)}
    assert case.prescription.levels_gy == [70.0, 56.0]
    assert [b.gantry_deg for b in case.beams] == [0.0, 40.0, 320.0]
    # isocenter voxel (5, 6, 7) -> x = -10 + 7*2.5, y = -20 + 6*2.5, z = 30 + 5*2
    assert case.beams[0].isocenter_mm == (7.5, -5.0, 40.0)
    assert any("empty structures: Parotids-PTV" in w for w in case.warnings)


def test_missing_spacing_defaults_to_the_challenge_grid_with_a_warning(tmp_path):
    _challenge_file(tmp_path / "c.npz", with_geometry=False)
    case = load_case(tmp_path / "c.npz")
    assert case.grid.spacing == (2.5, 2.5, 2.0)
    assert any("assumed the challenge's" in w for w in case.warnings)
    assert case.structures["PTV70OPT"].prescription_gy == 70.0  # from the name without a PTV dict


def test_write_then_read_round_trip(tmp_path):
    case = box_case()
    write_gdp_hmm_npz(case, tmp_path / "box.npz", beam_plate=np.ones(case.grid.shape))
    back = read_gdp_hmm_case(tmp_path / "box.npz")
    assert back.grid.same_as(case.grid)
    np.testing.assert_array_equal(back.dose, case.dose)
    for name, s in case.structures.items():
        np.testing.assert_array_equal(back.structures[name].mask, s.mask)
    np.testing.assert_allclose(back.beams[0].isocenter_mm, case.beams[0].isocenter_mm, atol=1e-4)


def test_malicious_challenge_file_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty((), dtype=object)
    arr[()] = {"img": np.zeros((2, 2, 2)), "x": Evil()}
    with open(tmp_path / "evil.npz", "wb") as fh:
        np.savez(fh, arr)
    with pytest.raises(UnsafeFileError, match="builtins|io"):
        read_gdp_hmm_case(tmp_path / "evil.npz")
    assert not marker.exists()


def test_cli_inspect_npz(tmp_path, capsys):
    _challenge_file(tmp_path / "c.npz")
    assert main(["inspect", str(tmp_path / "c.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"grid", "structures", "beams", "prescription", "warnings"}
    assert summary["structures"]["PTV56"]["volume_cc"] == pytest.approx(7 ** 3 * 12.5 / 1000, abs=1e-3)
