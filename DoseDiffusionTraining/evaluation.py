"""``dosediffusion-train evaluate``: the paper's Table 1 columns that can be computed offline, per
case and aggregated, for one or several models on held-out cases, with paired tests.

Per case (prediction against the case's own dose, Gy): MAE inside the body (appendix F's
per-patient MAE), the GDP-HMM challenge MAE, the scorecard totals of prediction and reference and
their difference, PSNR (dB) and 3-D SSIM inside the body, and the seconds the prediction took.
LPIPS is not computed: it needs pretrained network weights, which are not available offline.
Between the first model and each other one: two-sided paired t-tests (as the paper's appendix
F) and Wilcoxon signed-rank tests on the per-case MAE and scorecard. Written as ``cases.csv``,
``summary.json`` and ``table.md``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats
from tqdm import tqdm

from dosediffusion.errors import InputError
from dosediffusion.metrics.evaluation import gdp_hmm_mae, psnr, ssim3d
from dosediffusion.metrics.scorecard import score_case
from dosediffusion.prediction.checks import check_predictable
from dosediffusion.prediction.predictors import LocalPredictor
from dosediffusion.prediction.scorecard import choose_scorecard
from dosediffusion_training.data.dataset import load_any

COLUMNS = ("mae_body_gy", "gdp_hmm_mae_gy", "score_pred", "score_ref", "score_diff", "psnr_db", "ssim", "seconds")


def case_metrics(case, pred: np.ndarray, template: dict) -> dict:
    """The evaluation columns of ``pred`` (Gy) against ``case.dose``."""
    body = case.body.mask
    ptvs = sorted((s for s in case.with_role("ptv") if s.prescription_gy and s.mask.any()), key=lambda s: -s.prescription_gy)
    pred_score, ref_score = score_case(case, template, pred).total, score_case(case, template).total
    return {"case": case.case_id, "mae_body_gy": float(np.abs(pred - case.dose)[body].mean()),
            "gdp_hmm_mae_gy": gdp_hmm_mae(pred, case.dose, body, ptvs[0].mask, ptvs[0].prescription_gy) if ptvs else None,
            "score_pred": pred_score, "score_ref": ref_score, "score_diff": pred_score - ref_score,
            "psnr_db": psnr(pred, case.dose, body), "ssim": ssim3d(pred, case.dose, body)}


def evaluate_model(model: str, paths: Sequence[Path], steps: int, seed: int, scorecard: str | None,
                   device: str = "cpu") -> list[dict]:
    """Per-case rows of ``model`` (a pipeline folder or ``demo``) on the cases at ``paths``, through the
    prediction layer (the same checks and scorecard choice as ``dosediffusion predict``); a case no
    scorecard fits is an error naming it, not scored with another site's."""
    predictor = LocalPredictor(model, device)
    rows = []
    for path in tqdm(paths, desc=Path(model).name, unit="case"):
        case = load_any(path)
        check_predictable(case)
        choice = choose_scorecard(scorecard, case)
        if choice.template is None:
            raise InputError(f"no scorecard for this case: {choice.reason}", path)
        start = time.perf_counter()
        pred = predictor(case, steps=steps, seed=seed).dose_gy
        rows.append({**case_metrics(case, pred, choice.template), "seconds": time.perf_counter() - start})
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
    """Mean and standard deviation of each column over the cases."""
    return {c: {"mean": float(np.mean([r[c] for r in rows if r.get(c) is not None])),
                "std": float(np.std([r[c] for r in rows if r.get(c) is not None]))}
            for c in COLUMNS if any(r.get(c) is not None for r in rows)}


def markdown_table(summaries: dict[str, dict]) -> str:
    columns = [c for c in COLUMNS if all(c in s for s in summaries.values())]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, summary in summaries.items():
        lines.append(f"| {name} | " + " | ".join(f"{summary[c]['mean']:.3f} ± {summary[c]['std']:.3f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: dict[str, list[dict]]) -> dict:
    """``cases.csv``, ``summary.json`` and ``table.md`` in ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["model", "case", *COLUMNS])
        writer.writeheader()
        writer.writerows({"model": name, **row} for name, rows in results.items() for row in rows)
    names = list(results)
    summary = {"models": {n: summarise(r) for n, r in results.items()},
               "paired_tests": {f"{names[0]} vs {n}": paired_tests(results[names[0]], results[n]) for n in names[1:]},
               "cases": len(next(iter(results.values()))), "lpips": "not computed: needs pretrained weights (offline)"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(markdown_table(summary["models"]))
    return summary
