"""ScardNFT's clinical reward and the optimality it turns into (DESIGN.md, "ScardNFT").

For one case with K candidate doses x0ᵏ (Gy on the CT grid):

- reward Rᵏ = scorecard total − λ_h · hinge − λ_mae · MAE, where the scorecard total is
  Σ weight · score of the evaluable entries (:func:`dosediffusion.metrics.scorecard.score_case`),
  the hinge sums, over the entries whose limit is ``hard``, how far the value lies beyond the limit
  (max(0, value − max) + max(0, min − value), in the entry's own unit: Gy, %Rx, % or cc), and the
  MAE is the mean absolute difference (Gy) to the reference dose inside the body;
- optimality rᵏ = 0.5 + 0.5 · clip((Rᵏ − mean_k R) / scale, −1, 1) ∈ [0, 1], with ``scale`` a
  running (exponential moving) average of the per-case standard deviation of R over the K
  candidates, kept in the training state so that a resumed run continues exactly.

Pure functions over numbers and numpy arrays; nothing here touches the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dosediffusion.metrics.scorecard import ScoreReport

#: Below this running scale every candidate is as good as the mean (r = 0.5).
MIN_SCALE = 1e-8


def hard_violation(report: ScoreReport, template: dict) -> float:
    """Σ over the hard-limit entries of how far each value lies beyond its limit (entry units);
    entries that are not evaluable count zero. ``report`` must come from ``template`` (entries in
    the template's order, as :func:`~dosediffusion.metrics.scorecard.score_case` makes them)."""
    if len(report.entries) != len(template["entries"]):
        raise ValueError("the report does not come from this template (entry counts differ)")
    total = 0.0
    for result, entry in zip(report.entries, template["entries"], strict=True):
        limit = entry.get("limit") or {}
        if not limit.get("hard") or result.value is None:
            continue
        if "max" in limit:
            total += max(0.0, result.value - float(limit["max"]))
        if "min" in limit:
            total += max(0.0, float(limit["min"]) - result.value)
    return float(total)


def masked_mae(dose_gy: np.ndarray, reference_gy: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference (Gy) of two doses (z, y, x) inside ``mask`` (everywhere if None)."""
    if mask is None:
        mask = np.ones(np.shape(dose_gy), dtype=bool)
    if not mask.any():
        return 0.0
    return float(np.abs(np.asarray(dose_gy, np.float64)[mask] - np.asarray(reference_gy, np.float64)[mask]).mean())


def reward(total: float, violation: float, mae_gy: float, lambda_hinge: float, lambda_mae: float) -> float:
    """R = scorecard total − λ_h · hard-limit violation − λ_mae · MAE (Gy)."""
    return float(total - lambda_hinge * violation - lambda_mae * mae_gy)


def update_scale(scale: float | None, rewards: np.ndarray | Sequence[Sequence[float]], decay: float) -> float:
    """The running reward scale after a batch: ``rewards`` (B cases, K candidates); the batch's
    value is the mean over cases of the standard deviation over candidates (ddof 0). The first
    batch (``scale`` None) sets the scale; later ones move it by scale ← decay·scale + (1 − decay)·value."""
    value = batch_spread(rewards)
    return value if scale is None else float(decay * scale + (1.0 - decay) * value)


def batch_spread(rewards: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Mean over cases (rows) of the standard deviation (ddof 0) of their K rewards."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must be (cases, candidates), got shape {rewards.shape}")
    return float(rewards.std(axis=1).mean())


def optimality(rewards: np.ndarray | Sequence[Sequence[float]], scale: float) -> np.ndarray:
    """r (B, K) ∈ [0, 1]: 0.5 + 0.5 · clip((R − mean over the case's candidates) / scale, −1, 1).
    A scale below :data:`MIN_SCALE` gives 0.5 everywhere (nothing to prefer)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (cases, candidates), got shape {rewards.shape}")
    if scale < MIN_SCALE:
        return np.full(rewards.shape, 0.5)
    advantage = (rewards - rewards.mean(axis=1, keepdims=True)) / scale
    return 0.5 + 0.5 * np.clip(advantage, -1.0, 1.0)
