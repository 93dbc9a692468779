"""pydicom's bundled RT objects (written by other software), read by our readers and checked
against the values raw pydicom gives."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dosediffusion.errors import DicomError
from dosediffusion.geometry import Grid
from dosediffusion.io.dicom_rtdose import read_rtdose, rtdose_grid
from dosediffusion.io.dicom_rtplan import read_rtplan
from dosediffusion.io.dicom_rtstruct import read_rtstruct


def _real(name: str) -> Path:
    return Path(get_testdata_file(name))


def test_rtplan_beams_fractions_and_prescription_match_raw_values():
    path = _real("rtplan.dcm")
    raw = pydicom.dcmread(path)
    beams, prescription, _ = read_rtplan(path)
    treatment = [b for b in raw.BeamSequence if b.TreatmentDeliveryType != "SETUP"]
    assert [b.name for b in beams] == [str(b.BeamName) for b in treatment]
    cp = treatment[0].ControlPointSequence[0]
    assert beams[0].gantry_deg == float(cp.GantryAngle)
    assert beams[0].collimator_deg == float(cp.BeamLimitingDeviceAngle)
    assert beams[0].couch_deg == float(cp.PatientSupportAngle)
    assert beams[0].isocenter_mm == tuple(float(v) for v in cp.IsocenterPosition)
    group = raw.FractionGroupSequence[0]
    assert prescription.fractions == int(group.NumberOfFractionsPlanned)
    assert beams[0].meterset_weight == pytest.approx(float(group.ReferencedBeamSequence[0].BeamMeterset))
    assert prescription.levels_gy == [float(r.TargetPrescriptionDose) for r in raw.DoseReferenceSequence
                                      if "TargetPrescriptionDose" in r]


def test_rtdose_geometry_matches_raw_values_and_relative_dose_is_refused():
    path = _real("rtdose.dcm")
    raw = pydicom.dcmread(path)
    grid = rtdose_grid(raw, path)
    assert grid.shape == (int(raw.NumberOfFrames), raw.Rows, raw.Columns)
    assert grid.origin == tuple(float(v) for v in raw.ImagePositionPatient)
    assert grid.spacing == (float(raw.PixelSpacing[1]), float(raw.PixelSpacing[0]), float(raw.GridFrameOffsetVector[1]))
    with pytest.raises(DicomError, match="RELATIVE"):
        read_rtdose(path, grid, str(raw.FrameOfReferenceUID))


def test_rtdose_values_in_gy_on_its_own_grid(tmp_path):
    raw = pydicom.dcmread(_real("rtdose.dcm"))
    raw.DoseUnits = "GY"
    path = tmp_path / "rtdose_gy.dcm"
    raw.save_as(path)
    grid = rtdose_grid(raw, path)
    dose, _ = read_rtdose(path, grid, str(raw.FrameOfReferenceUID))
    np.testing.assert_allclose(dose, raw.pixel_array * float(raw.DoseGridScaling), rtol=1e-6)


def test_rtstruct_contour_area_matches_its_raw_polygon():
    path = _real("rtstruct.dcm")
    raw = pydicom.dcmread(path, force=True)
    contour = raw.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
    area = 0.5 * abs(np.dot(points[:, 0], np.roll(points[:, 1], -1)) - np.dot(points[:, 1], np.roll(points[:, 0], -1)))
    z = points[0, 2]
    grid = Grid((3, 80, 100), (5.0, 5.0, 5.0), (-247.5, -197.5, z - 5.0))
    structures, _ = read_rtstruct(path, grid, str(raw.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID))
    name = str(raw.StructureSetROISequence[0].ROIName)
    slice_mask = structures[name].mask[1]
    assert slice_mask.sum() * 25.0 == pytest.approx(area, rel=0.02)
