"""The ray-traced prior dose against pyRadPlan's open field of the same beams (TG-119 5-field case).

pyRadPlan 0.5.0 (its own environment: ``DoseDiffusionTraining/synth/setup_engine_env.sh``) computes the
open-field dose of the prior's five directions (``compute_dose(..., open_field=True)``: every bixel on the
target's projection weight 1, no optimisation), with the prior's own aperture (``target_margin=False``: the
bixels on the projection of the target itself). Both doses are scaled to D97(PTV) = Rx; the prior must agree
with it (3 %/3 mm global gamma, MAE in the body) and clearly better than the same rays without attenuation
and build-up. Thresholds from ``Testing/benchmarks/results/prior_vs_pyradplan.json``: on this case the prior
has γ 78.9 % and MAE 0.66 Gy, the same rays without attenuation and build-up γ 44.5 %, MAE 1.27 Gy (on the 9-field
and arc cases the prior has γ 83.2 / 86.8 %, MAE 0.60 / 0.54 Gy). Asserted: γ ≥ 75 % and MAE ≤ 0.75 Gy, and the
flat-depth rays at least 20 points of γ lower with 1.5 × the MAE. Measured on this case, each of these breaks
them: attenuation 0.003 or 0.006 /mm instead of 0.0045 (γ 60.3 / 73.8 %, MAE 0.76 / 0.79 Gy), penumbra σ 2 or
7 mm instead of 4 (γ 44.5 / 57.9 %), every gantry angle turned by 180° (γ 35.0 %, MAE 2.33 Gy), pyRadPlan's
IMRT aperture (target + 6 mm) as the reference (γ 33.7 %, MAE 1.79 Gy). About 35 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dosediffusion.conditioning.prior_dose import PriorDoseConfig, beam_directions, prior_dose
from dosediffusion.io.compact import read_compact
from dosediffusion.metrics.evaluation import masked_mae, normalise_to_d97
from dosediffusion.metrics.gamma import gamma_index
from dosediffusion.roles import high_ptv
from dosediffusion_training.synth import engine

pytestmark = pytest.mark.peers  # a helper environment: see pyproject's markers

CASE = Path(__file__).resolve().parents[2] / "DoseDiffusionTraining" / "datasets" / "tg119" / "tg119_5_fields.case.npz"
MIN_GAMMA_PERCENT = 75.0
MAX_MAE_GY = 0.75
MIN_GAMMA_GAP = 20.0  # points of gamma pass rate the flat-depth rays must lose
MIN_MAE_RATIO = 1.5


def _scores(dose: np.ndarray, reference: np.ndarray, case) -> tuple[float, float]:
    """(3 %/3 mm global gamma pass rate %, MAE in the body Gy) of ``dose`` against ``reference``."""
    gamma = gamma_index(reference, dose, case.grid.spacing, dose_percent=3.0, dta_mm=3.0, pass_rate_only=True)
    return gamma.pass_rate_percent, masked_mae(dose, reference, case.dose_support())


def test_prior_agrees_with_pyradplan_open_field():
    case = read_compact(CASE)
    directions = beam_directions(case.beams, PriorDoseConfig().arc_step_deg)
    structures = [(s.name, s.mask, s.role, s.prescription_gy or 0.0) for s in case.structures.values()
                  if s.role in ("ptv", "oar", "body")]
    dose, info = engine.compute_dose(case.ct, case.grid.spacing, case.grid.origin, structures,
                                     case.prescription.fractions, [(g, c) for g, c, _, _ in directions],
                                     directions[0][2], open_field=True, target_margin=False, timeout_s=300)
    assert info["num_iterations"] == 0 and np.all(info["bixel_weights"] == 1.0)
    ptv = high_ptv(case)
    reference = normalise_to_d97(dose, ptv.mask, ptv.prescription_gy)

    gamma, mae = _scores(prior_dose(case), reference, case)
    flat_gamma, flat_mae = _scores(prior_dose(case, PriorDoseConfig(mu_per_mm=0.0, surface_fraction=1.0)),
                                   reference, case)
    summary = f"prior γ {gamma:.1f} %, MAE {mae:.2f} Gy; flat depth γ {flat_gamma:.1f} %, MAE {flat_mae:.2f} Gy"
    assert gamma >= MIN_GAMMA_PERCENT and mae <= MAX_MAE_GY, summary
    assert flat_gamma <= gamma - MIN_GAMMA_GAP and flat_mae >= MIN_MAE_RATIO * mae, summary
