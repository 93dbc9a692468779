"""The OpenKBP challenge's scores (Babier et al., Med Phys 48(9), 2021; its ``dose_evaluation_class.py``),
over the voxels of the case grid as the challenge computes them:

- **dose score** of one patient: Σ |reference − prediction| over *all* voxels divided by the number of
  voxels of the dose support (``possible_dose_mask``; the body where a case has none), Gy. A prediction
  is expected to be zero outside the support: whatever it puts there counts. Over a set of patients:
  the mean of the patients' scores.
- **DVH points** of one structure, from the voxel doses inside its mask (numpy percentiles, linear
  interpolation; no sub-voxel sampling): a target's D99, D95, D1 (percentiles 1, 5, 99); an OAR's
  D0.1cc (the percentile 100 − n / N · 100, n = the voxels in 0.1 cc rounded, at least one; N the
  structure's voxels; 0 when n ≥ N, as the challenge has it) and mean dose, Gy.
- **DVH score**: the mean |Δ| over every DVH point of every target and OAR; over a set of patients
  the mean over all their points together (not the mean of the patients' means), as the challenge's
  ``nanmean`` over its table.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dosediffusion.case import DOSE_SUPPORT
from dosediffusion.errors import InputError

TARGET_POINTS = ("D99", "D95", "D1")
OAR_POINTS = ("D0.1cc", "mean")


def dvh_points(dose_gy: np.ndarray, mask: np.ndarray, role: str, voxel_volume_cc: float) -> dict[str, float]:
    """The challenge's DVH points (Gy) of one structure: D99, D95, D1 for a target (``role`` ``ptv``),
    D0.1cc and mean for an OAR."""
    voxels = np.asarray(dose_gy, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    if voxels.size == 0:
        raise InputError("DVH points of an empty structure")
    if role == "ptv":
        return {"D99": float(np.percentile(voxels, 1)), "D95": float(np.percentile(voxels, 5)),
                "D1": float(np.percentile(voxels, 99))}
    in_tenth_cc = max(1.0, float(np.round(0.1 / voxel_volume_cc)))
    hottest = 100.0 - in_tenth_cc / voxels.size * 100.0
    d01cc = float(np.percentile(voxels, hottest)) if hottest > 0 else 0.0
    return {"D0.1cc": d01cc, "mean": float(voxels.mean())}


def dose_score(pred_gy: np.ndarray, ref_gy: np.ndarray, support: np.ndarray) -> float:
    """One patient's dose score (Gy): Σ |ref − pred| over all voxels / voxels in ``support``."""
    if np.shape(pred_gy) != np.shape(ref_gy) or np.shape(support) != np.shape(ref_gy):
        raise InputError(f"predicted {np.shape(pred_gy)}, reference {np.shape(ref_gy)} and dose support "
                         f"{np.shape(support)} must be on one grid")
    count = int(np.count_nonzero(support))
    if count == 0:
        raise InputError("the dose support (possible-dose mask or body) is empty: no OpenKBP dose score")
    return float(np.abs(np.asarray(ref_gy, np.float64) - np.asarray(pred_gy, np.float64)).sum() / count)


def openkbp_scores(pred_gy: np.ndarray, ref_gy: np.ndarray, case) -> dict:
    """A case's OpenKBP dose score, DVH score and every DVH point (``pred``/``ref``/``diff``, Gy) of its
    non-empty targets and OARs; ``support`` says over which voxels the dose score counts."""
    support = case.dose_support()
    if support is None:
        raise InputError("the OpenKBP dose score needs the possible-dose mask or a body structure", case.case_id)
    points = {}
    for s in case.structures.values():
        if s.role in ("ptv", "oar") and s.mask.any():
            p = dvh_points(pred_gy, s.mask, s.role, case.grid.voxel_volume_cc)
            r = dvh_points(ref_gy, s.mask, s.role, case.grid.voxel_volume_cc)
            points[s.name] = {k: {"pred_gy": p[k], "ref_gy": r[k], "diff_gy": p[k] - r[k]} for k in p}
    return {"dose_score_gy": dose_score(pred_gy, ref_gy, support), "dvh_score_gy": dvh_score([points]),
            "dvh_points": points,
            "support": DOSE_SUPPORT if DOSE_SUPPORT in case.structures else "body"}


def dvh_score(cases_points: Iterable[dict]) -> float:
    """The DVH score (Gy) of one or more patients' ``dvh_points``: the mean |diff| over all points;
    NaN when there is none (a case without targets or OARs)."""
    diffs = [abs(v["diff_gy"]) for points in cases_points for per in points.values() for v in per.values()]
    return float(np.mean(diffs)) if diffs else float("nan")
