"""``dosediffusion-train``: data preparation (and, as they land, the training stages).

``dosediffusion-train convert PATH --out OUT``: any case ``dosediffusion`` reads (DICOM RT
folder, case sidecar, GDP-HMM npz) → a GDP-HMM-layout ``.npz`` (OUT ending in ``.npz``) or a
NRRD + ``case.json`` folder (any other OUT).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dosediffusion import __version__
from dosediffusion.errors import InputError
from dosediffusion.io.gdp_hmm import write_gdp_hmm_npz
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_sidecar_case


def _convert(args: argparse.Namespace) -> int:
    case = load_case(args.path)
    out = Path(args.out)
    if out.suffix.lower() == ".npz":
        write_gdp_hmm_npz(case, out)
    else:
        if out.exists() and any(out.iterdir()):
            raise InputError("output folder is not empty", out)
        write_sidecar_case(case, out)
    print(f"{case.case_id}: wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dosediffusion-train", description="DoseDiffusion training and data preparation.")
    parser.add_argument("--version", action="version", version=f"dosediffusion-train {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser("convert", help="convert a case to a GDP-HMM .npz or a NRRD + case.json folder")
    convert.add_argument("path", help="DICOM RT folder, case JSON sidecar or GDP-HMM .npz")
    convert.add_argument("--out", required=True, help="an .npz file, or a folder for NRRD volumes + case.json")
    convert.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as error:
        print(f"dosediffusion-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
