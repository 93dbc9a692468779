"""Bad DICOM input: one-line typed errors naming the file, exit code 2 from the CLI, no traceback."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from phantoms import write_phantom_dicom
from pydicom.data import get_testdata_file

from dosediffusion.cli.main import main
from dosediffusion.errors import AmbiguousInputError, DicomError, GeometryError, InputError
from dosediffusion.io.dicom_case import read_dicom_case
from dosediffusion.io.dicom_rtplan import read_rtplan


@pytest.fixture
def phantom(tmp_path, phantom_dicom):
    """A fresh copy of the phantom set that a test may damage."""
    folder = tmp_path / "case"
    shutil.copytree(phantom_dicom[0], folder)
    return folder


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _expect(folder, error_type, message, capsys, culprit=None):
    with pytest.raises(error_type, match=message) as error:
        read_dicom_case(folder)
    if culprit is not None:
        assert str(culprit) in str(error.value)
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dosediffusion: error:") and "\n" not in err and "Traceback" not in err


def test_non_dicom_file(phantom, capsys):
    (phantom / "notes.dat").write_text("hello")
    _expect(phantom, DicomError, "not a DICOM file", capsys, phantom / "notes.dat")


def test_truncated_file(phantom, capsys):
    path = phantom / "RTSTRUCT.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(phantom, DicomError, "truncated DICOM file", capsys, path)


def _element_end(path, keyword):
    """The byte offset where ``keyword``'s element ends in the file at ``path``."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    raw = ds.get_item(pydicom.datadict.tag_for_keyword(keyword))
    return raw.value_tell + raw.length


@pytest.mark.parametrize("cut", ["at an element boundary", "inside an element header", "inside the pixel data",
                                 "before the pixel data"])
def test_truncated_ct_slice_is_called_truncated(phantom, capsys, cut):
    path = sorted(phantom.glob("CT*"))[5]
    data = path.read_bytes()
    offset = {"at an element boundary": _element_end(path, "ImagePositionPatient"),
              "inside an element header": _element_end(path, "ImagePositionPatient") + 4,
              "inside the pixel data": len(data) - 100,
              "before the pixel data": _element_end(path, "RescaleSlope")}[cut]
    path.write_bytes(data[:offset])
    _expect(phantom, DicomError, "^[^:]*CT[^:]*: truncated DICOM file", capsys, path)


def test_plan_cut_after_its_header_is_truncated_not_beamless(phantom, capsys):
    path = phantom / "RTPLAN.dcm"
    path.write_bytes(path.read_bytes()[: _element_end(path, "RTPlanLabel")])
    _expect(phantom, DicomError, "RTPLAN without beams", capsys, path)


def test_truncated_plan_from_pydicom():
    path = Path(get_testdata_file("rtplan_truncated.dcm"))
    with pytest.raises(DicomError, match="truncated DICOM file") as error:
        read_rtplan(path)
    assert str(path) in str(error.value)


def test_missing_ct(phantom, capsys):
    for path in phantom.glob("CT.*.dcm"):
        path.unlink()
    _expect(phantom, InputError, "no CT images found", capsys)


def test_rtstruct_without_referenced_frame_of_reference(phantom, capsys):
    _edit(phantom / "RTSTRUCT.dcm", lambda ds: delattr(ds, "ReferencedFrameOfReferenceSequence"))
    _expect(phantom, DicomError, "without ReferencedFrameOfReferenceSequence", capsys, phantom / "RTSTRUCT.dcm")


def test_contours_outside_the_image(phantom, capsys):
    def move_cord(ds):
        for item in ds.ROIContourSequence:
            if item.ReferencedROINumber == 2:
                for contour in item.ContourSequence:
                    data = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
                    data[:, 0] += 500.0
                    contour.ContourData = [f"{v:.3f}" for v in data.ravel()]
    _edit(phantom / "RTSTRUCT.dcm", move_cord)
    _expect(phantom, GeometryError, "'SpinalCord': its contours lie outside the CT image", capsys, phantom / "RTSTRUCT.dcm")


def test_empty_structure_is_reported(phantom):
    def empty_cord(ds):
        for item in ds.ROIContourSequence:
            if item.ReferencedROINumber == 2:
                del item.ContourSequence
    _edit(phantom / "RTSTRUCT.dcm", empty_cord)
    case = read_dicom_case(phantom)
    assert not case.structures["SpinalCord"].mask.any()
    assert any("RTSTRUCT.dcm: empty structures" in w and "SpinalCord" in w for w in case.warnings)


def test_duplicate_slice_positions(phantom, capsys):
    shutil.copy(phantom / "CT.0005.dcm", phantom / "CT.copy.dcm")
    _edit(phantom / "CT.copy.dcm", lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()))
    _expect(phantom, GeometryError, "duplicate CT slice position", capsys)


def test_rtdose_on_another_frame_of_reference(phantom, capsys):
    _edit(phantom / "RTDOSE.dcm", lambda ds: setattr(ds, "FrameOfReferenceUID", pydicom.uid.generate_uid()))
    _expect(phantom, GeometryError, "RTDOSE is on frame of reference", capsys, phantom / "RTDOSE.dcm")


def test_two_series_need_a_choice(tmp_path, phantom_dicom, capsys):
    write_phantom_dicom(tmp_path / "second")
    folder = tmp_path / "both"
    shutil.copytree(phantom_dicom[0], folder / "a")
    shutil.copytree(tmp_path / "second", folder / "b")
    with pytest.raises(AmbiguousInputError, match="several CT series") as error:
        read_dicom_case(folder)
    assert len(error.value.choices) == 2
    uid = str(pydicom.dcmread(next((folder / "b").glob("CT.*.dcm"))).SeriesInstanceUID)
    assert uid in str(error.value)
    case = read_dicom_case(folder, series_uid=uid)  # the RTSTRUCT/RTPLAN/RTDOSE on b's frame of reference
    assert case.meta["CTSeriesInstanceUID"] == uid and case.dose is not None
    assert main(["inspect", str(folder), "--series-uid", uid, "--json"]) == 0


def test_a_missing_slice_is_refused_unless_gaps_are_allowed(phantom, capsys):
    (phantom / "CT.0010.dcm").unlink()
    with pytest.raises(GeometryError, match=r"1 slice\(s\) missing at .* --allow-slice-gaps"):
        read_dicom_case(phantom)
    assert main(["inspect", str(phantom)]) == 2
    assert "missing at" in capsys.readouterr().err
    assert main(["inspect", str(phantom), "--allow-slice-gaps"]) == 0
    case = read_dicom_case(phantom, allow_slice_gaps=True)
    assert any("non-uniform CT slice spacing" in w for w in case.warnings)
    assert case.grid.spacing[2] == pytest.approx(2.5)
