"""The trivial distance fall-off baseline recovers a dose that follows its own model."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dosediffusion_training.baselines.distance_falloff import BIN_MM, DistanceFalloff
from dosediffusion_training.synth.phantom import make_phantom


def _model_dose(case, length_mm=25.0):
    """Dose = max over PTVs of Rx · exp(−distance / length), inside the body."""
    dose = np.zeros(case.grid.shape)
    for ptv in case.with_role("ptv"):
        d = ndimage.distance_transform_edt(~ptv.mask, sampling=tuple(case.grid.spacing)[::-1])
        dose = np.maximum(dose, ptv.prescription_gy * np.exp(-d / length_mm))
    return (dose * case.body.mask).astype(np.float32)


def test_fit_and_predict_a_single_level_dose(tmp_path):
    cases = [c for c in (make_phantom(s, shape=(20, 40, 48)) for s in range(8)) if len(c.with_role("ptv")) == 1]
    for case in cases:
        case.dose = _model_dose(case)
    baseline = DistanceFalloff.fit(cases[:-1])
    distances = np.arange(len(baseline.curve)) * BIN_MM
    assert np.allclose(baseline.curve[:20], np.exp(-distances[:20] / 25.0), atol=0.06)
    held_out = cases[-1]
    predicted = baseline.predict(held_out)
    body = held_out.body.mask
    assert np.abs(predicted - held_out.dose)[body].mean() < 0.02 * held_out.prescription.levels_gy[0]
    assert (predicted[~body] == 0).all()
    baseline.save(tmp_path / "b.json")
    assert np.allclose(DistanceFalloff.load(tmp_path / "b.json").curve, baseline.curve, atol=1e-5)
