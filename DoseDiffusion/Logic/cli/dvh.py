"""``dosediffusion dvh PATH [--dose FILE] [--json] [--plot FILE.png]``: standard DVH metrics per structure.

``--plot`` also draws the cumulative DVHs (dose Gy, volume %); with ``--dose`` on a case that has
its own dose, that dose is drawn dashed as the reference.

JSON: ``{"case_id", "dose": "<source>", "structures": {NAME: {"role", "volume_cc", "mean_gy", "min_gy",
"max_gy", "d98_gy", "d95_gy", "d50_gy", "d2_gy", "d0_03cc_gy"}}, "targets": {NAME: {"prescription_gy",
"homogeneity_index", "paddick_ci"}}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dosediffusion.cli.case_arguments import add_case_arguments, read_case
from dosediffusion.errors import InputError
from dosediffusion.io.dose_file import add_dose_on_ct_grid_argument, read_dose_file
from dosediffusion.metrics.dose_metrics import (
    STANDARD_METRICS,
    case_dvhs,
    homogeneity_index,
    paddick_conformity_index,
    standard_metrics,
)
from dosediffusion.metrics.dvh import DVH
from dosediffusion.report.plots import check_plot_path, plot_dvhs


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("dvh", help="DVH metrics of every structure (Gy, cc)")
    parser.add_argument("path", help="DICOM RT folder, case JSON sidecar, or GDP-HMM .npz")
    add_dose_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_plot_argument(parser, "also draw the cumulative DVHs into FILE; with --dose, the case's own dose dashed beside")
    add_case_arguments(parser)
    return parser


def add_dose_argument(parser: argparse.ArgumentParser) -> None:
    """``--dose FILE`` (read by :func:`~dosediffusion.io.dose_file.read_dose_file`) and ``--dose-on-ct-grid``."""
    parser.add_argument("--dose", help="a dose file instead of the case's own dose: RTDOSE .dcm, NRRD, NIfTI or "
                                       "MetaImage (Gy), on the case's frame of reference")
    add_dose_on_ct_grid_argument(parser)


def chosen_dose(args: argparse.Namespace, case) -> np.ndarray:
    """``--dose`` in Gy on the case's grid, else the case's own dose; refused when there is neither."""
    if args.dose:
        return read_dose_file(args.dose, case, on_ct_grid=args.dose_on_ct_grid)
    if case.dose is None:
        raise InputError("the case has no dose; pass --dose FILE", args.path)
    return case.dose


def add_plot_argument(parser: argparse.ArgumentParser, what: str, flag: str = "--plot") -> None:
    """A ``--plot FILE`` option (or ``flag``) whose help is ``what`` plus the formats and the extra it needs."""
    parser.add_argument(flag, metavar="FILE.png",
                        help=f"{what} (.png, .svg or .pdf; needs matplotlib: pip install dosediffusion[report])")


def wrote(path: str) -> None:
    """Tell the user a figure was written; on stderr, so that ``--json`` output stays pure JSON."""
    print(f"wrote {path}", file=sys.stderr)


def dvh_report(case, dose, dvhs: dict[str, DVH] | None = None) -> dict:
    """The ``--json`` report of ``dose`` (Gy) on ``case``; ``dvhs`` are its DVHs when already computed."""
    dvhs = case_dvhs(case, dose) if dvhs is None else dvhs
    report = {"case_id": case.case_id, "structures": {}, "targets": {}}
    for name, dvh in dvhs.items():
        report["structures"][name] = {"role": case.structures[name].role,
                                      **{k: round(v, 3) for k, v in standard_metrics(dvh).items()}}
    for target in case.with_role("ptv"):
        if target.name in dvhs and target.prescription_gy:
            report["targets"][target.name] = {
                "prescription_gy": target.prescription_gy,
                "homogeneity_index": round(homogeneity_index(dvhs[target.name]), 4),
                "paddick_ci": round(paddick_conformity_index(dose, case.grid, target, target.prescription_gy, case.body), 4),
            }
    return report


def write_dvh_plot(path: str, case, dvhs: dict[str, DVH], dose_file: str | None) -> None:
    """Plot ``dvhs``; when they are of a ``dose_file`` and the case has a dose, that one dashed beside."""
    reference = case_dvhs(case) if dose_file and case.dose is not None else None
    labels = (Path(dose_file).name if dose_file else "case dose", "case dose")
    plot_dvhs(dvhs, reference, path, title=f"{case.case_id}: cumulative DVHs", labels=labels)
    wrote(path)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot_path(args.plot)
    case = read_case(args.path, args)
    dose = chosen_dose(args, case)
    dvhs = case_dvhs(case, dose)
    report = dvh_report(case, dose, dvhs)
    report["dose"] = args.dose or "case"
    if args.plot:
        write_dvh_plot(args.plot, case, dvhs, args.dose)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'structure':<20} {'role':<6} {'cc':>9}" + "".join(f" {m.label:>7}" for m in STANDARD_METRICS.values())
          + "   (Gy)")
    for name, m in report["structures"].items():
        print(f"{name:<20} {m['role']:<6} {m['volume_cc']:>9.2f}" + "".join(f" {m[key]:>7.2f}" for key in STANDARD_METRICS))
    for name, t in report["targets"].items():
        print(f"{name}: HI {t['homogeneity_index']:.3f}, Paddick CI {t['paddick_ci']:.3f} at {t['prescription_gy']:g} Gy")
    return 0
