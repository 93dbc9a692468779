"""A model that corrects the ray-traced prior (``dose_target: residual``): its dose channel is the dose minus
the prior, restoring adds the full-resolution prior back (so the whole patient has a dose, inside the field
of view or not), and a pipeline trained that way predicts through the one prediction path. Also: the beam
plate thins arcs with the prior's rule when asked (``arc_step_deg``)."""

from __future__ import annotations

import numpy as np
import pytest
from case_builders import box_case
from model_builders import TINY_PREPROCESSING, tiny_pipeline

from dosediffusion.case import Beam
from dosediffusion.conditioning.plates import beam_angles, beam_plate
from dosediffusion.conditioning.prepare import MODALITIES, PrepareConfig, from_crop, prepare
from dosediffusion.conditioning.prior_dose import beam_directions, prior_dose
from dosediffusion.conditioning.restore import restore
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case

WITH_PRIOR = (*MODALITIES, "prior_dose")


def _residual(**settings) -> PrepareConfig:
    return PrepareConfig(**{"crop_shape": (7, 10, 12), "spacing_mm": None, "modalities": WITH_PRIOR,
                            "dose_target": "residual", **settings})


def test_the_residual_channel_restores_to_the_dose_inside_the_view_and_the_prior_outside():
    case = box_case()
    inputs = prepare(case, _residual())
    prior = prior_dose(case)
    np.testing.assert_array_equal(inputs.prior_gy, prior)
    channel = inputs.channels["dose"]
    assert abs(float(channel.mean())) < 0.5 and channel.min() < 0 < channel.max()  # a difference, not a dose
    restored = restore(channel, case, inputs)
    inside = np.zeros(case.grid.shape, bool)
    (z0, y0, x0), (d, h, w) = inputs.offset, inputs.crop_grid.shape
    inside[max(z0, 0):z0 + d, max(y0, 0):y0 + h, max(x0, 0):x0 + w] = True
    support = case.dose_support()
    assert inside.sum() < support.sum() and (~inside & support & (prior > 1)).any()  # the crop cuts the patient
    np.testing.assert_allclose(restored[inside & support], case.dose[inside & support], atol=1e-4)
    np.testing.assert_allclose(restored[~inside], np.where(support, prior, 0)[~inside], atol=1e-5)
    # the same crop predicting the dose itself leaves the patient outside the view at zero
    plain = prepare(case, PrepareConfig(crop_shape=(7, 10, 12), spacing_mm=None, modalities=WITH_PRIOR))
    assert plain.prior_gy is None and not restore(plain.channels["dose"], case, plain)[~inside].any()


def test_a_residual_model_says_what_it_needs():
    with pytest.raises(InputError, match="add 'prior_dose' to the modalities"):
        PrepareConfig(dose_target="residual")
    with pytest.raises(InputError, match="dose_target must be one of dose, residual"):
        PrepareConfig(dose_target="relative")
    case = box_case()
    case.beams = []
    with pytest.raises(InputError, match="needs the plan's beams"):
        prepare(case, _residual(), include_dose=False)


def test_a_residual_pipeline_predicts_the_prior_where_it_does_not_look(phantom_dicom, tmp_path):
    preprocessing = PrepareConfig(**{**TINY_PREPROCESSING.to_dict(), "modalities": WITH_PRIOR,
                                     "dose_target": "residual"})
    pipeline = tiny_pipeline(seed=2, modalities=WITH_PRIOR)
    pipeline.preprocessing = preprocessing
    loaded = type(pipeline).from_pretrained(pipeline.save_pretrained(tmp_path / "residual"))
    assert loaded.preprocessing.dose_target == "residual"
    case = load_case(phantom_dicom[0])
    dose = loaded(case, steps=1, device="cpu").dose_gy
    inputs = prepare(case, preprocessing, include_dose=False)
    view = from_crop(np.ones(inputs.crop_grid.shape, np.float32), case, inputs) > 0
    beyond = ~view & (inputs.prior_gy > 0)  # the prior's dose where the model's field of view does not reach
    assert beyond.any() and np.isfinite(dose).all()
    np.testing.assert_allclose(dose[beyond], inputs.prior_gy[beyond], rtol=1e-5, atol=1e-4)
    assert not np.allclose(dose[view], inputs.prior_gy[view])  # inside it, the model's correction


def test_the_beam_plate_can_thin_arcs_as_the_prior_does():
    case = box_case()
    iso = case.beams[0].isocenter_mm
    gantry = tuple(float(a) for a in np.arange(180.0, 540.0, 2.0) % 360.0)  # an arc of 2° control points
    case.beams = [Beam("Arc", gantry[0], 0.0, 0.0, iso, gantry, arc_direction="CW")]
    thinned = beam_angles(case.beams, arc_step_deg=20.0)
    assert [a for a, _, _ in thinned] == list(gantry[::10])
    assert [(g, c, i) for g, c, i, _ in beam_directions(case.beams, 20.0)] == thinned  # the prior's directions
    ptv = case.structures["PTV70"].mask
    np.testing.assert_array_equal(beam_plate(ptv, case.grid, case.beams, arc_step_deg=20.0),
                                  beam_plate(ptv, case.grid, case.beams, arc_stride=10))
    assert not np.array_equal(beam_plate(ptv, case.grid, case.beams), beam_plate(ptv, case.grid, case.beams,
                                                                                arc_step_deg=20.0))
    plate = prepare(case, PrepareConfig(crop_shape=(7, 10, 12), spacing_mm=None, arc_step_deg=20.0))
    default = prepare(case, PrepareConfig(crop_shape=(7, 10, 12), spacing_mm=None))
    assert not np.array_equal(plate.channels["beam_plate"], default.channels["beam_plate"])
