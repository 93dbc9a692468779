"""Cases as NRRD/NIfTI volumes plus a JSON sidecar (``case.json``).

Sidecar layout (``"version": 1``; paths are relative to the JSON file and must stay in its folder)::

    {
      "format": "dosediffusion-case", "version": 1, "case_id": "patient-1",
      "ct": "ct.nrrd",                       # HU
      "dose": "dose.nrrd" | null,            # Gy, total
      "structures": {
        "PTV70":  {"file": "masks/PTV70.nrrd", "role": "ptv", "prescription_gy": 70},
        "Cord":   {"file": "labels.nrrd", "label": 3}           # one label map may hold several
      },
      "beams": [{"name": "B1", "gantry_deg": 0, "collimator_deg": 0, "couch_deg": 0,
                 "isocenter_mm": [x, y, z], "control_point_gantry_deg": [...],
                 "arc_direction": "CW" | "CC" | null, "meterset_weight": null, "sad_mm": 1000}],
      "prescription": {"levels_gy": [70, 56], "fractions": 35}
    }

Volumes are read with SimpleITK (``.nrrd``, ``.nhdr``, ``.nii``, ``.nii.gz``, ``.mha``); their
geometry is the file's, in LPS. Volumes not on the CT grid are resampled to it (dose linearly,
masks as fractions thresholded at 0.5) with a warning. Structures without a ``role`` are matched
through the alias table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid, resample
from dosediffusion.io.atomic import atomic_write
from dosediffusion.roles import RoleChoice, assign_roles, case_prescription

FORMAT = "dosediffusion-case"
VERSION = 1
_KEYS = {"format", "version", "case_id", "ct", "dose", "structures", "beams", "prescription"}
_BEAM_KEYS = {"name", "gantry_deg", "collimator_deg", "couch_deg", "isocenter_mm", "control_point_gantry_deg",
              "arc_direction", "meterset_weight", "sad_mm"}
_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: The metadata key naming a dose volume's unit (``Gy``), as DICOM names the RTDOSE attribute.
UNITS_KEY = "DoseUnits"
_WRITERS = {".nrrd": "NrrdImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".mha": "MetaImageIO"}


def read_volume(path: str | PathLike) -> tuple[np.ndarray, Grid]:
    """A 3-D volume file → (array (z, y, x), its Grid)."""
    import SimpleITK as sitk  # here, not above: the case files and training need no SimpleITK

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read volume ({str(error).strip().splitlines()[-1]})", path) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"expected a 3-D scalar volume, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components", path)
    return sitk.GetArrayFromImage(image), Grid.from_image(image)


def write_volume(array: np.ndarray, grid: Grid, path: str | PathLike, units: str | None = None) -> Path:
    """Write ``array`` on ``grid`` to ``path`` (format from the suffix, compressed), atomically; ``units``
    (a dose's ``Gy``) goes into the file's ``DoseUnits`` key (NRRD, MetaImage; NIfTI has no such field)."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    if suffix not in _WRITERS:
        raise InputError(f"cannot write volumes as {suffix!r}: use one of {', '.join(_WRITERS)}", path)
    import SimpleITK as sitk

    image = grid.to_image(array)
    if units is not None:
        image.SetMetaData(UNITS_KEY, units)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True, imageIO=_WRITERS[suffix]))



def _inside(folder: Path, relative: object, sidecar: Path) -> Path:
    if not isinstance(relative, str) or not relative:
        raise InputError(f"volume path must be a non-empty string, got {relative!r}", sidecar)
    candidate = Path(relative)
    resolved = (folder / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(folder.resolve()):
        raise InputError(f"volume path {relative!r} leaves the sidecar's folder", sidecar)
    if not resolved.name.lower().endswith(_SUFFIXES):
        raise InputError(f"volume {relative!r} is not NRRD, NIfTI or MetaImage", sidecar)
    if not resolved.is_file():
        raise InputError(f"volume {relative!r} does not exist", sidecar)
    return resolved


def _on_grid(array, grid: Grid, ct_grid: Grid, what: str, warnings: list[str]) -> np.ndarray:
    if grid.same_as(ct_grid):
        return array
    warnings.append(f"{what} is not on the CT grid: resampled to it")
    return resample(array, grid, ct_grid)


def _beam(entry: dict, index: int, sidecar: Path) -> Beam:
    if not isinstance(entry, dict):
        raise InputError(f"beams[{index}] must be an object", sidecar)
    missing = {"gantry_deg", "isocenter_mm"} - set(entry)
    if missing:
        raise InputError(f"beams[{index}] lacks {', '.join(sorted(missing))}", sidecar)
    unknown = set(entry) - _BEAM_KEYS
    if unknown:
        raise InputError(f"beams[{index}] has unknown keys {', '.join(sorted(unknown))}", sidecar)
    try:
        return Beam(
            name=str(entry.get("name", f"Beam{index + 1}")),
            gantry_deg=float(entry["gantry_deg"]),
            collimator_deg=float(entry.get("collimator_deg", 0.0)),
            couch_deg=float(entry.get("couch_deg", 0.0)),
            isocenter_mm=tuple(float(v) for v in entry["isocenter_mm"]),
            control_point_gantry_deg=tuple(entry.get("control_point_gantry_deg") or ()),
            arc_direction=entry.get("arc_direction"),
            meterset_weight=entry.get("meterset_weight"),
            sad_mm=float(entry.get("sad_mm", 1000.0)),
        )
    except (TypeError, ValueError) as error:
        raise InputError(f"beams[{index}] has a bad value ({error})", sidecar) from None


def read_sidecar_case(json_path: str | PathLike, *, aliases: AliasTable | None = None,
                      roles: Mapping[str, RoleChoice] | None = None) -> Case:
    """A :class:`Case` from a ``case.json`` sidecar and its volumes (``aliases``, ``roles``: see
    :func:`~dosediffusion.roles.assign_roles`)."""
    sidecar = Path(json_path)
    folder = sidecar.parent
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the case sidecar ({error})", sidecar) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"not a DoseDiffusion case sidecar: 'format' must be {FORMAT!r}", sidecar)
    if doc.get("version") != VERSION:
        raise InputError(f"unsupported sidecar version {doc.get('version')!r} (this reader knows {VERSION})", sidecar)
    if "ct" not in doc:
        raise InputError("the sidecar lacks the required key 'ct'", sidecar)
    warnings = [f"unknown sidecar keys ignored: {', '.join(sorted(set(doc) - _KEYS))}"] if set(doc) - _KEYS else []

    ct, grid = read_volume(_inside(folder, doc["ct"], sidecar))
    dose = None
    if doc.get("dose"):
        dose_array, dose_grid = read_volume(_inside(folder, doc["dose"], sidecar))
        dose = _on_grid(dose_array.astype(np.float32), dose_grid, grid, "dose", warnings)

    structures: dict[str, Structure] = {}
    cache: dict[Path, tuple[np.ndarray, Grid]] = {}
    for name, entry in (doc.get("structures") or {}).items():
        if not isinstance(entry, dict) or "file" not in entry:
            raise InputError(f"structure {name!r} needs an object with a 'file'", sidecar)
        path = _inside(folder, entry["file"], sidecar)
        if path not in cache:
            cache[path] = read_volume(path)
        labels, mask_grid = cache[path]
        mask = labels == entry["label"] if "label" in entry else labels > 0
        mask = _on_grid(mask, mask_grid, grid, f"structure {name!r}", warnings)
        if not mask.any():
            warnings.append(f"structure {name!r} is empty")
        structures[name] = Structure(name, mask, entry.get("role", "other"), entry.get("prescription_gy"))

    rx = doc.get("prescription") or {}
    prescription = Prescription(rx.get("levels_gy", []), rx.get("fractions"))
    warnings += assign_roles(structures, prescription.levels_gy, aliases, roles)
    prescription = case_prescription(prescription, structures)
    beams = [_beam(entry, i, sidecar) for i, entry in enumerate(doc.get("beams") or [])]
    return Case(
        case_id=str(doc.get("case_id") or folder.name),
        grid=grid,
        ct=ct.astype(np.float32),
        structures=structures,
        beams=beams,
        prescription=prescription,
        dose=dose,
        warnings=warnings,
    )


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "structure"


def write_sidecar_case(case: Case, folder: str | PathLike, suffix: str = ".nrrd") -> Path:
    """Write ``case`` as volumes + ``case.json`` in ``folder``; returns the JSON path.

    Volumes are written first and the JSON last, each atomically, so a reader never finds a
    sidecar that names missing volumes.
    """
    folder = Path(folder)
    structures = {}
    used: set[str] = set()
    for name, s in case.structures.items():
        stem = _safe_name(name)
        while stem.lower() in used:
            stem += "_"
        used.add(stem.lower())
        relative = f"masks/{stem}{suffix}"
        write_volume(s.mask.astype(np.uint8), case.grid, folder / relative)
        structures[name] = {"file": relative, "role": s.role, "prescription_gy": s.prescription_gy}
    write_volume(np.asarray(case.ct, dtype=np.int16 if np.all(np.mod(case.ct, 1) == 0) else np.float32),
                 case.grid, folder / f"ct{suffix}")
    if case.dose is not None:
        write_volume(np.asarray(case.dose, dtype=np.float32), case.grid, folder / f"dose{suffix}", units="Gy")
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "case_id": case.case_id,
        "ct": f"ct{suffix}",
        "dose": f"dose{suffix}" if case.dose is not None else None,
        "structures": structures,
        "beams": [
            {
                "name": b.name, "gantry_deg": b.gantry_deg, "collimator_deg": b.collimator_deg,
                "couch_deg": b.couch_deg, "isocenter_mm": list(b.isocenter_mm),
                "control_point_gantry_deg": list(b.control_point_gantry_deg), "arc_direction": b.arc_direction,
                "meterset_weight": b.meterset_weight, "sad_mm": b.sad_mm,
            }
            for b in case.beams
        ],
        "prescription": {"levels_gy": case.prescription.levels_gy, "fractions": case.prescription.fractions},
    }
    path = folder / "case.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=2)))
    return path
