"""The options that say how a case is read, shared by every command that reads one: which DICOM
objects (when a folder holds several), the user's structure roles (``--role``) and an institution's
own alias table (``--aliases``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Case
from dosediffusion.io.load import load_case
from dosediffusion.roles import parse_roles


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """``--series-uid``/``--struct-uid``/``--plan-uid``/``--dose-uid``, ``--allow-slice-gaps``, ``--role``,
    ``--aliases``."""
    group = parser.add_argument_group("DICOM selection (when a folder holds several)")
    group.add_argument("--series-uid", help="SeriesInstanceUID of the CT series")
    group.add_argument("--struct-uid", help="SOPInstanceUID of the RTSTRUCT")
    group.add_argument("--plan-uid", help="SOPInstanceUID of the RTPLAN")
    group.add_argument("--dose-uid", help="SOPInstanceUID of the RTDOSE")
    group.add_argument("--allow-slice-gaps", action="store_true",
                       help="accept a CT series with missing slices, interpolating across the gap")
    group = parser.add_argument_group("structure roles (otherwise from the alias table)")
    group.add_argument("--role", action="append", metavar="NAME=ROLE",
                       help="a structure's role: NAME=ptv[:DOSE_GY], NAME=oar, NAME=body or NAME=ignore (repeatable); "
                            "e.g. --role OuterTarget=ptv:50 --role Core=oar")
    group.add_argument("--aliases", metavar="FILE",
                       help="your own alias table (the shipped Resources/structure_aliases.json's layout)")


def read_case(path: str | Path, args: argparse.Namespace) -> Case:
    """The case at ``path`` read as :func:`add_case_arguments`' options say."""
    aliases = AliasTable.load(args.aliases) if getattr(args, "aliases", None) else None
    gaps = {"allow_slice_gaps": True} if getattr(args, "allow_slice_gaps", False) else {}
    return load_case(path, aliases=aliases, roles=parse_roles(getattr(args, "role", None)), **gaps,
                     series_uid=getattr(args, "series_uid", None), struct_uid=getattr(args, "struct_uid", None),
                     plan_uid=getattr(args, "plan_uid", None), dose_uid=getattr(args, "dose_uid", None))
