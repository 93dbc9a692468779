"""``dosediffusion predict PATH --model DIR|demo --out DIR [--steps N] [--candidates K] [--seed S]
[--device auto|cpu|cuda] [--scorecard auto|none|NAME|FILE] [--role NAME=ROLE ...] [--aliases FILE]
[--overwrite] [--remote URL [--token-file F] [--reconnect-s S]]``: predict the dose of one case or a batch, here or on a
remote GPU worker (``dosediffusion serve``), through the one prediction layer
(:mod:`dosediffusion.prediction`).

``PATH`` is a case (DICOM RT folder, case JSON, GDP-HMM .npz) or a folder of cases (each
sub-folder or .npz/.json file one case). Each case is read and checked before the model is loaded:
a case that cannot be predicted (no structures, no target, a target without a prescription, no
body) is refused with exit code 2 and the reason. Each case's files go to ``OUT/<case name>/`` (see
:mod:`dosediffusion.prediction.outputs`); an existing one is replaced only with ``--overwrite``. In a
batch a failing case is reported and skipped; the exit code is then 1. What the command does (model,
scorecard and why, warnings) is said on stderr. ``--progress-json`` prints each progress report as
one JSON line on stdout, ``{"event": "progress", "case": NAME, "fraction": 0.0-1.0, "message":
TEXT}`` (flushed), for a parent process such as the Slicer module that shows a progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from dosediffusion.cli.batch import case_name, outcome_table, refused_cases
from dosediffusion.cli.case_arguments import add_case_arguments, read_case
from dosediffusion.errors import InputError
from dosediffusion.io.output_place import check_output_place
from dosediffusion.model.limits import check_sampling_options
from dosediffusion.prediction.outputs import DOSE_STD_FILE
from dosediffusion.prediction.predictors import LocalPredictor, RemotePredictor
from dosediffusion.prediction.run import predict_to_folder
from dosediffusion.prediction.scorecard import check_scorecard_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="predict the dose of a case (or a folder of cases)")
    parser.add_argument("path", help="a case (DICOM RT folder, case JSON, GDP-HMM .npz) or a folder of cases")
    add_prediction_arguments(parser)
    parser.add_argument("--remote", metavar="URL",
                        help="run the model on the worker at URL (dosediffusion serve); --model and --device are then "
                             "the worker's")
    parser.add_argument("--token-file", help="file holding the worker's bearer token (with --remote)")
    parser.add_argument("--reconnect-s", type=float, metavar="S",
                        help="with --remote: seconds to keep trying to reach a worker that does not answer, such as "
                             "one restarting (default 120); a job it lost is then submitted again")
    add_case_arguments(parser)
    return parser


def add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo",
                        help="pipeline folder, or 'demo' for the bundled demo model (the default; not for clinical use)")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps, 1-50 (default 10)")
    parser.add_argument("--candidates", type=int, default=1, help="best-of-K candidates, 1-16 (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--scorecard", default="auto",
                        help="scorecard template name or file; 'auto' (default): the shipped one that fits the case's "
                             "organs and prescription; 'none'")
    parser.add_argument("--overwrite", action="store_true", help="replace a case's existing output folder")
    parser.add_argument("--no-report", action="store_true", help="skip report.png (no matplotlib needed)")
    parser.add_argument("--progress-json", action="store_true",
                        help="print progress as JSON lines on stdout (for a parent process)")


_CASE_FILES = (".npz", ".json")


def find_cases(path: Path) -> list[Path]:
    """``path`` itself when it is a case (a file, a sidecar folder, a folder holding files other than
    ``.npz`` / ``.json`` case files: DICOM, an OpenKBP patient's CSVs), else the cases directly inside
    it (folders and case files: a folder of GDP-HMM or compact OpenKBP ``.npz`` is a batch)."""
    if not path.exists():
        raise InputError("no such file or folder", path)
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")] if path.is_dir() else []
    if (path.is_file() or (path / "case.json").is_file()
            or any(p.suffix.lower() not in _CASE_FILES for p in files)):
        return [path]
    cases = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                   and (p.is_dir() or p.suffix.lower() in _CASE_FILES))
    if not cases:
        raise InputError("holds neither a case nor case folders", path)
    return cases


def say(message: str) -> None:
    """A status line for the user, on stderr (stdout carries the results and ``--progress-json``)."""
    print(f"dosediffusion: {message}", file=sys.stderr, flush=True)


def _predictor(args: argparse.Namespace) -> LocalPredictor | RemotePredictor:
    if getattr(args, "remote", None):
        return RemotePredictor(args.remote, getattr(args, "token_file", None), getattr(args, "reconnect_s", None), say)
    return LocalPredictor(args.model, args.device)


class _ProgressBar:
    """A tqdm bar over the steps, opened at the first progress report (after the status lines); with
    ``--progress-json``, JSON lines instead."""

    def __init__(self, args: argparse.Namespace, name: str):
        self.args, self.name, self.bar = args, name, None

    def __call__(self, fraction: float, message: str) -> None:
        if getattr(self.args, "progress_json", False):  # for a program (the Slicer module): the lines, no bar
            print(json.dumps({"event": "progress", "case": self.name, "fraction": round(float(fraction), 4),
                              "message": message}), flush=True)
            return
        if self.bar is None:
            self.bar = tqdm(total=self.args.steps, desc=self.name, unit="step", leave=False)
        self.bar.n = round(self.args.steps * min(max((fraction - 0.1) / 0.8, 0.0), 1.0))  # int() lags a step
        self.bar.set_postfix_str(message, refresh=False)  # one refresh, with the count and its label together
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def predict_one(path: Path, args: argparse.Namespace, predictor, out: Path) -> dict:
    """Read the case at ``path`` and predict it into ``out`` (every refusal comes before the model is
    loaded)."""
    name = path.stem if path.is_file() else path.name
    say(f"{name}: reading the case")
    case = read_case(path, args)
    progress = _ProgressBar(args, name)
    try:
        return predict_to_folder(case, predictor, out, args.scorecard, steps=args.steps, seed=args.seed,
                                 candidates=args.candidates, report=not args.no_report, overwrite=args.overwrite,
                                 progress=progress, status=lambda message: say(f"{name}: {message}"), source=path)
    finally:
        progress.close()


def predict_cases(cases: list[Path], args: argparse.Namespace) -> int:
    """Predict every case; one case's input error ends the command (exit 2). A batch's cases are all
    checked before the model is loaded; one that is refused or fails is reported and skipped (exit 1),
    and a table of every case's outcome ends the run."""
    predictor = _predictor(args)
    predictor.check_options(args.candidates)
    say(f"model: {predictor}")
    out, outcomes = Path(args.out), []
    refused = refused_cases(cases, args, out, read_case) if len(cases) > 1 else {}
    for reason in refused.values():
        print(f"dosediffusion: error: {reason}", file=sys.stderr)
    for path in cases:
        folder = out / case_name(path)
        if path in refused:
            outcomes.append((case_name(path), "refused", refused[path]))
            continue
        try:
            summary = predict_one(path, args, predictor, folder)
        except InputError as error:
            if len(cases) == 1:
                raise
            outcomes.append((case_name(path), "failed", str(error)))
            print(f"dosediffusion: error: {error}", file=sys.stderr)
            continue
        outcomes.append((case_name(path), "done", str(folder)))
        print(format_summary(summary, folder))
    if len(cases) > 1:
        print(outcome_table(outcomes), file=sys.stderr)
    return 1 if any(kind != "done" for _, kind, _ in outcomes) else 0


def format_summary(summary: dict, folder: Path) -> str:
    how = f"{summary['steps']} steps" if summary["steps"] is not None else "one deterministic pass"
    lines = [f"{summary['case_id']}: {how} on {summary['device']} in {summary['timing_s']['total']:.1f} s → {folder}"]
    if "mae_body_gy" in summary:
        lines.append(f"  MAE against the case's own dose (body): {summary['mae_body_gy']:.2f} Gy")
    if "uncertainty" in summary:
        u = summary["uncertainty"]
        body = u["regions"].get("body")
        line = f"  uncertainty (std over {u['candidates']} candidates) → {DOSE_STD_FILE}"
        line += f": mean {body['mean_gy']:.2f} Gy in the body" if body else ""
        pearson = u.get("error_correlation", {}).get("pearson")
        line += f"; correlation with the error (Pearson) {pearson:.2f}" if pearson is not None else ""
        lines.append(line)
    if "scorecard" in summary:
        s = summary["scorecard"]
        lines.append(f"  scorecard {s['template']}: {s['total']:.1f} of {s['max_total']:g}"
                     + (f" ({len(s['not_evaluable'])} not evaluable)" if s["not_evaluable"] else ""))
    return "\n".join(lines)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any case is read, options that cannot work."""
    check_sampling_options(args.steps, args.candidates)
    check_output_place(args.out, folder=True)
    check_scorecard_option(args.scorecard)
    if getattr(args, "token_file", None) and not getattr(args, "remote", None):
        raise InputError("--token-file goes with --remote")
    reconnect_s = getattr(args, "reconnect_s", None)
    if reconnect_s is not None and (not getattr(args, "remote", None) or not reconnect_s >= 0):
        raise InputError(f"--reconnect-s goes with --remote and is seconds, 0 or more (got {reconnect_s:g})")
    if not args.no_report:
        from dosediffusion.report.plots import require_matplotlib

        require_matplotlib()


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    return predict_cases(find_cases(Path(args.path)), args)
