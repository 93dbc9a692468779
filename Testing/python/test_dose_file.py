"""The one reader of a dose file (:mod:`dosediffusion.io.dose_file`): RTDOSE in Gy with its frame of
reference checked, volume files with their geometry and units checked, a dose that does not cover the
structures refused; every command that reads a dose gives the same numbers for RTDOSE and NRRD."""

import json

import nrrd
import numpy as np
import pydicom
import pytest

from dosediffusion.cli.main import main
from dosediffusion.geometry import Grid
from dosediffusion.io.dose_file import read_dose_file
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_volume
from dosediffusion.resources import resource_path

DEMO = resource_path("DemoCase")


@pytest.fixture(scope="module")
def demo():
    return load_case(DEMO)


def _dvh_json(capsys, *extra) -> dict:
    assert main(["dvh", str(DEMO), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["structures"]


def test_dvh_of_an_rtdose_is_in_gy_and_equals_the_same_dose_as_nrrd(demo, tmp_path, capsys):
    write_volume(demo.dose, demo.grid, tmp_path / "dose.nrrd")
    own = _dvh_json(capsys)
    rtdose = _dvh_json(capsys, "--dose", str(DEMO / "RTDOSE.dcm"))
    as_nrrd = _dvh_json(capsys, "--dose", str(tmp_path / "dose.nrrd"))
    assert 60 < rtdose["PTV_66"]["mean_gy"] < 70  # Gy, not the stored integers
    for name, metrics in own.items():
        for key, value in metrics.items():
            if key != "role":
                assert rtdose[name][key] == pytest.approx(value, abs=1e-3), (name, key)
                assert as_nrrd[name][key] == pytest.approx(value, abs=1e-3), (name, key)


def test_score_and_evaluate_read_rtdose_and_nrrd_alike(demo, tmp_path, capsys):
    write_volume(demo.dose, demo.grid, tmp_path / "dose.nrrd")
    totals = []
    for dose in (DEMO / "RTDOSE.dcm", tmp_path / "dose.nrrd"):
        assert main(["score", str(DEMO), "--scorecard", "lung_60", "--dose", str(dose), "--json"]) == 0
        totals.append(json.loads(capsys.readouterr().out)["total"])
    assert totals[0] == pytest.approx(totals[1], abs=1e-3)
    assert main(["evaluate", "--case", str(DEMO), "--pred", str(DEMO / "RTDOSE.dcm"),
                 "--ref", str(tmp_path / "dose.nrrd"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["structure_mae_gy"]["PTV_66"] < 1e-3


@pytest.mark.parametrize("command", ["dvh", "score"])
def test_another_patients_rtdose_is_refused(tmp_path, capsys, command):
    ds = pydicom.dcmread(DEMO / "RTDOSE.dcm")
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.save_as(tmp_path / "other.dcm")
    extra = ["--scorecard", "lung_60"] if command == "score" else []
    assert main([command, str(DEMO), "--dose", str(tmp_path / "other.dcm"), *extra]) == 2
    err = capsys.readouterr().err
    assert "frame of reference 1.2.3.4.5" in err and len(err.strip().splitlines()) == 1


def test_a_dose_that_does_not_cover_the_structures_is_refused_with_what_it_misses(demo, tmp_path, capsys):
    small = Grid((30, 50, 60), (5.0, 5.0, 5.0), demo.grid.origin)  # the CT is 72 × 56 × 36 at 5 mm
    write_volume(np.full(small.shape, 10.0, np.float32), small, tmp_path / "small.nrrd")
    assert main(["score", str(DEMO), "--scorecard", "lung_60", "--dose", str(tmp_path / "small.nrrd")]) == 2
    err = capsys.readouterr().err
    assert "misses part of BODY" in err and "x -178..118" in err and "covers" in err
    with pytest.raises(Exception, match="misses part of"):
        read_dose_file(tmp_path / "small.nrrd", demo)


def test_a_dose_on_a_coarser_grid_that_covers_the_case_is_resampled(demo, tmp_path):
    # 10 mm voxels whose border centres lie half a CT voxel outside the CT's border centres
    coarse = Grid((19, 29, 37), (10.0, 10.0, 10.0), tuple(o - 2.5 for o in demo.grid.origin))
    write_volume(np.full(coarse.shape, 7.0, np.float32), coarse, tmp_path / "coarse.nii.gz")
    np.testing.assert_allclose(read_dose_file(tmp_path / "coarse.nii.gz", demo), 7.0)


def test_a_dose_without_geometry_needs_the_cts_shape_and_the_flag(demo, tmp_path, capsys):
    nrrd.write(str(tmp_path / "bare.nrrd"), np.ascontiguousarray(demo.dose.transpose(2, 1, 0)))  # no space fields
    assert main(["score", str(DEMO), "--scorecard", "lung_60", "--dose", str(tmp_path / "bare.nrrd")]) == 2
    assert "--dose-on-ct-grid" in capsys.readouterr().err
    own = _dvh_json(capsys)
    flagged = _dvh_json(capsys, "--dose", str(tmp_path / "bare.nrrd"), "--dose-on-ct-grid")
    assert flagged["PTV_66"]["mean_gy"] == pytest.approx(own["PTV_66"]["mean_gy"], abs=1e-4)
    nrrd.write(str(tmp_path / "wrong.nrrd"), np.zeros((10, 10, 10), np.float32))
    assert main(["dvh", str(DEMO), "--dose", str(tmp_path / "wrong.nrrd"), "--dose-on-ct-grid"]) == 2
    assert "is not the CT's (36, 56, 72)" in capsys.readouterr().err


def test_dose_units_of_a_volume_are_honoured(demo, tmp_path, capsys):
    image = demo.grid.to_image((demo.dose * 100).astype(np.float32))
    image.SetMetaData("DoseUnits", "cGy")
    import SimpleITK as sitk

    sitk.WriteImage(image, str(tmp_path / "cgy.mha"))
    np.testing.assert_allclose(read_dose_file(tmp_path / "cgy.mha", demo), demo.dose, atol=1e-4)
    image.SetMetaData("DoseUnits", "MU")
    sitk.WriteImage(image, str(tmp_path / "mu.nrrd"))
    assert main(["dvh", str(DEMO), "--dose", str(tmp_path / "mu.nrrd")]) == 2
    assert "units 'MU'" in capsys.readouterr().err
