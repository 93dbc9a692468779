"""The patient's position belongs to the case: a feet-first or prone patient's beam and angle plates are
drawn from where its beams really come from (the same as a head-first-supine copy of the same anatomy
with the angles that point there), read from DICOM, and refused where the plates cannot place them."""

import shutil

import numpy as np
import pydicom
import pytest
from case_builders import box_case

from dosediffusion.case import Beam
from dosediffusion.conditioning.prepare import PrepareConfig, prepare
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.prediction.checks import check_predictable

SMALL = PrepareConfig(crop_shape=(9, 16, 32), spacing_mm=None)
PLATES = ("beam_plate", "angle_plate")


def _one_beam(position: str | None, gantry_deg: float):
    case = box_case()
    case.beams = [Beam("B1", gantry_deg, 0.0, 0.0, case.beams[0].isocenter_mm)]
    if position:
        case.meta["PatientPosition"] = position
    return case


@pytest.mark.parametrize("position, gantry, hfs_gantry", [
    ("HFP", 0.0, 180.0),  # prone: the gantry above the patient looks at the back
    ("FFS", 90.0, 270.0),  # feet first: the gantry's left is the patient's right
    ("FFP", 0.0, 180.0),  # feet first and prone: from the back, as prone
    ("HFP", 40.0, 220.0),
])
def test_plates_are_drawn_from_the_case_s_own_position(position, gantry, hfs_gantry):
    plates = prepare(_one_beam(position, gantry), SMALL).channels
    same_direction = prepare(_one_beam("HFS", hfs_gantry), SMALL).channels
    as_if_supine = prepare(_one_beam("HFS", gantry), SMALL).channels
    for name in PLATES:
        np.testing.assert_allclose(plates[name], same_direction[name], atol=1e-5, err_msg=name)
    assert any(np.abs(plates[n] - as_if_supine[n]).max() > 0.5 for n in PLATES)  # what the model's HFS gave


def test_a_case_without_a_stated_position_is_head_first_supine():
    assert box_case().patient_position == "HFS"
    np.testing.assert_array_equal(prepare(_one_beam(None, 30.0), SMALL).channels["beam_plate"],
                                  prepare(_one_beam("HFS", 30.0), SMALL).channels["beam_plate"])


def test_the_position_is_read_from_dicom(phantom_dicom, tmp_path):
    shutil.copytree(phantom_dicom[0], tmp_path / "ffs")
    for path in (tmp_path / "ffs").iterdir():
        ds = pydicom.dcmread(path)
        if ds.Modality == "CT":
            ds.PatientPosition = "FFS"
        for setup in ds.get("PatientSetupSequence", []):
            setup.PatientPosition = "FFS"
        ds.save_as(path)
    assert load_case(tmp_path / "ffs").patient_position == "FFS"
    assert load_case(phantom_dicom[0]).patient_position == "HFS"


def test_a_position_the_plates_cannot_place_is_refused_before_work():
    case = _one_beam("HFDL", 0.0)
    with pytest.raises(InputError, match="patient position 'HFDL'.*HFS, HFP, FFS, FFP only"):
        check_predictable(case)
    case.beams = []  # without beams the position does not matter
    check_predictable(case)


def test_an_older_pipeline_folder_with_the_model_s_position_still_loads():
    config = PrepareConfig.from_dict({**SMALL.to_dict(), "patient_position": "HFS"})
    assert config == SMALL and "patient_position" not in config.to_dict()
