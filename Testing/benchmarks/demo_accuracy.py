"""Benchmark: the demo model's comparison table, models against each other and the baselines, on held-out cases.

For every case of the ``test`` split of a data folder (compact files from ``dosediffusion-train synth``),
grouped by site (the case's BodyPartExamined) and over all sites, and for the TG-119 phantom cases of
``--tg119 DIR`` (compact files; ``DoseDiffusionTraining/datasets/tg119`` holds pyRadPlan's C-shape phantom
with three beam setups): the GDP-HMM MAE (Gy), the MAE inside the PTVs and inside the OARs (Gy), the
gamma pass rate (3 %/3 mm, global, 10 % cut-off), the scorecard difference (prediction − the case's own
dose; the shipped scorecard that fits the case, or ``--scorecard``) and the seconds per case, for

- each diffusion model (``--model NAME=DIR``, repeatable; ``demo`` is the bundled one) at each of
  ``--steps``, and best of ``--candidates`` N by the scorecard at the most steps (with the correlation of
  the candidates' per-voxel standard deviation with the absolute error inside the body);
- with ``--codec-floor``, each diffusion model's codec alone: the case's own dose prepared, encoded,
  decoded and restored (the floor under any model in that latent space);
- each regression comparator (``--regression NAME=DIR``, a pipeline folder of a ``model.type: mednext`` run);
- the trivial distance fall-off baseline fitted on the ``train`` split;
- the ray-traced prior dose alone (:func:`~dosediffusion.conditioning.prior_dose.prior_dose`: the beams'
  PTV apertures, attenuated, normalised to D97 of the high PTV = its prescription; no network);
- the corrected prior alone, once for each distinct correction a compared pipeline was trained with
  (:mod:`~dosediffusion.conditioning.prior_correction`: a lookup fitted on training cases; no network).

Every prediction goes through the prediction layer (:class:`~dosediffusion.prediction.predictors.LocalPredictor`).
Prints a table of means per data set and writes the means and the per-case rows as JSON (``--out``).

Run: ``python Testing/benchmarks/demo_accuracy.py --data DoseDiffusionTraining/datasets/synth-v2/compact
--split DoseDiffusionTraining/datasets/synth-v2/split.json --model v3=demo --regression MedNeXt=DIR
--tg119 DoseDiffusionTraining/datasets/tg119 [--steps 1 10] [--candidates 4] [--codec-floor] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dosediffusion.conditioning.prepare import prepare
from dosediffusion.conditioning.prior_dose import prior_dose
from dosediffusion.conditioning.restore import restore
from dosediffusion.metrics.case_evaluation import evaluate_dose
from dosediffusion.metrics.uncertainty import std_error_correlation
from dosediffusion.prediction.predictors import LocalPredictor
from dosediffusion.prediction.scorecard import AUTO, choose_scorecard
from dosediffusion_training.baselines.distance_falloff import DistanceFalloff
from dosediffusion_training.data.dataset import list_cases, load_any

COLUMNS = ("gdp_hmm_mae_gy", "ptv_mae_gy", "oar_mae_gy", "gamma_3_3_percent", "score_diff", "std_error_pearson",
           "seconds")


def scorecard_template(case, scorecard: str | None) -> dict | None:
    """The scorecard a prediction of ``case`` is scored with, as ``dosediffusion predict`` chooses it
    (``--scorecard``, else the shipped template that fits the case; None when none fits)."""
    return choose_scorecard(scorecard or AUTO, case).template


def case_row(case, prediction, seconds: float, scorecard: str | None) -> dict:
    """The benchmark's metrics of ``prediction`` (a dose in Gy, or a DosePrediction with candidates) against
    the case's own dose (:func:`~dosediffusion.metrics.case_evaluation.evaluate_dose`)."""
    pred = getattr(prediction, "dose_gy", prediction)
    metrics = evaluate_dose(pred, case.dose, case, scorecard_template(case, scorecard))
    std = getattr(prediction, "dose_std_gy", None)
    pearson = std_error_correlation(std, pred, case.dose, case.body.mask)["pearson"] if std is not None else None
    return {"case": case.case_id, "gdp_hmm_mae_gy": metrics.get("gdp_hmm_mae_gy"),
            "ptv_mae_gy": metrics.get("ptv_mae_gy"), "oar_mae_gy": metrics.get("oar_mae_gy"),
            "gamma_3_3_percent": metrics["gamma_pass_percent"]["3%/3mm"],
            "score_diff": metrics["scorecard"]["diff"] if "scorecard" in metrics else None,
            "std_error_pearson": pearson, "seconds": seconds}


def codec_round_trip(predictor: LocalPredictor, device: str) -> Callable:
    """predict(case): the case's own dose through the codec of ``predictor``'s pipeline alone, in Gy on the CT grid."""
    pipeline = predictor.load()
    codec = pipeline.codec.to(device)

    @torch.no_grad()
    def predict(case):
        inputs = prepare(case, pipeline.preprocessing)
        channel = codec.decode(codec.encode(torch.from_numpy(inputs.channels["dose"])[None, None].to(device)))
        return restore(channel[0, 0].float().cpu().numpy(), case, inputs)

    return predict


def methods(models: dict[str, str], regressions: dict[str, str], baseline: DistanceFalloff, steps: list[int],
            candidates: int, device: str, scorecard: str | None, codec_floor: bool = False) -> dict[str, Callable]:
    """Name → predict(case) for every compared method."""
    out: dict[str, Callable] = {}
    predictors = {name: LocalPredictor(folder, device) for name, folder in {**models, **regressions}.items()}
    for name in models:
        predictor = predictors[name]
        if codec_floor:
            out[f"{name}, codec round trip"] = codec_round_trip(predictor, device)
        for n in steps:
            out[f"{name}, {n} step{'s' if n > 1 else ''}"] = lambda case, p=predictor, n=n: p(case, steps=n, seed=0)
        if candidates > 1:
            out[f"{name}, best of {candidates} ({max(steps)} steps)"] = (
                lambda case, p=predictor: p(case, steps=max(steps), seed=0, num_candidates=candidates,
                                            scorecard=scorecard_template(case, scorecard)))
    for name in regressions:
        out[name] = lambda case, p=predictors[name]: p(case)
    out["trivial baseline"] = baseline.predict
    out["ray-traced prior"] = lambda case: prior_dose(case, device=device)
    fitted: list[dict] = []
    for name, predictor in predictors.items():
        preprocessing = predictor.load().preprocessing
        if preprocessing.correction is not None and preprocessing.prior_correction not in fitted:
            fitted.append(preprocessing.prior_correction)
            out[f"corrected prior ({name}'s fit, no network)"] = (
                lambda case, c=preprocessing.correction: c.apply(case, prior_dose(case, device=device)))
    return out


def evaluate_cases(cases, predictors: dict[str, Callable], scorecard: str | None) -> dict[str, list[dict]]:
    """Rows per method over ``cases``, each row with the case's site."""
    rows: dict[str, list[dict]] = {name: [] for name in predictors}
    for case in cases:
        for name, predict in predictors.items():
            start = time.perf_counter()
            prediction = predict(case)
            row = case_row(case, prediction, time.perf_counter() - start, scorecard)
            rows[name].append({**row, "site": case.meta.get("BodyPartExamined", "")})
    return rows


def by_site(rows: dict[str, list[dict]]) -> dict[str, dict[str, list[dict]]]:
    """The rows of each site, then of all sites ("all")."""
    sites = sorted({r["site"] for items in rows.values() for r in items})
    grouped = {site: {m: [r for r in items if r["site"] == site] for m, items in rows.items()} for site in sites}
    return {**grouped, "all": rows} if len(sites) > 1 else {"all": rows}


def print_table(title: str, rows: dict[str, list[dict]]) -> dict:
    """Print the means of ``rows`` under ``title``; return them."""
    print(title)
    print(f"{'method':<34}" + "".join(f"{c:>20}" for c in COLUMNS))
    summary = {}
    for method, items in rows.items():
        means = {c: float(np.mean(values)) if (values := [r[c] for r in items if r[c] is not None]) else None
                 for c in COLUMNS}
        summary[method] = means
        print(f"{method:<34}" + "".join(f"{'–' if means[c] is None else f'{means[c]:.2f}':>20}" for c in COLUMNS))
    return summary


def named(values: list[str]) -> dict[str, str]:
    """``NAME=DIR`` (or ``DIR``, named after itself) → {NAME: DIR}."""
    return dict(v.split("=", 1) if "=" in v else (v, v) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", action="append", default=[], help="NAME=DIR of a diffusion pipeline, or demo")
    parser.add_argument("--regression", action="append", default=[], help="NAME=DIR of a regression pipeline")
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--candidates", type=int, default=4, help="best of N by the scorecard (1: none)")
    parser.add_argument("--scorecard", help="one template for every case (default: the shipped one that fits it)")
    parser.add_argument("--tg119", help="folder of the TG-119 phantom cases (compact files)")
    parser.add_argument("--codec-floor", action="store_true", help="add each model's codec round trip of the true dose")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_accuracy.json"))
    args = parser.parse_args()
    models = named(args.model) if args.model or args.regression else {"demo": "demo"}
    test = list_cases(args.data, args.split, "test")[: args.max_cases]
    baseline = DistanceFalloff.fit(load_any(p) for p in list_cases(args.data, args.split, "train"))
    predictors = methods(models, named(args.regression), baseline, args.steps, args.candidates, args.device,
                         args.scorecard, args.codec_floor)
    results = {f"held-out {site}": rows for site, rows in
               by_site(evaluate_cases((load_any(p) for p in test), predictors, args.scorecard)).items()}
    if args.tg119:
        results["TG119"] = evaluate_cases((load_any(p) for p in sorted(Path(args.tg119).glob("*.npz"))), predictors,
                                          args.scorecard)
    summary = {name: print_table(f"{name} ({len(next(iter(rows.values())))} cases)", rows)
               for name, rows in results.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "models": models, "regressions": named(args.regression),
                               "device": args.device, "mean": summary, "rows": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
