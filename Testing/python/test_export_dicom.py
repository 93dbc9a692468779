"""``dosediffusion export-dicom CASE OUT``: the written DICOM RT set reads back to the same case (an
OpenKBP patient in both its forms, a case of masks only, a DICOM case with drawn contours), every object
passes dciodvfy, and every refusal comes before anything is written."""

import dataclasses
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import numpy as np
import pydicom
import pytest
from case_builders import box_case
from openkbp_data import OPENKBP, needs_openkbp
from phantoms import write_phantom_dicom
from test_dicom_roundtrip import dciodvfy_errors, needs_dciodvfy

from dosediffusion.case import Structure
from dosediffusion.cli.main import main
from dosediffusion.io.dicom_case import read_dicom_case
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_sidecar_case
from dosediffusion.roles import RoleChoice

#: How the box case's Core (an OAR by its sidecar, a name no alias table knows) is read back.
CORE_IS_OAR = {"Core": RoleChoice("oar")}


def export(capsys, *argv) -> tuple[int, str, str]:
    """``dosediffusion export-dicom ARGV``: exit code, stdout, stderr."""
    code = main(["export-dicom", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def left_beside(folder) -> list[str]:
    """Hidden entries beside ``folder`` (a staging folder, a replaced export's ``.old``)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


def assert_same_case(back, case, out) -> None:
    """``back`` (read from the export ``out``) is ``case``: grid, CT (int16 HU), structures voxel for voxel
    with their roles, prescription, beams, dose within the RTDOSE's quantisation, patient position."""
    assert back.case_id == case.case_id
    assert back.grid.shape == case.grid.shape
    np.testing.assert_allclose(back.grid.spacing, case.grid.spacing, atol=1e-3)
    np.testing.assert_allclose(back.grid.origin, case.grid.origin, atol=1e-3)
    np.testing.assert_allclose(back.grid.direction, case.grid.direction, atol=1e-6)
    np.testing.assert_array_equal(back.ct, np.rint(np.clip(case.ct, -32768, 32767)))
    assert list(back.structures) == list(case.structures)
    for name, structure in case.structures.items():
        got = back.structures[name]
        assert np.array_equal(got.mask, structure.mask), name
        assert (got.role, got.prescription_gy, got.canonical) == (structure.role, structure.prescription_gy,
                                                                   structure.canonical), name
    assert back.prescription == case.prescription
    assert len(back.beams) == len(case.beams)
    for got, beam in zip(back.beams, case.beams, strict=True):
        assert (got.name, got.arc_direction, got.meterset_weight) == (beam.name, beam.arc_direction, beam.meterset_weight)
        np.testing.assert_allclose([got.gantry_deg, got.collimator_deg, got.couch_deg],
                                   [beam.gantry_deg, beam.collimator_deg, beam.couch_deg], atol=1e-6)
        np.testing.assert_allclose(got.control_point_gantry_deg, beam.control_point_gantry_deg, atol=1e-6)
        np.testing.assert_allclose(got.isocenter_mm, beam.isocenter_mm, atol=1e-5)
    assert (back.dose is None) == (case.dose is None)
    if case.dose is not None:
        scaling = float(pydicom.dcmread(out / "RTDOSE.dcm", stop_before_pixels=True).DoseGridScaling)
        assert scaling == pytest.approx(float(case.dose.max()) / 65535, rel=1e-6)
        error = np.abs(back.dose.astype(np.float64) - case.dose)
        assert error.max() <= scaling / 2 * (1 + 1e-4) + 1e-6 * float(case.dose.max())
    assert back.patient_position == case.patient_position


@pytest.fixture(scope="module")
def openkbp_export(tmp_path_factory):
    """Validation patient pt_201 (compact form) exported by the command: (case, out, stdout, stderr);
    module-wide, so captured by hand (capsys is per test)."""
    source = OPENKBP / "validation" / "pt_201.npz"
    if not source.is_file():
        pytest.skip(f"{source} is not in the shared data")
    out = tmp_path_factory.mktemp("openkbp") / "pt_201_dicom"
    stdout, stderr = StringIO(), StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["export-dicom", str(source), str(out)])
    assert code == 0, stderr.getvalue()
    return load_case(source), out, stdout.getvalue(), stderr.getvalue()


@needs_openkbp
def test_openkbp_patient_reads_back_from_its_export(openkbp_export):
    case, out, stdout, stderr = openkbp_export
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"CT.{k:04d}.dcm" for k in range(1, 129)] + ["RTDOSE.dcm", "RTPLAN.dcm", "RTSTRUCT.dcm"])
    back = load_case(out)
    assert_same_case(back, case, out)
    # what OpenKBP itself prescribes and plans, not only what the reader made of it
    assert back.prescription.levels_gy == [70.0, 63.0, 56.0] and back.prescription.fractions == 35
    assert {n: s.prescription_gy for n, s in back.structures.items() if s.role == "ptv"} == {
        "PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
    assert [b.gantry_deg for b in back.beams] == [0.0, 40.0, 80.0, 120.0, 160.0, 200.0, 240.0, 280.0, 320.0]
    assert back.patient_position == "HFS" and back.dose_support() is not None
    ct = pydicom.dcmread(out / "CT.0001.dcm", stop_before_pixels=True)
    assert (str(ct.PatientID), str(ct.PatientName), ct.PatientPosition) == ("pt_201", "pt_201", "HFS")
    assert "pt_201" in stdout and "70/63/56 Gy in 35 fractions" in stdout and "3D Slicer" in stdout
    assert "isocentre" in stderr  # the reader's warning that OpenKBP gives none is passed on
    assert "--role" not in stderr  # every role comes back from the names


@needs_openkbp
@needs_dciodvfy
def test_every_exported_object_passes_dciodvfy(openkbp_export):
    _, out, _, _ = openkbp_export
    for name in ["CT.0001.dcm", "CT.0128.dcm", "RTSTRUCT.dcm", "RTPLAN.dcm", "RTDOSE.dcm"]:
        assert dciodvfy_errors(out / name) == [], name


@needs_openkbp
def test_openkbp_csv_folder_reads_back_from_its_export(tmp_path, capsys):
    """The challenge's own form, a folder of sparse CSV files (train patient pt_1)."""
    folder = OPENKBP / "csv" / "pt_1"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not in the shared data")
    code, _, err = export(capsys, folder, tmp_path / "pt_1")
    assert code == 0, err
    assert_same_case(load_case(tmp_path / "pt_1"), load_case(folder), tmp_path / "pt_1")


@pytest.fixture
def box_folder(tmp_path):
    """The box case of masks only as a case.json folder, with an OAR the alias table does not know (its
    role from the sidecar) and an empty structure: (folder, case as read)."""
    case = box_case()
    core = np.zeros(case.grid.shape, bool)
    core[5:7, 6:10, 8:13] = True  # a block of two slices inside the PTV
    core[6, 8, 10] = False  # with a hole on one
    structures = {**case.structures, "Core": Structure("Core", core, "oar"),
                  "Bladder": Structure("Bladder", np.zeros(case.grid.shape, bool), "oar")}
    write_sidecar_case(dataclasses.replace(case, structures=structures), tmp_path / "box")
    return tmp_path / "box", load_case(tmp_path / "box")


def test_case_of_masks_reads_back_from_its_export(box_folder, tmp_path, capsys):
    folder, case = box_folder
    assert not case.structures["Bladder"].mask.any() and case.structures["Core"].contours is None
    code, out, err = export(capsys, folder, tmp_path / "dicom")
    assert code == 0, err
    assert "RTSTRUCT (5 structures)" in out
    # the RTSTRUCT carries names: Core's role (from the sidecar) needs saying when it is read back
    assert "--role Core=oar" in err
    back = load_case(tmp_path / "dicom", roles=CORE_IS_OAR)
    assert_same_case(back, case, tmp_path / "dicom")
    assert load_case(tmp_path / "dicom").structures["Core"].role == "other"


@needs_dciodvfy
def test_rtstruct_with_an_empty_structure_passes_dciodvfy(box_folder, tmp_path, capsys):
    assert export(capsys, box_folder[0], tmp_path / "dicom")[0] == 0
    assert dciodvfy_errors(tmp_path / "dicom" / "RTSTRUCT.dcm") == []


def test_dicom_case_keeps_its_contours_study_and_frame(tmp_path, capsys):
    """A DICOM case (the phantom, prone, on a 5 mm grid) is written as new instances (a new CT series) of
    the same study and frame of reference, with the contours as drawn (not re-traced from the masks)."""
    write_phantom_dicom(tmp_path / "source", position="HFP", spacing=(5.0, 5.0, 5.0))
    case = read_dicom_case(tmp_path / "source")
    code, _, err = export(capsys, tmp_path / "source", tmp_path / "dicom")
    assert code == 0, err
    back = read_dicom_case(tmp_path / "dicom")
    assert_same_case(back, case, tmp_path / "dicom")
    for name, structure in case.structures.items():
        assert len(back.structures[name].contours) == len(structure.contours), name
        for got, drawn in zip(back.structures[name].contours, structure.contours, strict=True):
            np.testing.assert_allclose(got, drawn, atol=1e-6)
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert back.meta[key] == case.meta[key], key
    for key in ("CTSeriesInstanceUID", "RTStructSOPInstanceUID", "RTPlanSOPInstanceUID"):
        assert back.meta[key] != case.meta[key], key


def _files(folder) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_out_in_or_around_the_case_is_refused(box_folder, capsys):
    folder, _ = box_folder
    before = _files(folder)
    for out in (folder / "dicom", folder, folder / "masks"):
        code, _, err = export(capsys, folder, out, "--overwrite")
        assert code == 2 and err.count("\n") == 1 and "the case's own folder" in err, err
        assert _files(folder) == before and left_beside(folder / "dicom") == []
    assert left_beside(folder) == []


def test_out_holding_files_is_refused_unless_a_previous_export(box_folder, tmp_path, capsys):
    folder, _ = box_folder
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = export(capsys, folder, out)
    assert code == 2 and err.count("\n") == 1 and "holds files already (notes.txt" in err and "--overwrite" in err
    code, _, err = export(capsys, folder, out, "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "holds notes.txt, which no export writes" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert left_beside(out) == []


def test_overwrite_replaces_a_previous_export_whole(box_folder, tmp_path, capsys):
    folder, case = box_folder
    out = tmp_path / "out"
    assert export(capsys, folder, out)[0] == 0
    fresh = sorted(p.name for p in out.iterdir())
    before = _files(out)
    code, _, err = export(capsys, folder, out)  # no --overwrite: refused, the export left as it was
    assert code == 2 and err.count("\n") == 1 and "holds files already" in err
    assert _files(out) == before
    shutil.copy(out / "CT.0001.dcm", out / "CT.0099.dcm")  # a slice of an earlier, longer export
    code, _, err = export(capsys, folder, out, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == fresh
    assert_same_case(load_case(out, roles=CORE_IS_OAR), case, out)
    assert left_beside(out) == []


def test_a_failure_while_writing_leaves_the_previous_export(box_folder, tmp_path, capsys, monkeypatch):
    folder, _ = box_folder
    out = tmp_path / "out"
    assert export(capsys, folder, out)[0] == 0
    before = _files(out)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dosediffusion.io.dicom_write.write_rtdose", full_disk)
    for target in (out, tmp_path / "new"):
        with pytest.raises(OSError, match="No space left"):
            main(["export-dicom", str(folder), str(target), "--overwrite"])
        assert left_beside(target) == []
    assert _files(out) == before and not (tmp_path / "new").exists()


def test_unwritable_out_is_refused_before_reading(box_folder, tmp_path, capsys):
    folder, _ = box_folder
    (tmp_path / "a_file").write_text("")
    code, _, err = export(capsys, folder, tmp_path / "a_file" / "out")
    assert code == 2 and err.count("\n") == 1 and "is a file, so no folder can be made there" in err
    code, _, err = export(capsys, tmp_path / "missing", tmp_path / "a_file")  # OUT checked before the case
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        return  # root writes anywhere (and Windows has no mode bits): no folder is unwritable to it
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = export(capsys, folder, locked / "out")
        assert code == 2 and err.count("\n") == 1 and "cannot write in" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)
