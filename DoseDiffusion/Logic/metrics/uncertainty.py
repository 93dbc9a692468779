"""Per-voxel uncertainty of a prediction from its N candidate doses (all Gy, (z, y, x) on one grid).

- :func:`candidate_std`: the sample standard deviation over the N ≥ 2 candidates at each voxel
  (``ddof`` = :data:`DDOF` = 1: the unbiased variance estimate, the usual choice for the few
  candidates — 2 to 16 — that a prediction draws; ddof = 0 would shrink the map by √((N−1)/N),
  29 % for N = 2). One candidate gives no map (None).
- :func:`std_summary`: its mean, 95th percentile and maximum (Gy) over the body and each PTV and OAR,
  and its mean over the high-dose region (body voxels where the selected dose exceeds
  :data:`HIGH_DOSE_FRACTION` of its maximum).
- :func:`std_error_correlation`: how well the map predicts the error: Pearson and Spearman
  correlation, inside the body, between the std and |predicted − reference| (Gy). Spearman uses
  average ranks for ties, on a random subsample of at most :data:`SPEARMAN_MAX_VOXELS` voxels (fixed
  seed) when the body is larger; Pearson uses every voxel. A constant std or error has no
  correlation: None with the reason, never NaN.
- :func:`uncertainty_summary`: the ``"uncertainty"`` entry of a prediction's ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dosediffusion.case import Case
from dosediffusion.errors import InputError

DDOF = 1
HIGH_DOSE_FRACTION = 0.5
SPEARMAN_MAX_VOXELS = 1_000_000
SPEARMAN_SEED = 0
METHOD = "per-voxel sample standard deviation over the candidates (Gy, ddof 1)"


def candidate_std(candidates_gy: Sequence[np.ndarray]) -> np.ndarray | None:
    """The per-voxel standard deviation (Gy, float32, the candidates' shape) of N candidate doses
    (each (z, y, x) in Gy), with ``ddof`` = :data:`DDOF`; None for a single candidate. Accumulated in
    float64 one candidate at a time (no (N, z, y, x) stack); equal candidates give exact zeros."""
    if len(candidates_gy) == 0:
        raise InputError("no candidate dose to take a standard deviation of")
    shape = np.shape(candidates_gy[0])
    if any(np.shape(c) != shape for c in candidates_gy):
        raise InputError(f"the candidate doses have different shapes: {sorted({np.shape(c) for c in candidates_gy})}")
    if len(candidates_gy) == 1:
        return None
    mean = np.zeros(shape, np.float64)
    for candidate in candidates_gy:
        mean += candidate
    mean /= len(candidates_gy)
    squares = np.zeros(shape, np.float64)
    for candidate in candidates_gy:
        deviation = candidate - mean
        squares += deviation * deviation
    return np.sqrt(squares / (len(candidates_gy) - DDOF)).astype(np.float32)


def _statistics(values: np.ndarray) -> dict[str, float]:
    """Mean, 95th percentile and maximum (Gy) of a non-empty set of std values."""
    return {"mean_gy": float(values.mean(dtype=np.float64)), "p95_gy": float(np.percentile(values, 95)),
            "max_gy": float(values.max())}


def _region_mask(case: Case) -> np.ndarray:
    """The body, or the whole grid when the case has none."""
    return case.body.mask if case.body is not None else np.ones(case.grid.shape, bool)


def std_summary(std_gy: np.ndarray, case: Case, dose_gy: np.ndarray) -> dict:
    """``{"regions": {name: {mean_gy, p95_gy, max_gy, voxels}}, "high_dose": {...}}`` of the std map
    (Gy, on ``case``'s grid): regions ``body`` (when the case has one) and each non-empty PTV and OAR;
    ``high_dose``: the body voxels (the whole grid without a body) where ``dose_gy`` (the selected
    prediction, Gy) exceeds :data:`HIGH_DOSE_FRACTION` of its maximum there, with ``threshold_gy``,
    ``mean_gy`` and ``voxels`` (``mean_gy`` None when the dose is zero everywhere)."""
    masks = {"body": case.body.mask} if case.body is not None else {}
    masks.update({s.name: s.mask for s in case.with_role("ptv") + case.with_role("oar")})
    regions = {name: {**_statistics(std_gy[mask]), "voxels": int(np.count_nonzero(mask))}
               for name, mask in masks.items() if mask.any()}
    inside = _region_mask(case)
    threshold = HIGH_DOSE_FRACTION * float(dose_gy[inside].max()) if inside.any() else 0.0
    high = inside & (dose_gy > threshold) if threshold > 0 else np.zeros(case.grid.shape, bool)
    mean = float(std_gy[high].mean(dtype=np.float64)) if high.any() else None
    return {"regions": regions, "high_dose": {"threshold_gy": threshold, "mean_gy": mean,
                                              "voxels": int(np.count_nonzero(high))}}


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two equally long vectors (float64); None when either is constant."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.clip(np.dot(a, b) / denominator, -1.0, 1.0)) if denominator > 0 else None


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1 … n of a vector (float64), tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks


def std_error_correlation(std_gy: np.ndarray, predicted_gy: np.ndarray, reference_gy: np.ndarray,
                          mask: np.ndarray, max_spearman_voxels: int = SPEARMAN_MAX_VOXELS,
                          seed: int = SPEARMAN_SEED) -> dict:
    """Correlation inside ``mask`` (bool (z, y, x)) between the std map and the absolute error
    |``predicted_gy`` − ``reference_gy``| (all Gy, one grid): ``{"voxels", "pearson", "spearman",
    "spearman_voxels", "reason"}``; ``pearson``/``spearman`` are None (``reason`` says why) when the
    mask holds fewer than 2 voxels or the std or the error is constant there. Spearman runs on a
    random subsample of ``max_spearman_voxels`` voxels (generator seeded with ``seed``) when the mask
    holds more."""
    shapes = {np.shape(std_gy), np.shape(predicted_gy), np.shape(reference_gy), np.shape(mask)}
    if len(shapes) != 1:
        raise InputError(f"the std map, the doses and the mask are on different grids: {sorted(shapes)}")
    std = np.asarray(std_gy, np.float64)[mask]
    error = np.abs(np.asarray(predicted_gy, np.float64)[mask] - np.asarray(reference_gy, np.float64)[mask])
    result = {"voxels": int(std.size), "pearson": None, "spearman": None, "spearman_voxels": 0, "reason": None}
    if std.size < 2:
        return {**result, "reason": f"{std.size} voxel(s) in the mask: no correlation"}
    constant = [name for name, values in (("std", std), ("error", error)) if values.min() == values.max()]
    if constant:
        return {**result, "reason": f"the {' and the '.join(constant)} {'is' if len(constant) == 1 else 'are'} "
                                    "constant in the mask: no correlation"}
    result["pearson"] = _pearson(std, error)
    if std.size > max_spearman_voxels:
        keep = np.random.default_rng(seed).choice(std.size, max_spearman_voxels, replace=False)
        std, error = std[keep], error[keep]
    result["spearman_voxels"] = int(std.size)
    result["spearman"] = _pearson(average_ranks(std), average_ranks(error))
    if result["spearman"] is None:
        result["reason"] = "the subsample for Spearman is constant in the std or the error"
    return result


def _rounded(value: object, digits: int = 4) -> object:
    """``value`` with every float rounded (nested dicts too)."""
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return round(value, digits) if isinstance(value, float) else value


def uncertainty_summary(std_gy: np.ndarray, case: Case, dose_gy: np.ndarray, candidates: int) -> dict:
    """The ``"uncertainty"`` entry of ``summary.json``: ``method``, ``candidates``, ``ddof``, the
    :func:`std_summary` numbers and, when ``case`` has its own dose, the
    :func:`std_error_correlation` of the std with the error of ``dose_gy`` (the selected prediction)
    inside the body (the whole grid without one) as ``error_correlation``. Floats rounded to 4 digits."""
    summary = {"method": METHOD, "candidates": candidates, "ddof": DDOF, **std_summary(std_gy, case, dose_gy)}
    if case.dose is not None:
        summary["error_correlation"] = std_error_correlation(std_gy, dose_gy, case.dose, _region_mask(case))
    return _rounded(summary)
