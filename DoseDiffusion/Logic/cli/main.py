"""``dosediffusion``: the command-line entry point.

Each sub-command lives in its own module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``; :func:`~dosediffusion.program.run_command` runs it (a user's mistake prints
one line ``dosediffusion: error: <file>: <problem>`` and exits with code 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dosediffusion import __version__
from dosediffusion.program import run_command

COMMANDS = ("inspect", "dvh", "score", "evaluate", "predict", "export-dicom", "demo", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dosediffusion", description="Radiotherapy dose prediction (DoseDiffusion).")
    parser.add_argument("--version", action="version", version=f"dosediffusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"dosediffusion.cli.{name.replace('-', '_')}")  # export-dicom → export_dicom
        module.add_parser(subparsers).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command("dosediffusion", args)


if __name__ == "__main__":
    sys.exit(main())
