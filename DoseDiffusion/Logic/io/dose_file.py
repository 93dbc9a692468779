"""The one reader of a dose file for every command: RTDOSE, NRRD, NIfTI, MetaImage (and an OpenKBP
dose CSV) → Gy on the case's CT grid, or a one-line refusal.

- RTDOSE: stored values × DoseGridScaling, DoseUnits GY, on the case's frame of reference (checked
  when the case has one: DICOM cases do).
- NRRD / NIfTI / MetaImage: the file's geometry (LPS). A ``DoseUnits`` key (what
  :func:`~dosediffusion.io.volume_sidecar.write_volume` writes for our doses) of ``Gy`` or ``cGy`` is
  honoured; any other unit is refused. A file without geometry (a NRRD without ``space
  directions``, a NIfTI with neither qform nor sform, a MetaImage without ``Offset``/``ElementSpacing``)
  is refused unless its shape is the CT's and the caller says it lies on the CT grid
  (``on_ct_grid``, the commands' ``--dose-on-ct-grid``).
- A dose on another grid is resampled linearly onto the CT grid, but only when its grid covers every
  structure measured on it (every non-empty structure of the case): else it is refused with what the
  dose covers and which structures it misses, since the missing part would be scored as zero dose.
"""

from __future__ import annotations

import argparse
from os import PathLike
from pathlib import Path

import numpy as np

from dosediffusion.case import Case, Structure
from dosediffusion.errors import GeometryError, InputError
from dosediffusion.geometry import Grid, resample
from dosediffusion.io.volume_sidecar import UNITS_KEY, read_volume

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: Dose units a volume file may name (metadata key ``DoseUnits``), as factors to Gy.
UNITS_TO_GY = {"gy": 1.0, "cgy": 0.01}
ON_CT_GRID_FLAG = "--dose-on-ct-grid"


def add_dose_on_ct_grid_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--dose-on-ct-grid`` option of every command that reads a dose file."""
    parser.add_argument(ON_CT_GRID_FLAG, action="store_true",
                        help="a dose file without geometry (no origin/spacing) lies voxel for voxel on the CT grid "
                             "(its shape must be the CT's)")


def read_dose_file(path: str | PathLike, case: Case, *, on_ct_grid: bool = False) -> np.ndarray:
    """The dose in ``path`` in Gy (float32, shape ``case.grid.shape``, (z, y, x)) on ``case``'s CT grid;
    see the module docstring for what is refused. ``on_ct_grid``: a file without geometry is taken
    voxel for voxel as on the CT grid."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such dose file", path)
    name = path.name.lower()
    if name.endswith(".csv"):
        from dosediffusion.io.openkbp import read_openkbp_dose_csv

        return read_openkbp_dose_csv(path, case)
    if name.endswith(".dcm") or not name.endswith(VOLUME_SUFFIXES):
        from dosediffusion.io.dicom_rtdose import read_rtdose_volume

        dose, grid, _ = read_rtdose_volume(path, case.meta.get("FrameOfReferenceUID"))
    else:
        dose, grid = _read_dose_volume(path, case, on_ct_grid)
    if grid.same_as(case.grid):
        return np.clip(dose, 0.0, None).astype(np.float32)
    check_coverage(grid, case, path)
    return np.clip(resample(dose.astype(np.float32), grid, case.grid), 0.0, None).astype(np.float32)


def _read_dose_volume(path: Path, case: Case, on_ct_grid: bool) -> tuple[np.ndarray, Grid]:
    """A volume file's dose in Gy and its grid (the CT's for a file without geometry taken ``on_ct_grid``)."""
    import SimpleITK as sitk

    dose, grid = read_volume(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    meta = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    unit = meta.get(UNITS_KEY, "Gy").strip()
    if unit.lower() not in UNITS_TO_GY:
        raise InputError(f"dose in units {unit!r}; give it in Gy (or cGy)", path)
    dose = dose.astype(np.float32) * np.float32(UNITS_TO_GY[unit.lower()])
    if has_geometry(path, meta):
        if on_ct_grid and not grid.same_as(case.grid):
            raise GeometryError(f"the file has its own geometry, not the CT's: leave out {ON_CT_GRID_FLAG}", path)
        return dose, grid
    if dose.shape != case.grid.shape:
        raise GeometryError(f"the dose has no geometry (no origin or spacing) and its shape {dose.shape} is not the "
                            f"CT's {case.grid.shape}: write it with its geometry", path)
    if not on_ct_grid:
        raise GeometryError(f"the dose has no geometry (no origin or spacing); if it lies voxel for voxel on the CT "
                            f"grid (its shape {dose.shape} is the CT's), say so with {ON_CT_GRID_FLAG}", path)
    return dose, case.grid


def _text_header(path: Path, end: bytes) -> str:
    """The text header of a NRRD (up to the blank line) or MetaImage (up to ElementDataFile)."""
    with path.open("rb") as handle:
        head = handle.read(65536)
    cut = head.find(end)
    return (head if cut < 0 else head[:cut]).decode("latin-1")


def has_geometry(path: Path, meta: dict[str, str]) -> bool:
    """Whether a volume file states where its voxels are (origin, spacing or directions in patient
    space); ``meta`` is SimpleITK's metadata of the file."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return meta.get("qform_code", "0") != "0" or meta.get("sform_code", "0") != "0"
    if name.endswith((".nrrd", ".nhdr")):
        fields = {line.split(":", 1)[0].strip().lower() for line in _text_header(path, b"\n\n").splitlines()}
        return "space directions" in fields or "space origin" in fields
    fields = {line.split("=", 1)[0].strip().lower() for line in _text_header(path, b"ElementDataFile").splitlines()}
    return bool(fields & {"offset", "position", "origin", "elementspacing", "transformmatrix"})


def _extent(grid: Grid) -> str:
    """The patient-space box (x, y, z mm) of a grid's voxel centres, in words."""
    corners = grid.index_to_physical(np.array([[0, 0, 0], np.array(grid.shape) - 1], dtype=float))
    low, high = corners.min(axis=0), corners.max(axis=0)
    return ", ".join(f"{axis} {a:.0f}..{b:.0f}" for axis, a, b in zip("xyz", low, high, strict=True)) + " mm"


def _outside(structure: Structure, case: Case, grid: Grid) -> bool:
    """Whether any voxel of ``structure`` (on the CT grid) lies outside ``grid`` (more than half a voxel
    beyond its border voxels' centres)."""
    if np.allclose(grid.matrix, case.grid.matrix, atol=1e-4):
        # the same axes: the structure's bounding box is covered exactly when the structure is
        index = np.argwhere(structure.mask)
        points = np.array([index.min(axis=0), index.max(axis=0)], dtype=float)
    else:
        points = np.argwhere(structure.mask).astype(float)
    inside = grid.physical_to_index(case.grid.index_to_physical(points))
    limit = np.array(grid.shape, dtype=float) - 0.5
    return bool(np.any(inside < -0.5 - 1e-3) or np.any(inside > limit + 1e-3))


def check_coverage(grid: Grid, case: Case, source: str | PathLike) -> None:
    """Refuse a dose on ``grid`` that does not cover every non-empty structure of ``case``."""
    missed = [s for s in case.structures.values() if s.mask.any() and _outside(s, case, grid)]
    if missed:
        names = ", ".join(sorted(s.name for s in missed))
        raise GeometryError(f"the dose covers {_extent(grid)} and misses part of {names} (the CT spans "
                            f"{_extent(case.grid)}): give a dose that covers them, or leave a structure out with "
                            f"--role NAME=ignore", source)
