"""``dosediffusion export-dicom CASE OUT [--overwrite] [--role NAME=ROLE ...] [--aliases FILE]``: write any
readable case (DICOM, case JSON, GDP-HMM or OpenKBP) as a DICOM RT set that 3D Slicer opens: the CT series
(int16 HU), an RTSTRUCT with every structure, an RTPLAN with the beams, fractions and prescription levels,
and an RTDOSE when the case has a dose (:func:`~dosediffusion.io.dicom_write.write_case_dicom`).

Structures given as masks only are outlined along their voxel edges
(:func:`~dosediffusion.io.mask_contours.mask_to_contours`), so their contours rasterise back to exactly
the same masks. A case without a patient id or name (an OpenKBP patient, a GDP-HMM case) gets its case id
as both, so that Slicer's DICOM browser tells exported patients apart. ``OUT`` is a new or empty folder; ``--overwrite`` replaces a previous export (a folder of
``.dcm`` files only). Every refusal comes before any file is written, and a failure while writing leaves
nothing (the set is written beside ``OUT`` and renamed at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Case
from dosediffusion.cli.case_arguments import add_case_arguments, read_case
from dosediffusion.errors import InputError
from dosediffusion.io.dicom_write import write_case_dicom
from dosediffusion.io.mask_contours import mask_to_contours
from dosediffusion.io.output_place import check_output_place
from dosediffusion.roles import suggested_role


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export-dicom", help="write a case as DICOM RT (CT, RTSTRUCT, RTPLAN, RTDOSE) "
                                                        "to open in 3D Slicer")
    parser.add_argument("path", help="a case: DICOM RT folder, case JSON, GDP-HMM .npz, OpenKBP pt_N/ or pt_N.npz")
    parser.add_argument("out", help="the folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it holds a previous export "
                                                                 "(.dcm files only)")
    add_case_arguments(parser)
    return parser


def check_out(out: Path, case_path: Path, overwrite: bool) -> bool:
    """Refuse an ``out`` that cannot be written, that would hold or replace the case itself, or that holds
    files already (without ``overwrite``: any; with it: anything but a previous export's ``.dcm`` files).
    Returns whether ``out`` exists (and is then replaced whole)."""
    check_output_place(out, folder=True, option="OUT")
    out_abs, case_abs = out.resolve(), case_path.resolve()
    if out_abs == case_abs or out_abs in case_abs.parents or case_abs in out_abs.parents:
        raise InputError(f"is the case's own folder, inside it or around it ({case_path}): choose an OUT beside the "
                         "case", out)
    if not out.exists():
        return False
    held = sorted(out.iterdir())
    if held and not overwrite:
        raise InputError(f"holds files already ({held[0].name}, …): choose a new or empty OUT, or pass --overwrite "
                         "to replace a previous export", out)
    foreign = [p.name for p in held if not (p.is_file() and p.suffix.lower() == ".dcm")]
    if foreign:
        raise InputError(f"holds {foreign[0]}, which no export writes: --overwrite replaces only a previous export "
                         "(.dcm files); choose another OUT", out)
    return True


def exportable(case: Case) -> Case:
    """``case`` as it is written: a contour for every structure that has only a mask (the mask's voxel-edge
    outlines), and the case id as patient id and name where the source gives none; on a shallow copy, the
    case's own structures and meta are left as they are."""
    structures = {name: s if s.contours else dataclasses.replace(s, contours=mask_to_contours(s.mask, case.grid))
                  for name, s in case.structures.items()}
    meta = {"PatientID": case.case_id, "PatientName": case.case_id, **{k: v for k, v in case.meta.items() if v}}
    return dataclasses.replace(case, structures=structures, meta=meta)


def roles_not_in_names(case: Case, aliases: AliasTable | None) -> list[str]:
    """``--role`` options that give back, when ``OUT`` is read, the roles this case's structures have from
    elsewhere than their names (a sidecar, the GDP-HMM PTV list, ``--role``): an RTSTRUCT carries names,
    and a reader gives a structure its role from its name and the plan's prescription levels."""
    options = []
    for name, structure in case.structures.items():
        choice, _ = suggested_role(name, case.prescription.levels_gy, aliases)
        role = "ignore" if structure.role == "other" else structure.role
        if (choice.role, choice.prescription_gy) != (role, structure.prescription_gy if role == "ptv" else None):
            dose = f":{structure.prescription_gy:g}" if role == "ptv" and structure.prescription_gy else ""
            options.append(f"--role {shlex.quote(f'{name}={role}{dose}')}")
    return options


def _summary(case: Case, out: Path, written: dict) -> str:
    parts = [f"{len(written['ct'])} CT slices"]
    if "rtstruct" in written:
        parts.append(f"RTSTRUCT ({len(case.structures)} structures)")
    if "rtplan" in written:
        levels = "/".join(f"{v:g}" for v in case.prescription.levels_gy) or "no"
        parts.append(f"RTPLAN ({len(case.beams)} beams, {levels} Gy in {case.prescription.fractions or 1} fractions)")
    if "rtdose" in written:
        parts.append(f"RTDOSE (max {float(case.dose.max()):.2f} Gy)")
    return (f"{case.case_id} → {out}: {', '.join(parts)}\n"
            f"Open it in 3D Slicer: DICOM module → Import DICOM files → choose {out}, select the patient → Load "
            "(SlicerRT reads the RT objects); or drop the folder onto the Slicer window.")


def run(args: argparse.Namespace) -> int:
    out, path = Path(args.out), Path(args.path)
    replace = check_out(out, path, args.overwrite)
    case = read_case(path, args)
    written = write_case_dicom(exportable(case), out, replace=replace)
    print(_summary(case, out, written))
    for warning in case.warnings:
        print(f"dosediffusion: warning: {warning}", file=sys.stderr)
    options = roles_not_in_names(case, AliasTable.load(args.aliases) if args.aliases else None)
    if options:
        print(f"dosediffusion: the RTSTRUCT carries structure names, not roles: read {out} back with "
              f"{' '.join(options)} to give them the roles they have here", file=sys.stderr)
    return 0
