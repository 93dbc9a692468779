"""NRRD / NIfTI volumes with a JSON sidecar: round trips and refusals."""

import json

import numpy as np
import pytest
from case_builders import box_case

from dosediffusion.cli.main import main
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import read_sidecar_case, read_volume, write_sidecar_case, write_volume


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_round_trip_keeps_arrays_geometry_beams_and_prescription(tmp_path, suffix):
    case = box_case()
    json_path = write_sidecar_case(case, tmp_path, suffix)
    back = load_case(tmp_path)  # a folder holding case.json
    assert back.grid.same_as(case.grid)
    np.testing.assert_array_equal(back.ct, case.ct)
    np.testing.assert_array_equal(back.dose, case.dose)
    for name, s in case.structures.items():
        np.testing.assert_array_equal(back.structures[name].mask, s.mask)
        assert back.structures[name].role == s.role
    assert back.structures["PTV70"].prescription_gy == 70.0
    assert [(b.name, b.gantry_deg, b.couch_deg, b.control_point_gantry_deg, b.arc_direction) for b in back.beams] == [
        (b.name, b.gantry_deg, b.couch_deg, b.control_point_gantry_deg, b.arc_direction) for b in case.beams
    ]
    assert back.prescription.levels_gy == [70.0] and back.prescription.fractions == 35
    assert json.loads(json_path.read_text())["version"] == 1


def test_nifti_geometry_is_lps_like_nrrd(tmp_path):
    grid = Grid((3, 4, 5), (1.0, 2.0, 3.0), (10.0, -5.0, 2.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    for name in ("v.nii.gz", "v.nrrd"):
        values, read_grid = read_volume(write_volume(array, grid, tmp_path / name))
        assert read_grid.same_as(grid)
        np.testing.assert_array_equal(values, array)


def test_dose_on_another_grid_is_resampled_with_a_warning(tmp_path):
    case = box_case()
    write_sidecar_case(case, tmp_path)
    coarse = Grid((6, 8, 10), tuple(2 * s for s in case.grid.spacing), case.grid.origin)
    write_volume(np.full(coarse.shape, 2.0, np.float32), coarse, tmp_path / "dose.nrrd")
    back = read_sidecar_case(tmp_path / "case.json")
    assert any("dose is not on the CT grid" in w for w in back.warnings)
    assert back.dose[0, 0, 0] == pytest.approx(2.0)


def test_label_map_structures_and_alias_roles(tmp_path):
    case = box_case()
    labels = case.structures["PTV70"].mask.astype(np.uint8) + 2 * case.structures["SpinalCord"].mask
    write_volume(case.ct, case.grid, tmp_path / "ct.nrrd")
    write_volume(labels, case.grid, tmp_path / "labels.nrrd")
    doc = {"format": "dosediffusion-case", "version": 1, "ct": "ct.nrrd",
           "structures": {"PTV_66": {"file": "labels.nrrd", "label": 1}, "Spinal Cord": {"file": "labels.nrrd", "label": 2}}}
    (tmp_path / "case.json").write_text(json.dumps(doc))
    back = read_sidecar_case(tmp_path / "case.json")
    assert back.structures["PTV_66"].role == "ptv" and back.structures["PTV_66"].prescription_gy == 66.0
    assert back.prescription.levels_gy == [66.0]
    assert back.structures["Spinal Cord"].role == "oar"
    assert back.structures["Spinal Cord"].mask.sum() == case.structures["SpinalCord"].mask.sum()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ct": "../outside.nrrd"}, "leaves the sidecar's folder"),
        ({"ct": "/etc/passwd.nrrd"}, "leaves the sidecar's folder"),
        ({"ct": "missing.nrrd"}, "does not exist"),
        ({"format": "other"}, "not a DoseDiffusion case sidecar"),
        ({"version": 7}, "unsupported sidecar version"),
        ({"beams": [{"gantry_deg": 0}]}, "beams\\[0\\] lacks isocenter_mm"),
        ({"structures": {"x": {"role": "oar"}}}, "needs an object with a 'file'"),
    ],
)
def test_bad_sidecars_name_the_problem(tmp_path, change, message):
    write_sidecar_case(box_case(), tmp_path)
    path = tmp_path / "case.json"
    doc = json.loads(path.read_text())
    doc.update(change)
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message) as error:
        read_sidecar_case(path)
    assert str(path) in str(error.value)


def test_cli_inspect_json_on_a_sidecar(tmp_path, capsys):
    write_sidecar_case(box_case(), tmp_path)
    assert main(["inspect", str(tmp_path / "case.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["grid"]["shape"] == [12, 16, 20] and summary["grid"]["spacing_mm"] == [2.5, 2.5, 2.0]
    ptv = summary["structures"]["PTV70"]
    assert ptv["role"] == "ptv" and ptv["volume_cc"] == pytest.approx(5 * 7 * 7 * 2.5 * 2.5 * 2.0 / 1000, rel=1e-3)
    assert summary["beams"][2]["arc"] == {"start_deg": 181.0, "stop_deg": 179.0, "direction": "CW", "control_points": 5}
    assert summary["prescription"] == {"levels_gy": [70.0], "fractions": 35}


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "case.json").write_text("{not json")
    assert main(["inspect", str(tmp_path / "case.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dosediffusion: error:") and "case.json" in err and "\n" not in err
