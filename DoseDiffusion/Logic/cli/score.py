"""``dosediffusion score PATH --scorecard NAME|FILE [--dose FILE] [--json] [--plot FILE.png]``: a clinical scorecard.

``--plot`` also draws the scorecard as a table figure; with ``--dose`` on a case that has its own
dose, that dose's scores stand beside as the reference, with the score differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dosediffusion.cli.case_arguments import add_case_arguments, read_case
from dosediffusion.cli.dvh import add_dose_argument, add_plot_argument, chosen_dose, wrote
from dosediffusion.metrics.scorecard import (
    ScoreReport,
    check_scorable,
    load_template,
    score_case,
    shipped_templates,
    template_fit,
)
from dosediffusion.report.plots import check_plot_path, plot_scorecard


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("score", help="score a dose with a clinical scorecard")
    parser.add_argument("path", help="DICOM RT folder, case JSON sidecar, or GDP-HMM .npz")
    parser.add_argument("--scorecard", required=True,
                        help=f"a shipped template ({', '.join(shipped_templates())}) or a JSON file "
                             "(ours or ESAPI PlanScoreCard)")
    add_dose_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_plot_argument(parser, "also draw the scorecard as a table into FILE; with --dose, the case's own dose's "
                              "scores beside")
    add_case_arguments(parser)
    return parser


def write_scorecard_plot(path: str, case, template: dict, report: ScoreReport, dose_file: str | None) -> None:
    """Plot ``report``; when it scores a ``dose_file`` and the case has a dose, that one's scores beside."""
    reference = score_case(case, template) if dose_file and case.dose is not None else None
    labels = (Path(dose_file).name if dose_file else "case dose", "case dose")
    plot_scorecard(report, path, reference, template=template, labels=labels)
    wrote(path)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot_path(args.plot)
    template = load_template(args.scorecard)
    case = read_case(args.path, args)
    dose = chosen_dose(args, case)
    report = score_case(case, template, dose)
    check_scorable(report, case)
    fit, fits = template_fit(template, case)
    if not fits:
        print(f"dosediffusion: warning: the scorecard {report.template!r} does not fit the case ({fit}): %Rx goals "
              f"scale with each PTV's prescription, Gy limits assume the template's; name a fitting one with "
              f"--scorecard", file=sys.stderr)
    if args.plot:
        write_scorecard_plot(args.plot, case, template, report, args.dose)
    if args.json:
        print(json.dumps({**report.to_dict(), "template_fit": {"text": fit, "fits": fits}}, indent=2))
        return 0
    print(f"{report.template}: {report.total:.2f} of {report.max_total:.2f}  ({fit}{'' if fits else ': does not fit'})")
    for e in report.entries:
        if e.score is None:
            print(f"  {e.structure:<16} {e.measured:<24} not evaluable ({e.note})")
            continue
        print(f"  {e.structure:<16} {e.measured:<24} {e.value:>9.2f} {e.unit:<4} score {e.score:>5.2f}/{e.max_score:<4g} "
              f"{e.verdict}")
    return 0
