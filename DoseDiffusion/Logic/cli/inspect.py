"""``dosediffusion inspect PATH [--json]``: what a case holds, and what is wrong with it."""

from __future__ import annotations

import argparse
import json

from dosediffusion.io.load import load_case
from dosediffusion.summary import case_summary, format_summary


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("inspect", help="show a case's grid, structures, beams, prescription and warnings")
    parser.add_argument("path", help="DICOM RT folder, case JSON sidecar, or GDP-HMM .npz")
    parser.add_argument("--json", action="store_true", help="print the stable JSON summary instead of text")
    add_selection_arguments(parser)
    return parser


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that pick one DICOM object when a folder holds several."""
    group = parser.add_argument_group("DICOM selection (when a folder holds several)")
    group.add_argument("--series-uid", help="SeriesInstanceUID of the CT series")
    group.add_argument("--struct-uid", help="SOPInstanceUID of the RTSTRUCT")
    group.add_argument("--plan-uid", help="SOPInstanceUID of the RTPLAN")
    group.add_argument("--dose-uid", help="SOPInstanceUID of the RTDOSE")


def selection(args: argparse.Namespace) -> dict:
    return {
        "series_uid": args.series_uid,
        "struct_uid": args.struct_uid,
        "plan_uid": args.plan_uid,
        "dose_uid": args.dose_uid,
    }


def run(args: argparse.Namespace) -> int:
    summary = case_summary(load_case(args.path, **selection(args)))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
