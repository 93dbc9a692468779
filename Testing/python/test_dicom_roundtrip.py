"""DICOM RT sets written here (analytic phantom) and by another tool (plastimatch), read back."""

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from phantoms import write_phantom_dicom

from dosediffusion.cli.main import main
from dosediffusion.geometry import Grid
from dosediffusion.io.dicom_case import read_dicom_case
from dosediffusion.io.rtdose_write import write_rtdose
from dosediffusion.io.volume_sidecar import write_volume


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error") or "Assertion" in line]


def needs_dciodvfy(test):
    """Mark ``test`` as needing dciodvfy (Debian dicom3tools, which Testing/install_test_deps.sh installs)."""
    missing = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
    return pytest.mark.peers(missing(test))


@needs_dciodvfy
def test_every_written_object_passes_dciodvfy(phantom_dicom):
    _, _, _, paths = phantom_dicom
    for path in [paths["ct"][0], paths["ct"][-1], paths["rtstruct"], paths["rtplan"], paths["rtdose"]]:
        assert dciodvfy_errors(path) == [], path


@pytest.mark.parametrize("position", ["HFS", "HFP", "FFS"])
def test_phantom_round_trip(tmp_path, position):
    case, expected, _ = write_phantom_dicom(tmp_path / "set", position=position)
    back = read_dicom_case(tmp_path / "set")
    assert back.grid.same_as(case.grid)
    np.testing.assert_array_equal(back.ct, case.ct)
    for name, cc in expected.stack_cc.items():
        structure = back.structures[name]
        assert structure.volume_cc(back.grid) == pytest.approx(cc, rel=0.02), name  # all are > 5 cc
        assert structure.role == case.structures[name].role
    # the same physical voxel is inside the PTV whatever the patient position: the isocenter
    iso_index = np.round(back.grid.physical_to_index(np.zeros(3))).astype(int)
    assert back.structures["PTV_60"].mask[tuple(iso_index)]
    scaling = float(pydicom.dcmread(tmp_path / "set" / "RTDOSE.dcm").DoseGridScaling)
    np.testing.assert_allclose(back.dose, case.dose, atol=scaling / 2 + 1e-5)
    assert [(b.name, b.gantry_deg, b.collimator_deg, b.couch_deg, b.isocenter_mm, b.meterset_weight) for b in back.beams] == [
        (b.name, b.gantry_deg, b.collimator_deg, b.couch_deg, b.isocenter_mm, b.meterset_weight) for b in case.beams]
    arc = back.beams[3]
    assert arc.arc_direction == "CW" and arc.control_point_gantry_deg == case.beams[3].control_point_gantry_deg
    assert back.prescription.levels_gy == [60.0] and back.prescription.fractions == 30
    assert back.meta["PatientID"] == "PHANTOM01" and back.warnings == []


def test_rtdose_references_and_values_read_with_raw_pydicom(phantom_dicom):
    folder, case, _, paths = phantom_dicom
    dose = pydicom.dcmread(paths["rtdose"])
    plan = pydicom.dcmread(paths["rtplan"])
    ct = pydicom.dcmread(paths["ct"][0])
    assert (dose.DoseUnits, dose.DoseType, dose.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
    assert dose.FrameOfReferenceUID == ct.FrameOfReferenceUID and dose.StudyInstanceUID == ct.StudyInstanceUID
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert int(dose.NumberOfFrames) == case.grid.shape[0]
    values = dose.pixel_array * float(dose.DoseGridScaling)
    np.testing.assert_allclose(values, case.dose, atol=float(dose.DoseGridScaling) / 2 + 1e-6)
    np.testing.assert_allclose([float(v) for v in dose.ImagePositionPatient], case.grid.origin, atol=1e-5)
    offsets = np.array([float(v) for v in dose.GridFrameOffsetVector])
    np.testing.assert_allclose(offsets, np.arange(case.grid.shape[0]) * case.grid.spacing[2], atol=1e-5)


def test_rtdose_on_its_own_coarser_grid_is_resampled_to_the_ct(tmp_path):
    case, _, paths = write_phantom_dicom(tmp_path / "set")
    coarse = Grid((24, 32, 40), (5.0, 5.0, 5.0), case.grid.origin)
    x = coarse.index_to_physical(np.indices(coarse.shape).reshape(3, -1).T)[:, 0].reshape(coarse.shape)
    write_rtdose(np.clip(x + 100.0, 0, None), coarse, paths["rtdose"], dict(case.meta, FrameOfReferenceUID=str(
        pydicom.dcmread(paths["ct"][0]).FrameOfReferenceUID), RTPlanSOPInstanceUID="1.2.3"))
    back = read_dicom_case(tmp_path / "set")
    inner = back.grid.index_to_physical(np.array([10, 20, 30]))
    assert back.dose[10, 20, 30] == pytest.approx(inner[0] + 100.0, abs=0.01)  # linear dose: exact interpolation


def test_failing_write_leaves_nothing(tmp_path):
    case, _, _ = write_phantom_dicom(tmp_path / "ok")
    case.structures["PTV_60"].contours = None  # RTSTRUCT cannot be written
    from dosediffusion.errors import InputError
    from dosediffusion.io.dicom_write import write_case_dicom

    with pytest.raises(InputError, match="without contours"):
        write_case_dicom(case, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
    with pytest.raises(InputError, match="negative"):
        write_rtdose(-case.dose - 1, case.grid, tmp_path / "neg.dcm", {})
    assert not (tmp_path / "neg.dcm").exists()


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch (Debian) not installed")
def test_a_folder_written_by_plastimatch(tmp_path, capsys):
    grid = Grid((40, 64, 64), (2.5, 2.5, 2.5), (-80.0, -80.0, -50.0))
    points = grid.index_to_physical(np.indices(grid.shape).reshape(3, -1).T).reshape(*grid.shape, 3)
    body = points[..., 0] ** 2 + points[..., 1] ** 2 < 70**2
    masks = {"PTV_60": np.linalg.norm(points, axis=-1) <= 20, "SpinalCord": np.abs(points - [0, 40, 0]).max(-1) <= 10,
             "BODY": body}
    dose = np.where(body, np.clip(points[..., 0] + 60.0, 0, None), 0).astype(np.float32)
    write_volume(np.where(body, 0, -1000).astype(np.int16), grid, tmp_path / "ct.mha")
    write_volume(dose, grid, tmp_path / "dose.mha")
    for name, mask in masks.items():
        write_volume(mask.astype(np.uint8), grid, tmp_path / "masks" / f"{name}.mha")
    subprocess.run(["plastimatch", "convert", "--input", str(tmp_path / "ct.mha"), "--input-prefix", str(tmp_path / "masks"),
                    "--input-dose-img", str(tmp_path / "dose.mha"), "--output-dicom", str(tmp_path / "out")],
                   check=True, capture_output=True)
    case = read_dicom_case(tmp_path / "out")
    assert case.grid.same_as(grid)
    for name, mask in masks.items():
        assert case.structures[name].mask.sum() == pytest.approx(mask.sum(), rel=0.02), name
    np.testing.assert_allclose(case.dose, dose, atol=0.01)
    assert main(["inspect", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "PTV_60" in text and "ptv" in text and "Rx 60 Gy" in text
