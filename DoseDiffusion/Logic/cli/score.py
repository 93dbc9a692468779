"""``dosediffusion score PATH --scorecard NAME|FILE [--dose FILE] [--json]``: a clinical scorecard."""

from __future__ import annotations

import argparse
import json

from dosediffusion.cli.dvh import load_dose
from dosediffusion.cli.inspect import add_selection_arguments, selection
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.metrics.scorecard import load_template, score_case


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("score", help="score a dose with a clinical scorecard")
    parser.add_argument("path", help="DICOM RT folder, case JSON sidecar, or GDP-HMM .npz")
    parser.add_argument("--scorecard", required=True,
                        help="a shipped template (head_neck_sib_70_63_56, lung_60, prostate_78) or a JSON file "
                             "(ours or ESAPI PlanScoreCard)")
    parser.add_argument("--dose", help="a dose volume (NRRD/NIfTI, Gy) instead of the case's own dose")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_selection_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    template = load_template(args.scorecard)
    case = load_case(args.path, **selection(args))
    dose = load_dose(args.dose, case) if args.dose else case.dose
    if dose is None:
        raise InputError("the case has no dose; pass --dose FILE", args.path)
    report = score_case(case, template, dose)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.template}: {report.total:.2f} of {report.max_total:.2f}")
    for e in report.entries:
        if e.score is None:
            print(f"  {e.structure:<16} {e.metric:<13} not evaluable ({e.note})")
            continue
        status = "" if e.passed is None else ("pass" if e.passed else ("FAIL (hard)" if e.hard else "fail"))
        print(f"  {e.structure:<16} {e.metric:<13} {e.value:>9.2f} {e.unit:<4} score {e.score:>5.2f}/{e.max_score:<4g} {status}")
    return 0
