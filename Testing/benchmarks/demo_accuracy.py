"""Benchmark: accuracy of a trained pipeline (default: the bundled demo model) on held-out cases.

For every case of the ``test`` split of a data folder (compact files from ``dosediffusion-train
synth``): the GDP-HMM MAE (Gy), MAE inside the PTVs and inside the OARs (Gy), the gamma pass rate
(3 %/3 mm, global, 10 % cut-off) and the scorecard difference (prediction − the case's own dose,
``--scorecard``, default ``lung_60`` as the phantoms are thoracic) for the model at 1 and 10 steps and for the
trivial distance fall-off baseline fitted on the ``train`` split and, with ``--regression DIR``, the
MedNeXt regression baseline (a pipeline folder from a ``model.type: mednext`` run); with ``--tg119`` the same on
pyRadPlan's TG119 C-shape phantom with three beam setups (doses from the same engine; needs its
environment). Prints the mean over cases per data set and writes
``Testing/benchmarks/results/demo_accuracy.json`` with the per-case rows.

Run: ``python Testing/benchmarks/demo_accuracy.py --data data/synth/compact --split data/synth/split.json
[--model demo|DIR] [--regression DIR] [--max-cases 20] [--tg119]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dosediffusion.cli.evaluate import evaluate
from dosediffusion.model.pipeline import load_pipeline
from dosediffusion.prediction.model_folder import resolve_model_folder
from dosediffusion_training.baselines.distance_falloff import DistanceFalloff
from dosediffusion_training.data.dataset import list_cases, load_any

COLUMNS = ("gdp_hmm_mae_gy", "ptv_mae_gy", "oar_mae_gy", "gamma_3_3_percent", "score_diff", "seconds")


def case_row(case, pred: np.ndarray, seconds: float, template: str) -> dict:
    """The benchmark's metrics of ``pred`` against the case's own dose."""
    metrics = evaluate(pred, case.dose, case, scorecard=template)
    union = {role: np.any([s.mask for s in case.with_role(role)], axis=0) for role in ("ptv", "oar")}
    return {"case": case.case_id, "gdp_hmm_mae_gy": metrics.get("gdp_hmm_mae_gy"),
            "ptv_mae_gy": float(np.abs(pred - case.dose)[union["ptv"]].mean()),
            "oar_mae_gy": float(np.abs(pred - case.dose)[union["oar"]].mean()),
            "gamma_3_3_percent": metrics["gamma_pass_percent"]["3%/3mm"],
            "score_diff": metrics["scorecard"]["diff"] if "scorecard" in metrics else None, "seconds": seconds}


def evaluate_cases(cases, pipe, baseline: DistanceFalloff, steps: list[int], scorecard: str,
                   regression=None) -> dict[str, list[dict]]:
    """Rows per method (the model at each number of steps, the trivial baseline, the regression
    baseline when given) over ``cases``."""
    methods = {f"model, {n} step{'s' if n > 1 else ''}": (lambda case, n=n: pipe(case, steps=n, seed=0, device="cpu").dose_gy)
               for n in steps}
    methods["trivial baseline"] = baseline.predict
    if regression is not None:
        methods["MedNeXt regression"] = lambda case: regression(case, device="cpu").dose_gy
    rows: dict[str, list[dict]] = {name: [] for name in methods}
    for case in cases:
        for name, predict in methods.items():
            start = time.perf_counter()
            pred = predict(case)
            rows[name].append(case_row(case, pred, time.perf_counter() - start, scorecard))
    return rows


def print_table(title: str, rows: dict[str, list[dict]]) -> dict:
    """Print the means of ``rows`` under ``title``; return them."""
    print(title)
    print(f"{'method':<22}" + "".join(f"{c:>18}" for c in COLUMNS))
    summary = {}
    for method, items in rows.items():
        means = {c: float(np.mean(values)) if (values := [r[c] for r in items if r[c] is not None]) else None
                 for c in COLUMNS}
        summary[method] = means
        print(f"{method:<22}" + "".join(f"{'–' if means[c] is None else f'{means[c]:.2f}':>18}" for c in COLUMNS))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--regression", help="a MedNeXt regression pipeline folder to compare with")
    parser.add_argument("--max-cases", type=int, default=20)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--scorecard", default="lung_60")
    parser.add_argument("--tg119", action="store_true", help="also TG119 with three beam setups (pyRadPlan)")
    args = parser.parse_args()
    test = list_cases(args.data, args.split, "test")[: args.max_cases]
    baseline = DistanceFalloff.fit(load_any(p) for p in list_cases(args.data, args.split, "train"))
    pipe = load_pipeline(resolve_model_folder(args.model))
    regression = load_pipeline(args.regression) if args.regression else None
    results = {"held-out synthetic": evaluate_cases((load_any(p) for p in test), pipe, baseline, args.steps,
                                                    args.scorecard, regression)}
    if args.tg119:
        from dosediffusion_training.synth.generate import plan_case
        from dosediffusion_training.synth.tg119 import SETUPS, tg119_case

        phantoms = (plan_case(tg119_case(setup))[0] for setup in SETUPS)
        results["TG119"] = evaluate_cases(phantoms, pipe, baseline, args.steps, args.scorecard, regression)
    summary = {name: print_table(f"{name} ({len(next(iter(rows.values())))} cases), model {args.model}", rows)
               for name, rows in results.items()}
    out = Path(__file__).parent / "results" / "demo_accuracy.json"
    out.write_text(json.dumps({"data": args.data, "model": args.model, "regression": args.regression, "mean": summary, "rows": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
