"""``load_case(path)``: one entry point for every input format.

- a folder (or a list of files) of DICOM: CT series + optional RTSTRUCT, RTPLAN, RTDOSE;
- a ``.json`` sidecar (NRRD/NIfTI volumes + structures, beams, prescription), or a folder holding
  exactly one ``case.json``;
- the project's own compact ``NAME.case.npz`` (:mod:`dosediffusion.io.compact`);
- a GDP-HMM challenge ``.npz``;
- an OpenKBP challenge patient: its folder of sparse CSV files (``pt_N/``) or a compact ``pt_N.npz``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.io.compact import SUFFIX as COMPACT_SUFFIX
from dosediffusion.io.compact import read_compact
from dosediffusion.roles import RoleChoice


def load_case(path: str | Path, *, aliases: AliasTable | None = None, roles: Mapping[str, RoleChoice] | None = None,
              **selection: str | None) -> Case:
    """Read a case from ``path``; ``selection`` picks DICOM objects by UID when a folder holds
    several (``series_uid``, ``struct_uid``, ``plan_uid``, ``dose_uid``); ``aliases`` (default: the
    shipped table) and the user's ``roles`` give the structures their roles
    (:func:`~dosediffusion.roles.assign_roles`)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    suffixes = "".join(path.suffixes).lower()
    if path.is_file() and suffixes.endswith(COMPACT_SUFFIX):
        return read_compact(path, aliases=aliases, roles=roles)
    from dosediffusion.io.openkbp import is_openkbp_folder, is_openkbp_npz, read_openkbp_case

    if is_openkbp_folder(path) or (path.is_file() and suffixes.endswith(".npz") and is_openkbp_npz(path)):
        return read_openkbp_case(path, aliases=aliases, roles=roles)
    if path.is_file() and suffixes.endswith(".npz"):
        from dosediffusion.io.gdp_hmm import read_gdp_hmm_case

        return read_gdp_hmm_case(path, aliases=aliases, roles=roles)
    sidecar = path if path.is_file() and suffixes.endswith(".json") else path / "case.json"
    if sidecar.is_file():
        from dosediffusion.io.volume_sidecar import read_sidecar_case

        return read_sidecar_case(sidecar, aliases=aliases, roles=roles)
    from dosediffusion.io.dicom_case import read_dicom_case

    return read_dicom_case(path, aliases=aliases, roles=roles, **selection)
