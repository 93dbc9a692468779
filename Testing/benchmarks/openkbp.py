"""Benchmark: the OpenKBP validation table, models against the trivial baseline on real head-and-neck patients.

For every patient of ``--data`` (default ``../shared/data/openkbp/validation``, the challenge's 33
validation patients; compact ``pt_N.npz`` or CSV folders) and every method, the challenge's dose score
and DVH score (:mod:`dosediffusion.metrics.openkbp`; the DVH score pooled over every point of every
patient, as the challenge's table), the GDP-HMM MAE, the gamma pass rate (3 %/3 mm), the MAE inside each
structure (Gy) and the seconds per patient (the prediction alone). The methods:

- each diffusion pipeline (``--model NAME=DIR``, repeatable; ``demo`` is the bundled one) at each of ``--steps``;
- each regression pipeline (``--regression NAME=DIR``);
- the trivial distance fall-off baseline, fitted on the first ``--fit-cases`` patients of ``--fit-data``
  (default the challenge's ``train`` folder);
- the ray-traced prior dose alone (no network, no fit), and corrected by each distinct correction a
  compared pipeline was trained with (a lookup fitted on training cases, no network).

Every prediction goes through the prediction layer and every figure through
:func:`~dosediffusion.metrics.case_evaluation.evaluate_dose` (as ``dosediffusion evaluate`` computes it).
Prints the tables and writes means and per-patient rows as JSON.

Run: ``python Testing/benchmarks/openkbp.py [--model demo] [--regression NAME=DIR] [--steps 1 10]
[--max-cases N] [--device cpu|cuda] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from demo_accuracy import methods, named

from dosediffusion.metrics.case_evaluation import evaluate_dose
from dosediffusion.metrics.openkbp import dvh_score
from dosediffusion_training.baselines.distance_falloff import DistanceFalloff
from dosediffusion_training.data.dataset import list_cases, load_any

OPENKBP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openkbp"
HEADLINE = ("dose_score_gy", "dvh_score_gy", "gdp_hmm_mae_gy", "gamma_3_3_percent", "seconds")
STRUCTURES = ("PTV70", "PTV63", "PTV56", "Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus",
              "Larynx", "Mandible")


def patient_row(case, dose_gy: np.ndarray, seconds: float) -> dict:
    """One patient's figures of ``dose_gy`` against its reference dose."""
    metrics = evaluate_dose(dose_gy, case.dose, case)
    return {"case": case.case_id, "dose_score_gy": metrics["dose_score_gy"], "dvh_score_gy": metrics["dvh_score_gy"],
            "gdp_hmm_mae_gy": metrics.get("gdp_hmm_mae_gy"),
            "gamma_3_3_percent": metrics["gamma_pass_percent"]["3%/3mm"],
            "structure_mae_gy": {n: metrics["structure_mae_gy"].get(n) for n in STRUCTURES},
            "dvh_points": metrics["dvh_points"], "seconds": seconds}


def evaluate_patients(paths: list[Path], predictors: dict[str, Callable]) -> dict[str, list[dict]]:
    """Rows per method over the patients at ``paths`` (each read once)."""
    rows: dict[str, list[dict]] = {name: [] for name in predictors}
    for number, path in enumerate(paths, start=1):
        case = load_any(path)
        for name, predict in predictors.items():
            start = time.perf_counter()
            prediction = predict(case)
            seconds = time.perf_counter() - start
            rows[name].append(patient_row(case, getattr(prediction, "dose_gy", prediction), seconds))
        print(f"  {number}/{len(paths)} {case.case_id}: " + ", ".join(
            f"{name} {items[-1]['dose_score_gy']:.2f}/{items[-1]['dvh_score_gy']:.2f}" for name, items in rows.items()),
            flush=True)
    return rows


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(rows: list[dict]) -> dict:
    """Means over patients; the DVH score over all their points together."""
    means = {c: _mean(r[c] for r in rows) for c in HEADLINE}
    means["dvh_score_gy"] = dvh_score(r["dvh_points"] for r in rows)
    means["structure_mae_gy"] = {n: _mean(r["structure_mae_gy"][n] for r in rows) for n in STRUCTURES}
    return means


def _cell(value: float | None, width: int) -> str:
    return f"{'–' if value is None else f'{value:.2f}':>{width}}"


def print_tables(summary: dict[str, dict], count: int) -> None:
    print(f"OpenKBP validation ({count} patients): dose score and DVH score as the challenge computes them (Gy)")
    print(f"{'method':<28}" + "".join(f"{c:>19}" for c in HEADLINE))
    for method, means in summary.items():
        print(f"{method:<28}" + "".join(_cell(means[c], 19) for c in HEADLINE))
    print("MAE inside each structure (Gy)")
    print(f"{'method':<28}" + "".join(f"{n:>11}" for n in STRUCTURES))
    for method, means in summary.items():
        print(f"{method:<28}" + "".join(_cell(means["structure_mae_gy"][n], 11) for n in STRUCTURES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(OPENKBP / "validation"), help="folder of OpenKBP patients to score")
    parser.add_argument("--fit-data", default=str(OPENKBP / "train"), help="patients the trivial baseline is fitted on")
    parser.add_argument("--fit-cases", type=int, default=40)
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR of a diffusion pipeline, or demo")
    parser.add_argument("--regression", action="append", default=[], help="NAME=DIR of a regression pipeline")
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "openkbp.json"))
    args = parser.parse_args()
    paths = list_cases(args.data)[: args.max_cases]
    start = time.perf_counter()
    baseline = DistanceFalloff.fit(load_any(p) for p in list_cases(args.fit_data)[: args.fit_cases])
    print(f"trivial baseline fitted on {args.fit_cases} patients of {args.fit_data} in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    models = named(args.model)
    predictors = methods(models, named(args.regression), baseline, args.steps, 1, args.device, None)
    rows = evaluate_patients(paths, predictors)
    summary = {name: summarise(items) for name, items in rows.items()}
    print_tables(summary, len(paths))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "fit": {"data": args.fit_data, "cases": args.fit_cases},
                               "models": models, "regressions": named(args.regression), "steps": args.steps,
                               "device": args.device, "cores": os.cpu_count(), "mean": summary, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
