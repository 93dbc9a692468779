"""One evaluation of a dose against a reference on a case: what ``dosediffusion evaluate``,
``dosediffusion-train evaluate`` and the benchmarks report, computed here once.

Figures (Gy unless named): ``mae_body_gy`` (inside the body, the whole grid without one),
``gdp_hmm_mae_gy`` (with a prescribed target), the OpenKBP ``dose_score_gy`` / ``dvh_score_gy`` with
every DVH point, ``ptv_mae_gy`` / ``oar_mae_gy`` (inside the union of the targets / of the OARs, when
there are any), ``structure_mae_gy`` per non-empty structure, ``psnr_db`` and ``ssim`` inside the body,
``gamma_pass_percent`` (3 %/3 mm and 2 %/2 mm, global, 10 % low-dose cut-off; optional: it is the slow
one) and, with a scorecard template, both doses' totals and their difference.
"""

from __future__ import annotations

import numpy as np

from dosediffusion.case import Case
from dosediffusion.metrics.evaluation import gdp_hmm_mae, masked_mae, psnr, ssim3d
from dosediffusion.metrics.gamma import gamma_index
from dosediffusion.metrics.openkbp import openkbp_scores
from dosediffusion.metrics.scorecard import ScoreReport, score_case
from dosediffusion.roles import high_ptv

#: The gamma criteria reported: (dose %, distance mm).
GAMMA_CRITERIA = ((3.0, 3.0), (2.0, 2.0))


def scorecard_reports(case: Case, template: dict, pred: np.ndarray, ref: np.ndarray) -> tuple[ScoreReport, ScoreReport]:
    """The scorecards of ``pred`` and of ``ref`` (Gy) on ``case`` with a loaded ``template``."""
    return score_case(case, template, pred), score_case(case, template, ref)


def evaluate_dose(pred: np.ndarray, ref: np.ndarray, case: Case, template: dict | None = None, *,
                  reports: tuple[ScoreReport, ScoreReport] | None = None, gamma: bool = True) -> dict:
    """Every figure of the module docstring for ``pred`` against ``ref`` (both Gy, (z, y, x) on
    ``case.grid``); the scorecard totals from a loaded ``template`` or already computed (pred, ref)
    ``reports``; the gamma pass rates unless ``gamma`` is False."""
    body = case.body.mask if case.body is not None else np.ones(case.grid.shape, bool)
    result: dict = {"case_id": case.case_id, "mae_body_gy": masked_mae(pred, ref, body)}
    high = high_ptv(case)
    if high is not None:
        result["gdp_hmm_mae_gy"] = gdp_hmm_mae(pred, ref, body, high.mask, high.prescription_gy)
    result.update(openkbp_scores(pred, ref, case))
    for role in ("ptv", "oar"):
        masks = [s.mask for s in case.with_role(role) if s.mask.any()]
        if masks:
            result[f"{role}_mae_gy"] = masked_mae(pred, ref, np.any(masks, axis=0))
    result["structure_mae_gy"] = {n: masked_mae(pred, ref, s.mask) for n, s in case.structures.items() if s.mask.any()}
    result["psnr_db"] = psnr(pred, ref, body)
    result["ssim"] = ssim3d(pred, ref, body)
    if gamma:
        result["gamma_pass_percent"] = {
            f"{dd:g}%/{dta:g}mm": gamma_index(ref, pred, case.grid.spacing, dose_percent=dd, dta_mm=dta,
                                              pass_rate_only=True).pass_rate_percent
            for dd, dta in GAMMA_CRITERIA}
    if template is not None or reports is not None:
        p, r = reports or scorecard_reports(case, template, pred, ref)
        result["scorecard"] = {"template": p.template, "pred": p.total, "ref": r.total, "diff": p.total - r.total}
    return result
