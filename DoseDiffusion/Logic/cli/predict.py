"""``dosediffusion predict PATH --model DIR|demo --out DIR [--steps N] [--candidates K] [--seed S]
[--device auto|cpu|cuda] [--scorecard NAME|FILE|none] [--remote URL [--token-file F]]``: predict the
dose of one case or a batch, here or on a remote GPU worker (``dosediffusion serve``).

``PATH`` is a case (DICOM RT folder, case JSON, GDP-HMM .npz) or a folder of cases (each
sub-folder or .npz/.json file one case). Each case's files go to ``OUT/<case name>/`` (see
:mod:`dosediffusion.prediction_outputs`). The scorecard defaults to the shipped template that
matches the case's prescription levels; ``none`` turns it off. A case that fails is reported and
skipped; the exit code is then 1. ``--progress-json`` prints each progress report as one JSON line on
stdout, ``{"event": "progress", "case": NAME, "fraction": 0.0-1.0, "message": TEXT}`` (flushed), for a
parent process such as the Slicer module that shows a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.metrics.scorecard import load_template
from dosediffusion.metrics.scorecard_choice import suggest_template
from dosediffusion.resources import resource_path

DEMO_MODEL = ("Models", "demo")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="predict the dose of a case (or a folder of cases)")
    parser.add_argument("path", help="a case (DICOM RT folder, case JSON, GDP-HMM .npz) or a folder of cases")
    add_prediction_arguments(parser)
    parser.add_argument("--remote", metavar="URL",
                        help="run the model on the worker at URL (dosediffusion serve); --model and --device are then "
                             "the worker's")
    parser.add_argument("--token-file", help="file holding the worker's bearer token (with --remote)")
    return parser


def add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="pipeline folder, or 'demo' for the bundled demo model")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps, 1-50 (default 10)")
    parser.add_argument("--candidates", type=int, default=1, help="best-of-K candidates (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--scorecard", default=None,
                        help="scorecard template name or file; default: the shipped one that fits the case's organs and "
                             "prescription; 'none'")
    parser.add_argument("--no-report", action="store_true", help="skip report.png (no matplotlib needed)")
    parser.add_argument("--progress-json", action="store_true",
                        help="print progress as JSON lines on stdout (for a parent process)")


def model_folder(name: str) -> Path:
    """``demo`` → the bundled demo model; anything else is a folder."""
    folder = resource_path(*DEMO_MODEL) if name == "demo" else Path(name)
    if not (folder / "model_index.json").is_file():
        what = "the bundled demo model is missing" if name == "demo" else "not a DoseDiffusion pipeline folder"
        raise InputError(f"{what} (no model_index.json)", folder)
    return folder


def find_cases(path: Path) -> list[Path]:
    """``path`` itself when it is a case, else the cases directly inside it."""
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_file() or (path / "case.json").is_file() or any(p.is_file() and not p.name.startswith(".")
                                                              for p in path.iterdir()):
        return [path]
    cases = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                   and (p.is_dir() or p.suffix.lower() in (".npz", ".json")))
    if not cases:
        raise InputError("holds neither a case nor case folders", path)
    return cases


def _template(option: str | None, case) -> dict | None:
    if option == "none":
        return None
    name = option or suggest_template(case)
    return load_template(name) if name else None


def _predictor(args: argparse.Namespace):
    """``predict(case, **options)`` → DosePrediction: the local pipeline, or the worker of ``--remote``."""
    url = getattr(args, "remote", None)
    if url:
        from dosediffusion.remote.client import predict_remote, read_token

        token = read_token(args.token_file) if getattr(args, "token_file", None) else None
        return lambda case, **options: predict_remote(case, url, token, **options)
    from dosediffusion.model.pipeline import default_device, load_pipeline  # torch and diffusers: only when predicting

    pipeline = load_pipeline(model_folder(args.model))
    device = default_device() if args.device == "auto" else args.device
    return lambda case, **options: pipeline(case, device=device, **options)


def predict_cases(cases: list[Path], args: argparse.Namespace) -> int:
    from dosediffusion.prediction_outputs import write_prediction

    predict = _predictor(args)
    out = Path(args.out)
    failures = 0
    for path in tqdm(cases, desc="cases", unit="case", disable=len(cases) == 1):
        name = path.stem if path.is_file() else path.name
        try:
            case = load_case(path)
            template = _template(args.scorecard, case)
            with tqdm(total=args.steps, desc=f"{name}", unit="step", leave=False) as bar:
                def progress(fraction: float, message: str, bar=bar, name=name) -> None:
                    if getattr(args, "progress_json", False):
                        print(json.dumps({"event": "progress", "case": name, "fraction": round(float(fraction), 4),
                                          "message": message}), flush=True)
                    bar.set_postfix_str(message)
                    bar.n = int(args.steps * min(max((fraction - 0.1) / 0.8, 0.0), 1.0))
                    bar.refresh()

                prediction = predict(case, steps=args.steps, seed=args.seed, num_candidates=args.candidates,
                                     scorecard=template, progress=progress)
            summary = write_prediction(case, prediction, out / name, template, report=not args.no_report)
        except InputError as error:
            failures += 1
            print(f"dosediffusion: error: {error}", file=sys.stderr)
            continue
        print(format_summary(summary, out / name))
    return 1 if failures else 0


def format_summary(summary: dict, folder: Path) -> str:
    lines = [f"{summary['case_id']}: {summary['steps']} steps on {summary['device']} in "
             f"{summary['timing_s']['total']:.1f} s → {folder}"]
    if "mae_body_gy" in summary:
        lines.append(f"  MAE against the case's own dose (body): {summary['mae_body_gy']:.2f} Gy")
    if "scorecard" in summary:
        s = summary["scorecard"]
        lines.append(f"  scorecard {s['template']}: {s['total']:.1f} of {s['max_total']:g}"
                     + (f" ({len(s['not_evaluable'])} not evaluable)" if s["not_evaluable"] else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.candidates < 1:
        raise InputError(f"--candidates must be at least 1, got {args.candidates}")
    if args.token_file and not args.remote:
        raise InputError("--token-file goes with --remote")
    if not args.no_report:
        from dosediffusion.report.plots import require_matplotlib

        require_matplotlib()
    return predict_cases(find_cases(Path(args.path)), args)
