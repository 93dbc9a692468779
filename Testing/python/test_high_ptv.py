"""The high PTV and the PTV of each prescription level: one rule for the evaluation, the scorecards and the report."""

import numpy as np
import pytest

from dosediffusion.case import Case, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.metrics.case_evaluation import evaluate_dose
from dosediffusion.metrics.evaluation import gdp_hmm_mae
from dosediffusion.metrics.scorecard import find_structure
from dosediffusion.roles import high_ptv, ptv_at_level

SHAPE = (8, 16, 16)


def _box(z0, z1, y0, y1, x0, x1):
    mask = np.zeros(SHAPE, bool)
    mask[z0:z1, y0:y1, x0:x1] = True
    return mask


def _case(*structures):
    grid = Grid(SHAPE, (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    return Case("ptvs", grid, np.zeros(SHAPE, np.float32), {s.name: s for s in structures})


@pytest.fixture
def sib():
    """Two 70 Gy PTVs (the second larger), a 60 Gy one, an empty 80 Gy one, one without a prescription."""
    return _case(Structure("PTV_70a", _box(2, 4, 2, 4, 2, 4), "ptv", 70.0),
                 Structure("PTV_70b", _box(2, 6, 8, 12, 8, 12), "ptv", 70.0),
                 Structure("PTV_60", _box(1, 7, 1, 14, 1, 14), "ptv", 60.0),
                 Structure("PTV_80", np.zeros(SHAPE, bool), "ptv", 80.0),
                 Structure("PTV_x", _box(0, 8, 0, 16, 0, 16), "ptv", None),
                 Structure("BODY", np.ones(SHAPE, bool), "body"))


def test_the_high_ptv_is_the_largest_non_empty_one_of_the_highest_prescription(sib):
    assert high_ptv(sib).name == "PTV_70b"  # the empty 80 Gy one and the unprescribed one do not count
    assert ptv_at_level(sib, 1) is high_ptv(sib) and ptv_at_level(sib, 2).name == "PTV_60"
    assert ptv_at_level(sib, 3) is None
    with pytest.raises(InputError, match="count from 1"):
        ptv_at_level(sib, 0)


def test_no_prescribed_ptv_no_high_ptv(sib):
    case = _case(sib.structures["PTV_x"], sib.structures["BODY"])
    assert high_ptv(case) is None


def test_scorecard_levels_and_the_evaluation_use_the_same_ptv(sib):
    assert find_structure(sib, {"ptv_level": 1}) is high_ptv(sib)
    assert find_structure(sib, {"ptv_level": 2}) is ptv_at_level(sib, 2)
    rng = np.random.default_rng(0)
    ref = (np.where(sib.structures["PTV_60"].mask, 60.0, 10.0) + rng.normal(0, 1, SHAPE)).astype(np.float32)
    ref[sib.structures["PTV_70a"].mask] = 75.0  # D97 of the small 70 Gy PTV differs from the large one's
    pred = ref * 0.9
    body = sib.body.mask
    expected = gdp_hmm_mae(pred, ref, body, sib.structures["PTV_70b"].mask, 70.0)
    assert expected != gdp_hmm_mae(pred, ref, body, sib.structures["PTV_70a"].mask, 70.0)
    assert evaluate_dose(pred, ref, sib, gamma=False)["gdp_hmm_mae_gy"] == expected
