"""The prior's fitted correction (:mod:`dosediffusion.conditioning.prior_correction`): its lookup table learns
what the plans give where the prior says p, its organ factors learn the sparing, it is saved with the
preprocessing settings and used wherever the prior is (the channel, the residual target), training fits it
once, a pipeline folder carries it through the one prediction path, and on real OpenKBP patients it brings the prior closer to the plans it never saw."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from case_builders import box_case
from model_builders import TINY_PREPROCESSING, tiny_pipeline
from openkbp_data import OPENKBP, needs_openkbp

from dosediffusion.conditioning.prepare import MODALITIES, PrepareConfig, from_crop, prepare
from dosediffusion.conditioning.prior_correction import PriorCorrection, features
from dosediffusion.conditioning.prior_dose import prior_dose
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.metrics.openkbp import dose_score
from dosediffusion.prediction.predictors import LocalPredictor
from dosediffusion_training.training import prior_correction_fit
from dosediffusion_training.training.config import RunConfig

WITH_PRIOR = (*MODALITIES, "prior_dose")


def _planned(case, prior, outside_scale=0.6, cord_scale=0.5):
    """``case`` with a dose made from its prior: as it is inside the PTV, ``outside_scale`` of it outside,
    and ``cord_scale`` of that in the cord."""
    f = features(case, prior)
    dose = np.where(f.outside, prior * outside_scale, prior).astype(np.float32)
    cord = case.structures["SpinalCord"].mask & f.outside
    dose[cord] *= cord_scale
    return dataclasses.replace(case, dose=dose)


def test_the_table_and_the_organ_factor_learn_the_plans_from_the_prior():
    case = box_case()
    prior = prior_dose(case)
    planned = _planned(case, prior)
    correction = PriorCorrection.fit([(planned, prior)], organ_smoothing_mm=0.0)  # the box's cord: one voxel wide
    assert correction.organ_factors["SpinalCord"] == pytest.approx(0.5, abs=0.1)
    corrected = correction.apply(planned, prior)
    support = case.dose_support()
    error, before = dose_score(corrected, planned.dose, support), dose_score(prior, planned.dose, support)
    assert error < 0.25 * before  # what is left is the binning's
    cord = case.structures["SpinalCord"].mask & ~case.structures["PTV70"].mask
    assert corrected[cord].mean() == pytest.approx(planned.dose[cord].mean(), rel=0.2)
    assert not corrected[~support].any()


def test_a_correction_saved_in_the_settings_is_the_one_prepare_uses_for_the_channel_and_the_residual():
    case = box_case()
    prior = prior_dose(case)
    correction = PriorCorrection.fit([(_planned(case, prior), prior)])
    saved = json.loads(json.dumps(correction.to_dict()))  # as preprocessing.json holds it
    config = PrepareConfig(crop_shape=(7, 10, 12), spacing_mm=None, modalities=WITH_PRIOR, dose_target="residual",
                           prior_correction=saved)
    assert PrepareConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    inputs = prepare(case, config)
    expected = correction.apply(case, prior)
    np.testing.assert_allclose(inputs.prior_gy, expected, atol=1e-3)
    plain = prepare(case, dataclasses.replace(config, prior_correction=None))
    assert not np.allclose(inputs.channels["prior_dose"], plain.channels["prior_dose"])
    assert not np.allclose(inputs.channels["dose"], plain.channels["dose"])


def test_a_correction_without_its_prior_or_malformed_is_refused():
    correction = PriorCorrection.fit([(box_case(), prior_dose(box_case()))]).to_dict()
    with pytest.raises(InputError, match="add 'prior_dose' to the modalities"):
        PrepareConfig(prior_correction=correction)
    with pytest.raises(InputError, match="refit it"):
        PrepareConfig(modalities=WITH_PRIOR, prior_correction={**correction, "table": correction["table"][1:]})
    with pytest.raises(InputError, match="malformed"):
        PrepareConfig(modalities=WITH_PRIOR, prior_correction={"table": []})
    case = box_case()
    case.structures = {k: s for k, s in case.structures.items() if s.role != "ptv"}
    with pytest.raises(InputError, match="needs a PTV with a prescription"):
        features(case, np.zeros(case.grid.shape, np.float32))


def test_training_fits_the_correction_once_and_a_resumed_run_reads_it_back(tmp_path, monkeypatch):
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("a", "b", "c"):
        np.savez(folder / f"{name}.npz")  # placeholders: the loader is replaced below
    cases = {str(folder / f"{name}.npz"): _planned(box_case(), prior_dose(box_case()), scale)
             for name, scale in (("a", 0.5), ("b", 0.6), ("c", 0.7))}
    monkeypatch.setattr("dosediffusion_training.data.dataset.load_any", lambda path, cache_dir=None: cases[str(path)])
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"data: {{folder: {folder}}}\npreprocessing: {{crop_shape: [7, 10, 12], spacing_mm: null, "
                           f"modalities: [{', '.join(WITH_PRIOR)}], dose_target: residual}}\n"
                           "train: {prior_correction_cases: 2}\n")
    config = RunConfig.from_yaml(config_file)
    paths = sorted(folder.iterdir())
    fitted = prior_correction_fit.with_prior_correction(config, paths, tmp_path / "run")
    expected = PriorCorrection.fit((cases[str(p)], prior_dose(cases[str(p)])) for p in (paths[0], paths[2]))
    assert fitted.preprocessing.prior_correction == json.loads(json.dumps(expected.to_dict()))
    assert prior_correction_fit.fitting_indices(3, 2) == [0, 2] and prior_correction_fit.fitting_indices(2, 5) == [0, 1]

    def no_fitting(*_):
        raise AssertionError("a resumed run fits again")

    monkeypatch.setattr(PriorCorrection, "fit", no_fitting)
    again = prior_correction_fit.with_prior_correction(config, paths, tmp_path / "run")
    assert again.preprocessing == fitted.preprocessing
    unfitted = dataclasses.replace(config, train=dataclasses.replace(config.train, prior_correction_cases=0))
    assert prior_correction_fit.with_prior_correction(unfitted, paths, tmp_path / "other") is unfitted


def test_a_run_that_fits_the_correction_needs_the_prior(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"data: {{folder: {tmp_path}}}\npreprocessing: {{crop_shape: [7, 10, 12]}}\n"
                           "train: {prior_correction_cases: 2}\n")
    with pytest.raises(InputError, match="needs 'prior_dose' among the modalities"):
        RunConfig.from_yaml(config_file)


@needs_openkbp
def test_on_real_patients_the_correction_fitted_on_others_brings_the_prior_closer_to_their_plans():
    train = [load_case(OPENKBP / "train" / f"pt_{n}.npz") for n in (1, 2, 3)]
    correction = PriorCorrection.fit((case, prior_dose(case)) for case in train)
    assert {"SpinalCord", "Brainstem", "Parotid_L"} <= set(correction.organ_factors)
    assert correction.organ_factors["SpinalCord"] < 1.0  # the plans spare the cord beyond the beams' paths
    for number in (201, 202):
        case = load_case(OPENKBP / "validation" / f"pt_{number}.npz")
        prior, support = prior_dose(case), case.dose_support()
        raw = dose_score(prior, case.dose, support)
        corrected = dose_score(correction.apply(case, prior), case.dose, support)
        assert corrected < 0.8 * raw, (number, raw, corrected)


def test_a_pipeline_trained_with_a_correction_predicts_the_corrected_prior_where_it_does_not_look(phantom_dicom,
                                                                                                   tmp_path):
    case = load_case(phantom_dicom[0])
    prior = prior_dose(case)
    correction = PriorCorrection.fit([(case, prior)])
    preprocessing = PrepareConfig(**{**TINY_PREPROCESSING.to_dict(), "modalities": WITH_PRIOR,
                                     "dose_target": "residual", "prior_correction": correction.to_dict()})
    pipeline = tiny_pipeline(seed=2, modalities=WITH_PRIOR)
    pipeline.preprocessing = preprocessing
    folder = pipeline.save_pretrained(tmp_path / "corrected")
    dose = LocalPredictor(folder, "cpu")(load_case(phantom_dicom[0]), steps=1, seed=0).dose_gy  # the one path
    corrected = correction.apply(case, prior)
    inputs = prepare(case, preprocessing, include_dose=False)
    view = from_crop(np.ones(inputs.crop_grid.shape, np.float32), case, inputs) > 0
    beyond = ~view & (corrected > 0)
    assert beyond.any() and not np.allclose(corrected[beyond], prior[beyond])
    np.testing.assert_allclose(dose[beyond], corrected[beyond], rtol=1e-5, atol=1e-3)


def test_a_correction_fitted_now_is_smooth_where_a_saved_one_keeps_its_steps():
    case = box_case()
    prior = prior_dose(case)
    planned = _planned(case, prior)
    default = PriorCorrection.fit([(planned, prior)])
    assert (default.interpolation, default.organ_smoothing_mm, default.keep_ptvs) == ("linear", 5.0, True)
    smooth = PriorCorrection.fit([(planned, prior)], organ_smoothing_mm=1.0)  # the box's cord: one 2.5 mm voxel
    stepped = PriorCorrection.fit([(planned, prior)], interpolation="nearest", organ_smoothing_mm=0.0,
                                  keep_ptvs=False)
    np.testing.assert_array_equal(smooth.table, stepped.table)  # the same bins, read differently
    # a saved correction without the settings reads as it was trained: nearest bins, sharp organ factors, also in
    # the PTVs
    old = {k: v for k, v in stepped.to_dict().items() if k not in ("interpolation", "organ_smoothing_mm", "keep_ptvs")}
    assert PriorCorrection.from_dict(old).keep_ptvs is False
    np.testing.assert_array_equal(PriorCorrection.from_dict(old).apply(case, prior),
                                  PriorCorrection.from_dict(stepped.to_dict()).apply(case, prior))
    again = PriorCorrection.from_dict(json.loads(json.dumps(smooth.to_dict())))
    np.testing.assert_allclose(again.apply(case, prior), smooth.apply(case, prior), atol=1e-3)  # 5 decimals saved
    # the blurred sparing reaches the cord's neighbours; fitted as it is applied, it still gives the cord its dose
    cord = case.structures["SpinalCord"].mask & features(case, prior).outside
    beside = np.roll(cord, 1, axis=2) & ~cord & features(case, prior).outside
    sharp_dose = PriorCorrection.fit([(planned, prior)], organ_smoothing_mm=0.0).apply(case, prior)
    smooth_dose = smooth.apply(case, prior)
    assert smooth_dose[beside].mean() < 0.99 * sharp_dose[beside].mean()
    assert smooth.organ_factors["SpinalCord"] < stepped.organ_factors["SpinalCord"]
    assert smooth_dose[cord].mean() == pytest.approx(planned.dose[cord].mean(), rel=0.1)
    assert not smooth_dose[~case.dose_support()].any()


def test_a_correction_that_keeps_the_ptvs_gives_them_the_tables_dose_and_spares_only_outside():
    case = box_case()
    prior = prior_dose(case)
    planned = _planned(case, prior)
    # blurred, the sparing of the cord (5 mm from the PTV) reaches into the PTV unless the PTVs are kept
    kept = PriorCorrection.fit([(planned, prior)])
    spilled = PriorCorrection.fit([(planned, prior)], keep_ptvs=False)
    assert kept.organ_factors == spilled.organ_factors  # fitted outside the PTVs: the same fit
    f = features(case, prior)
    inside = ~f.outside & case.dose_support()
    kept_dose, spilled_dose = kept.apply(case, prior), spilled.apply(case, prior)
    np.testing.assert_array_equal(kept_dose[inside], kept._table_dose(f)[inside])
    assert (spilled_dose[inside] / kept_dose[inside]).min() < 0.99
    np.testing.assert_array_equal(kept_dose[f.outside], spilled_dose[f.outside])
    assert PriorCorrection.from_dict(json.loads(json.dumps(kept.to_dict()))).keep_ptvs is True


def test_the_linear_table_is_the_bins_value_at_their_centres_and_the_identity_in_empty_bins():
    case = box_case()
    prior = prior_dose(case)
    correction = PriorCorrection.fit([(_planned(case, prior), prior)], organ_smoothing_mm=0.0)
    f = features(case, prior)
    i, j = np.nonzero(~np.isnan(correction.table))
    ratio_centres = (correction.ratio_edges[:-1] + correction.ratio_edges[1:]) / 2
    distance_centres = (correction.distance_edges_mm[:-1] + correction.distance_edges_mm[1:]) / 2
    keep = (i < len(ratio_centres)) & (j < len(distance_centres))
    probe = dataclasses.replace(f, ratio=ratio_centres[i[keep]], distance_mm=distance_centres[j[keep]],
                                rx_gy=np.float32(1.0))
    np.testing.assert_allclose(correction._table_dose(probe), correction.table[i[keep], j[keep]], atol=1e-5)
    empty = np.argwhere(np.isnan(correction.table[:-1, :-1]))[0]
    probe = dataclasses.replace(f, ratio=ratio_centres[empty[:1]], distance_mm=distance_centres[empty[1:]],
                                rx_gy=np.float32(1.0))
    np.testing.assert_allclose(correction._table_dose(probe), ratio_centres[empty[0]], atol=1e-5)


def test_a_correction_with_unknown_settings_is_refused():
    correction = PriorCorrection.fit([(box_case(), prior_dose(box_case()))]).to_dict()
    with pytest.raises(InputError, match="interpolation must be one of nearest, linear"):
        PriorCorrection.from_dict({**correction, "interpolation": "cubic"})
    with pytest.raises(InputError, match="organ_smoothing_mm must be ≥ 0"):
        PriorCorrection.from_dict({**correction, "organ_smoothing_mm": -1})
    with pytest.raises(InputError, match="keep_ptvs must be true or false"):
        PriorCorrection.from_dict({**correction, "keep_ptvs": "yes"})
