"""``load_case(path)``: one entry point for every input format.

- a folder (or a list of files) of DICOM: CT series + optional RTSTRUCT, RTPLAN, RTDOSE;
- a ``.json`` sidecar (NRRD/NIfTI volumes + structures, beams, prescription), or a folder holding
  exactly one ``case.json``;
- a GDP-HMM challenge ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

from dosediffusion.case import Case
from dosediffusion.errors import InputError


def load_case(path: str | Path, **selection: str | None) -> Case:
    """Read a case from ``path``; ``selection`` picks DICOM objects by UID when a folder holds
    several (``series_uid``, ``struct_uid``, ``plan_uid``, ``dose_uid``)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    suffixes = "".join(path.suffixes).lower()
    if path.is_file() and suffixes.endswith(".npz"):
        from dosediffusion.io.gdp_hmm import read_gdp_hmm_case

        return read_gdp_hmm_case(path)
    if path.is_file() and suffixes.endswith(".json"):
        from dosediffusion.io.volume_sidecar import read_sidecar_case

        return read_sidecar_case(path)
    if path.is_dir() and (path / "case.json").is_file():
        from dosediffusion.io.volume_sidecar import read_sidecar_case

        return read_sidecar_case(path / "case.json")
    from dosediffusion.io.dicom_case import read_dicom_case

    return read_dicom_case(path, **selection)
