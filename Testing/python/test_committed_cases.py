"""The committed synthetic cases: real pyRadPlan doses that look like plans, the same in both formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dosediffusion.io.compact import read_compact
from dosediffusion.io.load import load_case
from dosediffusion.metrics.dose_metrics import case_dvhs
from dosediffusion_training.data.dataset import list_cases

DATA = Path(__file__).resolve().parents[1] / "data" / "synth"


@pytest.mark.parametrize("path", list_cases(DATA / "compact"), ids=lambda p: p.name)
def test_doses_look_like_plans(path):
    case = read_compact(path)
    dvhs = case_dvhs(case)
    high = max(case.with_role("ptv"), key=lambda s: s.prescription_gy)
    rx = high.prescription_gy
    assert 0.85 * rx < dvhs[high.name].dose_at_volume_percent(95) <= 1.02 * rx
    assert dvhs[high.name].max_gy < 1.15 * rx
    assert (case.dose[~case.body.mask] == 0).all()
    assert dvhs["SpinalCord"].max_gy < 0.8 * rx  # the cord is spared
    assert dvhs["BODY"].mean_gy < 0.5 * rx


def test_dicom_and_compact_hold_the_same_case():
    dicom = load_case(DATA / "dicom" / "synth_00002")
    compact = read_compact(DATA / "compact" / "synth_00002.case.npz")
    assert dicom.grid.same_as(compact.grid)
    assert set(dicom.structures) == set(compact.structures)
    for name, structure in compact.structures.items():
        assert np.array_equal(dicom.structures[name].mask, structure.mask), name
    step = compact.dose.max() / 65535
    assert np.abs(dicom.dose - compact.dose).max() <= step
    assert [b.gantry_deg for b in dicom.beams] == pytest.approx([b.gantry_deg for b in compact.beams], abs=1e-3)
    assert dicom.prescription.levels_gy == compact.prescription.levels_gy
