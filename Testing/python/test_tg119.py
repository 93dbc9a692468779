"""pyRadPlan's TG119 C-shape phantom as a Case (exported through the engine environment)."""

from __future__ import annotations

import numpy as np
import pytest

from dosediffusion.errors import InputError
from dosediffusion_training.synth.tg119 import RX_GY, tg119_case

pytestmark = pytest.mark.peers  # a helper environment: see pyproject's markers


def test_tg119_phantom_and_setups():
    case = tg119_case("TG119 5 fields")
    assert {n: s.role for n, s in case.structures.items()} == {"PTV_50": "ptv", "Core": "oar", "BODY": "body"}
    ptv, core = case.structures["PTV_50"].mask, case.structures["Core"].mask
    assert case.structures["PTV_50"].prescription_gy == RX_GY and case.prescription.fractions == 25
    assert not (ptv & core).any() and (ptv <= case.body.mask).all()
    centroid = np.round(np.argwhere(ptv).mean(axis=0)).astype(int)
    assert not ptv[tuple(centroid)]  # a C shape: its centroid lies in the concavity, by the core
    assert np.linalg.norm(np.argwhere(core).mean(axis=0) - centroid) < 10
    assert case.ct[case.body.mask].mean() > -200 and np.median(case.ct[~case.body.mask]) == -1000
    assert [b.gantry_deg for b in case.beams] == [0.0, 72.0, 144.0, 216.0, 288.0]
    arc = tg119_case("TG119 arc").beams
    assert len(arc) == 1 and arc[0].is_arc and len(arc[0].control_point_gantry_deg) == 36
    with pytest.raises(InputError, match="unknown TG119 setup"):
        tg119_case("TG119 3 fields")
