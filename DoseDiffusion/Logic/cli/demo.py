"""``dosediffusion demo [--out DIR] [--steps N] [--device auto|cpu|cuda]``: predict the bundled demo
case (``Resources/DemoCase``) with the bundled demo model, as ``predict`` does (its previous output
is replaced)."""

from __future__ import annotations

import argparse

from dosediffusion.cli.predict import check_arguments, find_cases, predict_cases
from dosediffusion.resources import resource_path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help="predict the bundled demo case with the bundled demo model")
    parser.add_argument("--out", default="dosediffusion-demo", help="output folder (default ./dosediffusion-demo)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (default 10)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def run(args: argparse.Namespace) -> int:
    options = argparse.Namespace(model="demo", out=args.out, steps=args.steps, candidates=1, seed=0,
                                 device=args.device, scorecard="auto", no_report=False, overwrite=True)
    check_arguments(options)
    return predict_cases(find_cases(resource_path("DemoCase")), options)
