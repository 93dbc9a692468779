"""Gamma index: known answers, and agreement with pymedphys' gamma on the same volumes."""

import numpy as np
import pytest

from dosediffusion.errors import InputError
from dosediffusion.metrics.gamma import gamma_index

SPACING = (2.5, 2.5, 2.5)


def _doses(shape=(14, 16, 18), shift=1, scale=1.03, noise=1.5):
    z, y, x = np.indices(shape)
    centre = np.array(shape) / 2
    ref = 60 * np.exp(-((x - centre[2]) ** 2 + (y - centre[1]) ** 2 + (z - centre[0]) ** 2) / 40.0)
    evaluated = np.roll(ref, shift, axis=2) * scale + np.random.default_rng(1).normal(0, noise, shape)
    return ref, evaluated


def test_identical_doses_pass_everywhere_with_gamma_zero():
    ref, _ = _doses()
    result = gamma_index(ref, ref, SPACING)
    assert result.pass_rate_percent == 100.0 and np.nanmax(result.gamma) == 0.0
    assert result.evaluated_voxels == int((ref >= 0.1 * ref.max()).sum())


def test_a_pure_dose_offset_gives_gamma_offset_over_tolerance():
    ref, _ = _doses()
    result = gamma_index(ref, ref + 0.6, SPACING, dose_percent=2.0, dta_mm=0.001, steps_per_dta=1)
    # DTA ~ 0: gamma is the dose difference over 2 % of the 60 Gy maximum (1.2 Gy)
    assert np.nanmax(result.gamma) == pytest.approx(0.5, abs=1e-4)


def test_a_shift_within_dta_passes_a_distance_only_test():
    ref, _ = _doses(noise=0.0)
    shifted = np.roll(ref, 1, axis=2)  # 2.5 mm; the search lattice (DTA / 5) holds that offset exactly
    inside = np.zeros(ref.shape, bool)
    inside[:, :, 1:-1] = True  # np.roll wraps the first column round; the last has no neighbour beyond
    passed = gamma_index(ref, shifted, SPACING, dose_percent=0.01, dta_mm=3.125, steps_per_dta=5)
    assert np.all(passed.gamma[inside & ~np.isnan(passed.gamma)] <= 2.5 / 3.125 + 1e-6)
    failed = gamma_index(ref, shifted, SPACING, dose_percent=0.01, dta_mm=2.0, steps_per_dta=5)
    assert failed.pass_rate_percent < 50.0


def test_grids_must_match():
    with pytest.raises(InputError):
        gamma_index(np.ones((2, 2, 2)), np.ones((2, 2, 3)), SPACING)


@pytest.mark.parametrize("dose_percent, dta_mm, local", [(3.0, 3.0, False), (2.0, 2.0, False), (3.0, 3.0, True)])
def test_pass_rate_matches_pymedphys(dose_percent, dta_mm, local):
    pymedphys = pytest.importorskip("pymedphys", reason="pymedphys is installed by Testing/install_test_deps.sh")
    ref, evaluated = _doses()
    axes = tuple(np.arange(n) * 2.5 for n in ref.shape)
    # pymedphys samples the search shell at DTA / interp_fraction; 20 is where its pass rate has converged here
    theirs = pymedphys.gamma(axes, ref, axes, evaluated, dose_percent_threshold=dose_percent, distance_mm_threshold=dta_mm,
                             lower_percent_dose_cutoff=10, local_gamma=local, interp_fraction=20)
    their_rate = 100.0 * np.mean(theirs[~np.isnan(theirs)] <= 1)
    ours = gamma_index(ref, evaluated, SPACING, dose_percent=dose_percent, dta_mm=dta_mm, local=local)
    assert ours.evaluated_voxels == int((~np.isnan(theirs)).sum())
    assert ours.pass_rate_percent == pytest.approx(their_rate, abs=0.5)
    assert 50.0 < their_rate < 100.0  # a test with failures on both sides, not a trivial 100 %
