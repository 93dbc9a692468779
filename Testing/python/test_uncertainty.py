"""Per-voxel uncertainty from N candidate doses (:mod:`dosediffusion.metrics.uncertainty`): the std map,
its summary over the body, targets, organs and high-dose region, and its correlation with the error.
No torch: these run again on 3D Slicer's numpy (test_core_on_slicer_packages.py). The map a prediction
exposes and writes: test_prediction_layer.py, test_predict_cli.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from case_builders import box_case
from phantoms import make_phantom_case
from scipy import stats

from dosediffusion.errors import InputError
from dosediffusion.metrics.uncertainty import (
    average_ranks,
    candidate_std,
    std_error_correlation,
    std_summary,
    uncertainty_summary,
)


def test_std_is_numpys_sample_std_over_the_candidates():
    rng = np.random.default_rng(4)
    candidates = [rng.gamma(2.0, 10.0, (4, 5, 6)).astype(np.float32) for _ in range(3)]
    std = candidate_std(candidates)
    assert std.dtype == np.float32 and std.shape == (4, 5, 6)
    np.testing.assert_allclose(std, np.std(np.stack(candidates), axis=0, ddof=1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(std, np.std(np.stack(candidates), axis=0, ddof=0))  # ddof 1, not 0
    # two candidates: |a − b| / √2
    np.testing.assert_allclose(candidate_std(candidates[:2]), np.abs(candidates[0] - candidates[1]) / np.sqrt(2),
                               rtol=1e-5, atol=1e-6)


def test_one_candidate_has_no_map_and_equal_candidates_give_zeros():
    dose = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32) * 70
    assert candidate_std([dose]) is None
    assert np.array_equal(candidate_std([dose] * 16), np.zeros_like(dose))
    with pytest.raises(InputError, match="different shapes"):
        candidate_std([dose, dose[:, :, :4]])
    with pytest.raises(InputError, match="no candidate"):
        candidate_std([])


def test_summary_over_body_structures_and_high_dose_region():
    """The box: std 1 Gy in the PTV, 0.5 Gy on the cord, 0 elsewhere; dose 70 − 5·distance (Gy)."""
    case = box_case()
    ptv, cord, body = (case.structures[n].mask for n in ("PTV70", "SpinalCord", "BODY"))
    std = np.where(ptv, 1.0, np.where(cord, 0.5, 0.0)).astype(np.float32)
    summary = std_summary(std, case, case.dose)
    regions = summary["regions"]
    assert set(regions) == {"body", "PTV70", "SpinalCord"}
    expected_body_mean = (ptv.sum() + 0.5 * cord.sum()) / body.sum()
    assert regions["body"]["mean_gy"] == pytest.approx(expected_body_mean)
    assert regions["body"]["max_gy"] == 1.0 and regions["body"]["voxels"] == body.sum()
    assert regions["body"]["p95_gy"] == 1.0  # the PTV is 245 of the 2,304 body voxels (10.6 %)
    assert regions["PTV70"] == {"mean_gy": 1.0, "p95_gy": 1.0, "max_gy": 1.0, "voxels": int(ptv.sum())}
    assert regions["SpinalCord"]["mean_gy"] == pytest.approx(0.5)
    # high dose: body voxels above 35 Gy (half the 70 Gy maximum), i.e. closer than 7 voxels to the centre
    z, y, x = np.indices(case.grid.shape)
    high = body & (np.sqrt((z - 6) ** 2 + (y - 8) ** 2 + (x - 10) ** 2) < 7)
    assert summary["high_dose"]["threshold_gy"] == pytest.approx(35.0)
    assert summary["high_dose"]["voxels"] == high.sum()
    assert summary["high_dose"]["mean_gy"] == pytest.approx((ptv & high).sum() / high.sum()
                                                            + 0.5 * (cord & high).sum() / high.sum())


def test_summary_entry_of_a_prediction_is_json_with_the_correlation_when_the_case_has_a_dose():
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    rng = np.random.default_rng(1)
    std = (rng.random(case.grid.shape) * case.dose / 10).astype(np.float32)
    entry = uncertainty_summary(std, case, case.dose * np.float32(0.9), candidates=4)
    assert (entry["candidates"], entry["ddof"]) == (4, 1) and "standard deviation" in entry["method"]
    assert set(entry["regions"]) == {"body", "PTV_60", "SpinalCord", "Esophagus"}
    correlation = entry["error_correlation"]
    assert correlation["voxels"] == case.body.mask.sum() and correlation["pearson"] > 0.3
    assert entry == json.loads(json.dumps(entry))  # plain JSON, floats rounded
    assert entry["regions"]["body"]["mean_gy"] == round(entry["regions"]["body"]["mean_gy"], 4)
    no_dose = type(case)(**{**case.__dict__, "dose": None})
    assert "error_correlation" not in uncertainty_summary(std, no_dose, case.dose, candidates=4)


def test_correlations_are_scipys_with_ties():
    rng = np.random.default_rng(2)
    shape = (6, 7, 8)
    reference = rng.integers(0, 60, shape).astype(float)  # integers: |predicted − reference| is exact
    error = rng.integers(0, 5, shape).astype(float)  # many ties
    std = (error + rng.integers(0, 3, shape)).astype(np.float32)
    mask = rng.random(shape) > 0.3
    result = std_error_correlation(std, reference + error * rng.choice([-1, 1], shape), reference, mask)
    assert result["voxels"] == result["spearman_voxels"] == mask.sum() and result["reason"] is None
    assert result["pearson"] == pytest.approx(stats.pearsonr(std[mask], error[mask])[0], abs=1e-9)
    assert result["spearman"] == pytest.approx(stats.spearmanr(std[mask], error[mask])[0], abs=1e-9)
    values = np.array([3.0, 1.0, 3.0, 2.0])
    assert average_ranks(values).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_a_monotone_std_has_spearman_one_and_a_subsample_is_seeded():
    rng = np.random.default_rng(3)
    reference = np.zeros((10, 20, 30))
    predicted = rng.random(reference.shape) * 10
    mask = np.ones(reference.shape, bool)
    result = std_error_correlation(predicted**2, predicted, reference, mask)
    assert result["spearman"] == pytest.approx(1.0) and 0.9 < result["pearson"] < 1.0
    noisy = predicted + rng.normal(0, 3, reference.shape)
    sub = std_error_correlation(noisy, predicted, reference, mask, max_spearman_voxels=2000)
    full = std_error_correlation(noisy, predicted, reference, mask)
    assert sub["spearman_voxels"] == 2000 and sub["voxels"] == full["voxels"] == 6000
    assert sub["pearson"] == full["pearson"] and sub["spearman"] != full["spearman"]
    assert sub["spearman"] == pytest.approx(full["spearman"], abs=0.05)
    assert std_error_correlation(noisy, predicted, reference, mask, max_spearman_voxels=2000) == sub


@pytest.mark.parametrize(("std_value", "error_value", "reason"), [
    (0.0, None, "the std is constant"),
    (None, 2.0, "the error is constant"),
    (1.0, 2.0, "the std and the error are constant"),
])
def test_a_constant_std_or_error_has_no_correlation(std_value, error_value, reason):
    rng = np.random.default_rng(5)
    shape = (4, 5, 6)
    reference = rng.integers(0, 50, shape).astype(float)  # + 2.0 is exact: a truly constant error
    std = np.full(shape, std_value) if std_value is not None else rng.random(shape)
    error = np.full(shape, error_value) if error_value is not None else rng.random(shape)
    result = std_error_correlation(std, reference + error, reference, np.ones(shape, bool))
    assert result["pearson"] is None and result["spearman"] is None and reason in result["reason"]
    assert json.dumps(result)  # None, not NaN



def test_fewer_than_two_voxels_have_no_correlation():
    rng = np.random.default_rng(6)
    std, predicted, reference = (rng.random((3, 4, 5)) for _ in range(3))
    for count in (0, 1):
        mask = np.zeros((3, 4, 5), bool)
        mask.flat[:count] = True
        result = std_error_correlation(std, predicted, reference, mask)
        assert result["voxels"] == count and result["pearson"] is None and f"{count} voxel" in result["reason"]
    with pytest.raises(InputError, match="different grids"):
        std_error_correlation(std, predicted, reference[:2], np.ones((3, 4, 5), bool))
