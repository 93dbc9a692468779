"""``dosediffusion inspect PATH [--json]``: what a case holds, and what is wrong with it."""

from __future__ import annotations

import argparse
import dataclasses
import json

from dosediffusion.cli.case_arguments import add_case_arguments, read_case
from dosediffusion.errors import InputError
from dosediffusion.prediction.checks import check_predictable
from dosediffusion.summary import case_summary, format_summary


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("inspect", help="show a case's grid, structures, beams, prescription and warnings")
    parser.add_argument("path", help="DICOM RT folder, case JSON sidecar, or GDP-HMM .npz")
    parser.add_argument("--json", action="store_true", help="print the stable JSON summary instead of text")
    add_case_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    case = read_case(args.path, args)
    try:  # on a copy: the check adds a body derived from the CT, which is not the case's own
        check_predictable(dataclasses.replace(case, structures=dict(case.structures), warnings=[]), args.path)
    except InputError as error:
        case.warnings.append(f"cannot be predicted: {error.problem}")
    summary = case_summary(case)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
