"""The prior dose as a modality: one registry entry, older slots kept, and a pipeline trained with it
predicts through the same prediction path (CLI) with no change there."""

from __future__ import annotations

import json

import numpy as np
from case_builders import box_case
from model_builders import TINY_PREPROCESSING, tiny_pipeline

from dosediffusion.cli.main import main
from dosediffusion.conditioning.prepare import MODALITIES, MODALITY_BUILDERS, PrepareConfig, crop_grid, prepare, to_crop
from dosediffusion.conditioning.prior_dose import prior_dose
from dosediffusion.io.load import load_case
from dosediffusion.model.loading import load_pipeline

WITH_PRIOR = (*MODALITIES, "prior_dose")


def test_the_registry_keeps_every_slot_and_appends_the_prior():
    assert tuple(MODALITY_BUILDERS)[: len(MODALITIES)] == MODALITIES == (
        "ct", "ptv", "oar", "body", "beam_plate", "angle_plate", "dose")  # the slots older folders were trained with
    assert tuple(MODALITY_BUILDERS) == WITH_PRIOR
    assert PrepareConfig().modalities == MODALITIES  # a model has the prior only when it asks for it


def test_the_prior_channel_is_the_prior_dose_on_the_crop_scaled_as_the_dose():
    case = box_case()
    config = PrepareConfig(crop_shape=(9, 16, 32), spacing_mm=None, modalities=WITH_PRIOR)
    inputs = prepare(case, config)
    expected = to_crop(prior_dose(case), case, inputs) * 2.0 / inputs.dose_reference_gy - 1.0
    np.testing.assert_allclose(inputs.channels["prior_dose"], np.clip(expected, -1, 1), atol=1e-6)
    assert crop_grid(case, config)[0].shape == inputs.channels["prior_dose"].shape
    assert inputs.channels["prior_dose"].max() > 0.5  # the targets are near Rx, 70/84 → 0.67
    case.beams = []
    assert "prior_dose" not in prepare(case, config).channels  # no beams, no prior: an absent condition


def test_a_pipeline_with_the_prior_predicts_through_the_cli(phantom_dicom, tmp_path, monkeypatch):
    preprocessing = PrepareConfig(**{**TINY_PREPROCESSING.to_dict(), "modalities": WITH_PRIOR})
    pipeline = tiny_pipeline(seed=4, modalities=WITH_PRIOR)
    pipeline.preprocessing = preprocessing
    folder = pipeline.save_pretrained(tmp_path / "with-prior")
    loaded = load_pipeline(folder)
    assert list(loaded.model.config.modalities) == list(WITH_PRIOR) and "prior_dose" in loaded.condition_modalities()
    seen = {}
    original = type(loaded).encode_conditions

    def spy(self, channels, device):
        seen.update(channels)
        return original(self, channels, device)

    monkeypatch.setattr(type(loaded), "encode_conditions", spy)
    prediction = loaded(load_case(phantom_dicom[0]), steps=1, device="cpu")
    assert "prior_dose" in seen and np.isfinite(prediction.dose_gy).all()
    assert main(["predict", str(phantom_dicom[0]), "--model", str(folder), "--out", str(tmp_path / "o"),
                 "--steps", "1", "--no-report", "--scorecard", "none"]) == 0
    summary = json.loads(next((tmp_path / "o").glob("*/summary.json")).read_text())
    assert summary["steps"] == 1 and summary["model"]["kind"] == "DoseDiffusionPipeline"

