"""``dosediffusion-train evaluate``: the paper's Table 1 columns that can be computed offline, per
case and aggregated, for one or several models on held-out cases, with paired tests.

Per case (prediction against the case's own dose, Gy): MAE inside the body (appendix F's
per-patient MAE), the GDP-HMM challenge MAE, the scorecard totals of prediction and reference and
their difference, PSNR (dB) and 3-D SSIM inside the body, and the seconds the prediction took
(all N candidates). With ``candidates`` N ≥ 2 the prediction is the best of N by the case's
scorecard, as ``dosediffusion predict --candidates N`` chooses, and each row adds the per-voxel
uncertainty (:mod:`dosediffusion.metrics.uncertainty`: the candidates' standard deviation, Gy): its
mean in the body and its Pearson and Spearman correlation with the absolute error inside the body
(a useful uncertainty is high where the error is). LPIPS is not computed: it needs pretrained
network weights, which are not available offline.
Between the first model and each other one: two-sided paired t-tests (as the paper's appendix
F) and Wilcoxon signed-rank tests on the per-case MAE and scorecard. Written as ``cases.csv``,
``summary.json`` and ``table.md``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

from dosediffusion.errors import InputError
from dosediffusion.metrics.case_evaluation import evaluate_dose
from dosediffusion.metrics.uncertainty import candidate_std, std_error_correlation
from dosediffusion.prediction.checks import check_predictable
from dosediffusion.prediction.predictors import LocalPredictor
from dosediffusion.prediction.scorecard import choose_scorecard
from dosediffusion_training.data.dataset import case_name, load_any, with_dose_rule

COLUMNS = ("mae_body_gy", "gdp_hmm_mae_gy", "score_pred", "score_ref", "score_diff", "psnr_db", "ssim", "seconds")
#: Added with two or more candidates (None where a correlation is undefined: a constant std or error).
UNCERTAINTY_COLUMNS = ("std_mean_body_gy", "std_error_pearson", "std_error_spearman")


def case_metrics(case, pred: np.ndarray, template: dict) -> dict:
    """The evaluation columns of ``pred`` (Gy) against ``case.dose``
    (:func:`~dosediffusion.metrics.case_evaluation.evaluate_dose`, without gamma)."""
    m = evaluate_dose(pred, case.dose, case, template, gamma=False)
    score = m["scorecard"]
    return {"case": case.case_id, "mae_body_gy": m["mae_body_gy"], "gdp_hmm_mae_gy": m.get("gdp_hmm_mae_gy"),
            "score_pred": score["pred"], "score_ref": score["ref"], "score_diff": score["diff"],
            "psnr_db": m["psnr_db"], "ssim": m["ssim"]}


def uncertainty_metrics(case, candidates_gy: Sequence[np.ndarray], pred: np.ndarray) -> dict:
    """The :data:`UNCERTAINTY_COLUMNS` of N ≥ 2 candidate doses (Gy) against ``case.dose``: the mean
    standard deviation in the body (Gy) and its correlation with |``pred`` − dose| there."""
    std, body = candidate_std(candidates_gy), case.body.mask
    correlation = std_error_correlation(std, pred, case.dose, body)
    return {"std_mean_body_gy": float(std[body].mean(dtype=np.float64)), "std_error_pearson": correlation["pearson"],
            "std_error_spearman": correlation["spearman"]}


def evaluate_model(model: str, paths: Sequence[Path], steps: int, seed: int, scorecard: str | None,
                   device: str = "cpu", candidates: int = 1, dose_rules: Mapping[str, str] | None = None) -> list[dict]:
    """Per-case rows of ``model`` (a pipeline folder or ``demo``) on the cases at ``paths``, through the
    prediction layer (the same checks and scorecard choice as ``dosediffusion predict``, and the same
    best-of-``candidates`` selection by that scorecard); a case no scorecard fits is an error naming
    it, not scored with another site's. Each reference dose is as its case's ``dose_rules`` entry says
    (:func:`~dosediffusion_training.data.dataset.with_dose_rule`; as given without one). With
    ``candidates`` ≥ 2 the rows add :data:`UNCERTAINTY_COLUMNS`."""
    predictor = LocalPredictor(model, device)
    rules = dict(dose_rules or {})
    rows = []
    for path in tqdm(paths, desc=Path(model).name, unit="case"):
        case = load_any(path)
        check_predictable(case)
        if case.dose is None:
            raise InputError("the case has no dose to score a prediction against", path)
        case = with_dose_rule(case, rules.get(case_name(path), "as_given"))
        choice = choose_scorecard(scorecard, case)
        if choice.template is None:
            raise InputError(f"no scorecard for this case: {choice.reason}", path)
        start = time.perf_counter()
        prediction = predictor(case, steps=steps, seed=seed, num_candidates=candidates, scorecard=choice.template)
        row = {**case_metrics(case, prediction.dose_gy, choice.template), "seconds": time.perf_counter() - start}
        if candidates > 1:
            row.update(uncertainty_metrics(case, prediction.candidates_gy, prediction.dose_gy))
        rows.append(row)
    return rows


def paired_tests(a: list[dict], b: list[dict]) -> dict:
    """Two-sided paired t-test and Wilcoxon signed-rank test of b − a on MAE and scorecard."""
    out = {}
    for column in ("mae_body_gy", "score_pred"):
        x, y = np.array([r[column] for r in a]), np.array([r[column] for r in b])
        if len(x) < 2 or np.allclose(x, y):
            out[column] = {"mean_difference": float(np.mean(y - x)) if len(x) else None, "t_p": None, "wilcoxon_p": None}
            continue
        out[column] = {"mean_difference": float(np.mean(y - x)), "t_p": float(stats.ttest_rel(y, x).pvalue),
                       "wilcoxon_p": float(stats.wilcoxon(y, x).pvalue)}
    return out


def summarise(rows: list[dict]) -> dict:
    """Mean and standard deviation of each column over the cases (None values left out)."""
    return {c: {"mean": float(np.mean([r[c] for r in rows if r.get(c) is not None])),
                "std": float(np.std([r[c] for r in rows if r.get(c) is not None]))}
            for c in COLUMNS + UNCERTAINTY_COLUMNS if any(r.get(c) is not None for r in rows)}


def markdown_table(summaries: dict[str, dict]) -> str:
    columns = [c for c in COLUMNS + UNCERTAINTY_COLUMNS if all(c in s for s in summaries.values())]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, summary in summaries.items():
        lines.append(f"| {name} | " + " | ".join(f"{summary[c]['mean']:.3f} ± {summary[c]['std']:.3f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: dict[str, list[dict]]) -> dict:
    """``cases.csv``, ``summary.json`` and ``table.md`` in ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "cases.csv").open("w", newline="") as handle:
        extra = [c for c in UNCERTAINTY_COLUMNS if any(c in row for rows in results.values() for row in rows)]
        writer = csv.DictWriter(handle, fieldnames=["model", "case", *COLUMNS, *extra])
        writer.writeheader()
        writer.writerows({"model": name, **row} for name, rows in results.items() for row in rows)
    names = list(results)
    summary = {"models": {n: summarise(r) for n, r in results.items()},
               "paired_tests": {f"{names[0]} vs {n}": paired_tests(results[names[0]], results[n]) for n in names[1:]},
               "cases": len(next(iter(results.values()))), "lpips": "not computed: needs pretrained weights (offline)"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(markdown_table(summary["models"]))
    return summary
