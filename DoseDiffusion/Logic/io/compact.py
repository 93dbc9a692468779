"""The project's compact case format (``NAME.case.npz``, what ``dosediffusion-train synth`` and the
training caches write): one case in one compressed ``.npz`` of plain arrays (no pickle).

Arrays: ``ct`` int16 HU (clipped to [−1024, 3071]); ``dose`` float32 Gy (absent without a dose);
``masks`` the structures' (n, z, y, x) masks bit-packed along x (``numpy.packbits``); ``meta`` a
JSON string with the format name and version, the case id, the grid (shape z, y, x; spacing,
origin x, y, z in mm; direction), each structure's name, role and prescription (Gy), the beams,
the prescription, the source identifiers and warnings. Contours are not kept: the masks are the
truth here. About 0.2 MB for a 5 mm thorax phantom.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from os import PathLike
from pathlib import Path

import numpy as np

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.atomic import atomic_write
from dosediffusion.roles import RoleChoice, assign_roles

FORMAT, VERSION = "dosediffusion-compact", 1
SUFFIX = ".case.npz"


def write_compact(case: Case, path: str | PathLike) -> Path:
    """Write ``case`` to ``path`` (atomically)."""
    names = list(case.structures)
    masks = np.stack([case.structures[n].mask for n in names]) if names else np.zeros((0, *case.grid.shape), bool)
    meta = {
        "format": FORMAT, "version": VERSION, "case_id": case.case_id,
        "grid": {"shape": list(case.grid.shape), "spacing": list(case.grid.spacing), "origin": list(case.grid.origin),
                 "direction": list(case.grid.direction)},
        "structures": [{"name": n, "role": case.structures[n].role, "prescription_gy": case.structures[n].prescription_gy}
                       for n in names],
        "beams": [asdict(b) for b in case.beams],
        "prescription": {"levels_gy": case.prescription.levels_gy, "fractions": case.prescription.fractions},
        "meta": case.meta, "warnings": case.warnings,
    }
    arrays = {"ct": np.clip(np.round(case.ct), -1024, 3071).astype(np.int16),
              "masks": np.packbits(masks, axis=-1), "meta": np.array(json.dumps(meta))}
    if case.dose is not None:
        arrays["dose"] = np.asarray(case.dose, dtype=np.float32)
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def read_compact(path: str | PathLike, *, aliases: AliasTable | None = None,
                 roles: Mapping[str, RoleChoice] | None = None) -> Case:
    """Read a case written by :func:`write_compact`: its structures keep the roles it was written with,
    unless the user's ``roles`` say otherwise (:func:`~dosediffusion.roles.assign_roles` with ``aliases``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise InputError(f"not a readable compact case ({error})", path) from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"format {meta.get('format')!r} version {meta.get('version')!r}; expected {FORMAT} {VERSION}", path)
    g = meta["grid"]
    grid = Grid(tuple(g["shape"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    masks = np.unpackbits(arrays["masks"], axis=-1, count=grid.shape[2]).astype(bool)
    if masks.shape[1:] != grid.shape or len(masks) != len(meta["structures"]) or arrays["ct"].shape != grid.shape:
        raise InputError(f"arrays do not match the grid {grid.shape}", path)
    structures = {s["name"]: Structure(s["name"], masks[i], s["role"], s["prescription_gy"])
                  for i, s in enumerate(meta["structures"])}
    beams = [Beam(**{**b, "isocenter_mm": tuple(b["isocenter_mm"]),
                     "control_point_gantry_deg": tuple(b["control_point_gantry_deg"])}) for b in meta["beams"]]
    rx = meta["prescription"]
    warnings = list(meta["warnings"])
    if roles:
        warnings += assign_roles(structures, rx["levels_gy"], aliases, roles)
    return Case(meta["case_id"], grid, arrays["ct"].astype(np.float32), structures, beams,
                Prescription(rx["levels_gy"], rx["fractions"]), arrays.get("dose"), meta["meta"], warnings)
