"""GDP-HMM challenge ``.npz`` cases (AAPM 2025 Generalizable Dose Prediction challenge).

Layout, as the challenge's public ``DICOM2NPZ.py`` writes it and its ``data_loader.py`` reads it:
``np.savez_compressed(path, d)`` of one dict ``d`` (so the file's single member ``arr_0`` is a
pickled 0-d object array) with

- ``img``: CT in HU, (z, y, x); ``dose``: dose grid values, Gy = ``dose * dose_scale``;
- one uint8 mask per structure, keyed by its RTSTRUCT name (``Body``, ``PTV70OPT``, OAR names of
  ``data_loader.OAR_LIST``...), ``all_mask``: the list of those names;
- ``isocenter``: the plan isocenter in voxel indices (z, y, x); ``isVMAT``; ``angle_list``: gantry
  angles (degrees, unordered; the control points of the first arc for VMAT);
- ``origin``, ``spacing``, ``direction``, ``size``: SimpleITK geometry (x, y, z order);
  the released data is at 2.5 × 2.5 × 2.0 mm (x, y, z);
- ``beam_plate`` (3-D) and ``angle_plate`` (2-D axial) in the released files.

Prescriptions are not in the file: the challenge keeps them in ``PTV_DICT.json`` (patient id →
``PTV_High``/``PTV_Mid``/``PTV_Low`` → ``{"PDose", "OPTName", "StructName"}``); pass that entry as
``ptv_dict``, else doses are read from the PTV names. The file is read with the restricted
unpickler of :mod:`dosediffusion.io.safe_pickle`; never with ``allow_pickle=True``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.atomic import atomic_write_bytes
from dosediffusion.io.safe_pickle import load_npz
from dosediffusion.roles import RoleChoice, assign_roles, case_prescription

DEFAULT_SPACING_MM = (2.5, 2.5, 2.0)  # (x, y, z) of the released challenge data
_NOT_MASKS = {"img", "dose", "beam_plate", "angle_plate"}


def read_gdp_hmm_arrays(path: str | PathLike) -> dict:
    """The raw dict stored in a GDP-HMM npz (arrays and plain values), loaded safely."""
    members = load_npz(path)
    if "arr_0" not in members:
        raise InputError("not a GDP-HMM case: the npz has no 'arr_0' member", path)
    value = members["arr_0"]
    data = value.item() if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0 else None
    if not isinstance(data, dict) or "img" not in data:
        raise InputError("not a GDP-HMM case: 'arr_0' is not a dict with an 'img' CT array", path)
    return data


def _grid(data: dict, shape: tuple, spacing_mm, warnings: list[str]) -> Grid:
    spacing = spacing_mm or data.get("spacing")
    if spacing is None:
        spacing = DEFAULT_SPACING_MM
        warnings.append(f"the file gives no voxel spacing: assumed the challenge's {DEFAULT_SPACING_MM} mm (x, y, z)")
    origin = data.get("origin", (0.0, 0.0, 0.0))
    direction = data.get("direction", (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return Grid(shape, spacing, origin, direction)


def _beams(data: dict, grid: Grid, warnings: list[str]) -> list[Beam]:
    if "angle_list" not in data or "isocenter" not in data:
        return []
    iso = tuple(grid.index_to_physical(np.asarray(data["isocenter"], dtype=float)))
    angles = sorted(float(a) for a in np.ravel(data["angle_list"]))
    warnings.append("beams from the file's gantry angles: collimator and couch angles are not stored, taken as 0°")
    if bool(data.get("isVMAT", False)):
        warnings.append("VMAT arc from the file's unordered control-point angles: arc direction not stored, taken as CW")
        return [Beam("Arc1", angles[0], 0.0, 0.0, iso, tuple(angles), arc_direction="CW")]
    return [Beam(f"Beam{i + 1}", a, 0.0, 0.0, iso) for i, a in enumerate(angles)]


def read_gdp_hmm_case(
    path: str | PathLike, *, ptv_dict: dict | None = None, spacing_mm: tuple[float, float, float] | None = None,
    aliases: AliasTable | None = None, roles: Mapping[str, RoleChoice] | None = None,
) -> Case:
    """A :class:`Case` from a GDP-HMM npz.

    Args:
        ptv_dict: the file's entry of the challenge's ``PTV_DICT.json`` (``PTV_High`` etc. with
            ``PDose`` in Gy and ``OPTName``/``StructName``), giving the PTV prescriptions.
        spacing_mm: (x, y, z) voxel size when the file has none (default: the challenge's).
        aliases, roles: see :func:`~dosediffusion.roles.assign_roles`.
    """
    path = Path(path)
    data = read_gdp_hmm_arrays(path)
    ct = np.asarray(data["img"])
    if ct.ndim != 3:
        raise InputError(f"'img' must be a 3-D CT, got shape {ct.shape}", path)
    warnings: list[str] = []
    grid = _grid(data, ct.shape, spacing_mm, warnings)
    dose = None
    if "dose" in data:
        dose = np.asarray(data["dose"], dtype=np.float32) * float(data.get("dose_scale", 1.0))
    structures = {}
    for name, value in data.items():
        if name in _NOT_MASKS or not isinstance(value, np.ndarray) or value.shape != ct.shape:
            continue
        structures[name] = Structure(name, np.asarray(value) > 0)
    levels = []
    for level in (ptv_dict or {}).values():
        for key in ("OPTName", "StructName"):
            if level.get(key) in structures:
                structures[level[key]].role = "ptv"
                structures[level[key]].prescription_gy = float(level["PDose"])
        levels.append(float(level["PDose"]))
    warnings += assign_roles(structures, levels, aliases, roles)
    empty = sorted(n for n, s in structures.items() if not s.mask.any())
    if empty:
        warnings.append(f"empty structures: {', '.join(empty)}")
    return Case(
        case_id=path.name.removesuffix(".npz"),
        grid=grid,
        ct=ct.astype(np.float32),
        structures=structures,
        beams=_beams(data, grid, warnings),
        prescription=case_prescription(Prescription(levels), structures),
        dose=dose,
        warnings=warnings,
    )


def write_gdp_hmm_npz(
    case: Case, path: str | PathLike, beam_plate: np.ndarray | None = None, angle_plate: np.ndarray | None = None
) -> Path:
    """Write ``case`` in the challenge's npz layout (for compatibility with its tools only: the
    layout is a pickle, which our reader loads safely but other readers may not)."""
    grid = case.grid
    data: dict = {name: s.mask.astype(np.uint8) for name, s in case.structures.items()}
    data["all_mask"] = list(case.structures)
    data["img"] = np.asarray(case.ct)
    if case.dose is not None:
        data["dose"] = np.asarray(case.dose, dtype=np.float32)
        data["dose_scale"] = 1.0
    if case.beams:
        data["isocenter"] = grid.physical_to_index(np.asarray(case.beams[0].isocenter_mm)).astype(np.float32)
        data["isVMAT"] = any(b.is_arc for b in case.beams)
        angles = [a for b in case.beams for a in b.control_point_gantry_deg]
        data["angle_list"] = np.array(sorted(set(angles)), dtype=np.float32)
    data.update(origin=grid.origin, spacing=grid.spacing, direction=grid.direction, size=grid.size_xyz)
    if beam_plate is not None:
        data["beam_plate"] = np.asarray(beam_plate)
    if angle_plate is not None:
        data["angle_plate"] = np.asarray(angle_plate)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, data)
    return atomic_write_bytes(path, buffer.getvalue())
