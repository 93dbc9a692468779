"""``dosediffusion evaluate --pred FILE --ref FILE --case PATH [--scorecard NAME] [--json] [--plot FILE.png]
[--scorecard-plot FILE.png]``.

Compares two doses (NRRD/NIfTI volumes in Gy, or RTDOSE files) on the case's CT grid
(:func:`~dosediffusion.metrics.case_evaluation.evaluate_dose`): the MAE inside the body, the GDP-HMM
MAE, the OpenKBP dose and DVH scores with every DVH point, MAE inside each structure, PSNR and 3-D SSIM
inside the body, gamma pass rates (3 %/3 mm and 2 %/2 mm, global, 10 % low-dose cut-off) and,
with ``--scorecard``, both doses' scorecard totals and their difference. ``--plot`` draws both doses'
cumulative DVHs (predicted solid, reference dashed); ``--scorecard-plot`` the two scorecards as a table.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from dosediffusion.cli.case_arguments import add_case_arguments, read_case
from dosediffusion.cli.dvh import add_plot_argument, wrote
from dosediffusion.errors import InputError
from dosediffusion.io.dose_file import add_dose_on_ct_grid_argument, read_dose_file
from dosediffusion.metrics.dose_metrics import case_dvhs
from dosediffusion.metrics.scorecard import ScoreReport, load_template
from dosediffusion.report.plots import check_plot_path, plot_dvhs, plot_scorecard


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="compare a predicted dose with a reference dose")
    parser.add_argument("--pred", required=True,
                        help="predicted dose: NRRD/NIfTI (Gy), RTDOSE .dcm or an OpenKBP dose .csv (Gy)")
    parser.add_argument("--ref", help="reference dose: NRRD/NIfTI (Gy), RTDOSE .dcm or an OpenKBP dose .csv (Gy); "
                                      "default: the case's own dose")
    parser.add_argument("--case", required=True, help="the case (structures, grid, prescription)")
    parser.add_argument("--scorecard", help="also compare scorecard totals with this template")
    add_dose_on_ct_grid_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_plot_argument(parser, "also draw both doses' cumulative DVHs into FILE: predicted solid, reference dashed")
    add_plot_argument(parser, "also draw both doses' scorecards side by side as a table into FILE (needs --scorecard)",
                      flag="--scorecard-plot")
    add_case_arguments(parser)
    return parser


#: What each headline figure of the text output is, printed beside it.
MEANINGS = {
    "mae_body_gy": "Gy: mean |difference| inside the body, no normalisation",
    "gdp_hmm_mae_gy": "Gy: GDP-HMM challenge MAE: reference scaled to D97 of the high PTV = its prescription; "
                      "|difference| summed where either dose exceeds 5 Gy in the body, per body voxel above 5 Gy "
                      "in the reference",
    "dose_score_gy": "Gy: OpenKBP dose score, sum of |difference| over the grid per voxel of the {support}",
    "dvh_score_gy": "Gy: OpenKBP DVH score, mean |difference| of the DVH points from the voxel doses (OAR "
                    "D0.1cc/mean, PTV D1/D95/D99)",
    "psnr_db": "dB: peak signal-to-noise ratio inside the body",
    "ssim": "3-D structural similarity inside the body (1 = identical)",
}


#: Why a headline figure could not be computed for a case, printed in its place.
NOT_COMPUTED = {
    "gdp_hmm_mae_gy": "no target with a prescription (it normalises to the high PTV's): give one with "
                      "--role NAME=ptv:DOSE_GY",
    "dvh_score_gy": "no target or OAR with a voxel in the case: name them with --role NAME=ptv:DOSE_GY / NAME=oar",
}


def _finite(value):
    """JSON has no infinity (PSNR of identical doses): such numbers become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _check_plot_options(args: argparse.Namespace) -> None:
    """Fail before any computation on a plot option that cannot be honoured."""
    if args.scorecard_plot and not args.scorecard:
        raise InputError("--scorecard-plot needs --scorecard NAME|FILE")
    for path in (args.plot, args.scorecard_plot):
        if path:
            check_plot_path(path)


def write_plots(args: argparse.Namespace, case, pred: np.ndarray, ref: np.ndarray, template: dict | None,
                reports: tuple[ScoreReport, ScoreReport] | None) -> None:
    """The ``--plot`` DVH figure and the ``--scorecard-plot`` table, where asked for."""
    if args.plot:
        title = f"{case.case_id}: predicted vs reference"
        plot_dvhs(case_dvhs(case, pred), case_dvhs(case, ref), args.plot, title=title)
        wrote(args.plot)
    if args.scorecard_plot and reports:
        plot_scorecard(reports[0], args.scorecard_plot, reports[1], template=template)
        wrote(args.scorecard_plot)


def run(args: argparse.Namespace) -> int:
    _check_plot_options(args)
    template = load_template(args.scorecard) if args.scorecard else None
    case = read_case(args.case, args)
    if args.ref is None and case.dose is None:
        raise InputError("the case has no dose of its own: give the reference dose with --ref FILE", args.case)
    pred = read_dose_file(args.pred, case, on_ct_grid=args.dose_on_ct_grid)
    ref = case.dose if args.ref is None else read_dose_file(args.ref, case, on_ct_grid=args.dose_on_ct_grid)
    if not np.any(ref > 0):
        raise InputError("the reference dose is zero everywhere", args.ref or args.case)
    from dosediffusion.metrics.case_evaluation import evaluate_dose, scorecard_reports  # torch

    reports = scorecard_reports(case, template, pred, ref) if template else None
    result = evaluate_dose(pred, ref, case, reports=reports)
    write_plots(args, case, pred, ref, template, reports)
    if args.json:
        print(json.dumps(_finite(result), indent=2))
        return 0
    for key in ("mae_body_gy", "gdp_hmm_mae_gy", "dose_score_gy", "dvh_score_gy", "psnr_db", "ssim"):
        if key in result and not np.isnan(result[key]):
            print(f"{key:<16} {result[key]:.4f}   {MEANINGS[key].format(support=result.get('support'))}")
        else:
            print(f"{key:<16} not computed: {NOT_COMPUTED.get(key, 'not defined for this case')}")
    print("MAE inside each structure (Gy; mean |predicted - reference| over its voxels, no normalisation):")
    width = max((len(name) for name in result["structure_mae_gy"]), default=0)
    for name, mae in result["structure_mae_gy"].items():
        print(f"  {name:<{width}} {mae:.2f}")
    for name, rate in result["gamma_pass_percent"].items():
        print(f"gamma {name:<10} {rate:.2f} %   pass rate, global (of the reference maximum), 10 % low-dose cut-off")
    if "scorecard" in result:
        s = result["scorecard"]
        print(f"scorecard        pred {s['pred']:.2f}  ref {s['ref']:.2f}  diff {s['diff']:+.2f}")
    return 0
