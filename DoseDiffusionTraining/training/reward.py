"""ScardNFT's clinical reward and the optimality it turns into (DESIGN.md, "ScardNFT").

For one case with K candidate doses x0ᵏ (Gy on the CT grid):

- reward Rᵏ = standardised score − λ_h · hinge − λ_mae · MAE. The standardised score follows the
  paper ("within each case, we first standardize per-structure scores and aggregate them"): each
  structure's score (Σ weight · f over its evaluable scorecard entries,
  :func:`dosediffusion.metrics.scorecard.score_case`) is standardised over the case's K candidates
  (z = (score − mean) / standard deviation; 0 where the candidates agree), and the z's are averaged
  with the structures' importance (Σ of their entries' maximum scores) as weights
  (:func:`standardized_score`). So a structure whose score barely moves weighs as much as one whose
  score swings widely, and the reward no longer depends on how many points a template gives. The
  hinge sums, over the entries whose limit is ``hard``, how far the value lies beyond the limit
  (max(0, value − max) + max(0, min − value), in the entry's own unit: Gy, %Rx, % or cc), and the
  MAE is the mean absolute difference (Gy) to the reference dose inside the body
  (:func:`dosediffusion.metrics.evaluation.masked_mae`);
- optimality rᵏ = 0.5 + 0.5 · clip((Rᵏ − mean_k R) / scale, −1, 1) ∈ [0, 1], with ``scale`` a
  running (exponential moving) average of the per-case standard deviation of R over the K
  candidates, kept in the training state so that a resumed run continues exactly.

Pure functions over numbers and numpy arrays; nothing here touches the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dosediffusion.metrics.scorecard import ScoreReport, limit_excess

#: Below this running scale every candidate is as good as the mean (r = 0.5).
MIN_SCALE = 1e-8
#: A structure whose K scores spread less than this (score points) is not standardised: its z is 0.
MIN_SPREAD = 1e-9


def structure_scores(reports: Sequence[ScoreReport]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-structure scores of K candidates' reports (all from one template on one case).

    Returns the structure names (S, in order of first appearance), their scores (K, S): Σ of the
    structure's evaluable entries' (weighted) scores, and their importance (S,): Σ of those entries'
    maximum scores. Entries that are not evaluable (structure missing) count for no candidate."""
    names: list[str] = []
    for entry in reports[0].entries:
        if entry.score is not None and entry.structure not in names:
            names.append(entry.structure)
    scores = np.zeros((len(reports), len(names)))
    importance = np.zeros(len(names))
    for k, report in enumerate(reports):
        if len(report.entries) != len(reports[0].entries):
            raise ValueError("the reports come from different templates (entry counts differ)")
        for entry in report.entries:
            if entry.score is not None:
                scores[k, names.index(entry.structure)] += entry.score
                if k == 0:
                    importance[names.index(entry.structure)] += entry.max_score
    return names, scores, importance


def standardized_score(scores: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """(K,) importance-weighted mean over structures of each structure's score standardised over the
    K candidates: scores (K, S), importance (S,). Zero everywhere when nothing is scored."""
    scores = np.asarray(scores, dtype=np.float64)
    importance = np.asarray(importance, dtype=np.float64)
    if scores.ndim != 2 or importance.shape != (scores.shape[1],):
        raise ValueError(f"scores must be (candidates, structures) and importance (structures,), got {scores.shape}, "
                         f"{importance.shape}")
    if scores.shape[1] == 0 or importance.sum() <= 0:
        return np.zeros(scores.shape[0])
    spread = scores.std(axis=0)
    z = np.where(spread > MIN_SPREAD, (scores - scores.mean(axis=0)) / np.maximum(spread, MIN_SPREAD), 0.0)
    return z @ importance / importance.sum()


def hard_violation(report: ScoreReport, template: dict) -> float:
    """Σ over the hard-limit entries of how far each value lies beyond its limit
    (:func:`~dosediffusion.metrics.scorecard.limit_excess`, entry units); entries that are not evaluable
    count zero. ``report`` must come from ``template`` (entries in the template's order, as
    :func:`~dosediffusion.metrics.scorecard.score_case` makes them)."""
    if len(report.entries) != len(template["entries"]):
        raise ValueError("the report does not come from this template (entry counts differ)")
    return float(sum(limit_excess(entry["limit"], result.value)
                     for result, entry in zip(report.entries, template["entries"], strict=True)
                     if (entry.get("limit") or {}).get("hard") and result.value is not None))


def reward(score: float, violation: float, mae_gy: float, lambda_hinge: float, lambda_mae: float) -> float:
    """R = (standardised) score − λ_h · hard-limit violation − λ_mae · MAE (Gy)."""
    return float(score - lambda_hinge * violation - lambda_mae * mae_gy)


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
