"""OpenKBP Grand Challenge patients (AAPM 2020; Babier et al., Med Phys 48(9), 2021).

Two forms of one patient, read into the same :class:`~dosediffusion.case.Case`:

- the challenge's own folder ``pt_N/``: sparse CSV files ``ct.csv``, ``dose.csv`` (header ``,data``, rows
  ``index,value``), mask files ``possible_dose_mask.csv``, ``PTV70.csv``, ``Brainstem.csv``, … (rows
  ``index,``) and ``voxel_dimensions.csv`` (three numbers, mm);
- a compact ``pt_N.npz`` of the same content (``<file>.index_steps``: the differences of the indices,
  ``ct.values``, ``dose.values_cgy``, ``voxel_dimensions``).

Every index is one voxel of a 128 × 128 × 128 array ``A``, C order. The data description names neither
the patient orientation of its axes nor the isocentre; measured on the anatomy (and proved by
``Testing/python/test_openkbp_orientation.py`` on the shared patients): ``A``'s first axis runs
anterior → posterior (LPS +y; the spinal cord lies behind the mandible), its second right → left (LPS +x;
the left parotid has the higher index) and its third, the slice axis, head → feet (LPS −z; the
brainstem lies above the larynx). The case's arrays are ``A`` turned into the project's (z, y, x) order
with z increasing towards the head (:func:`to_case_order`), on an identity-direction grid centred on
the patient origin (0, 0, 0). The dose was planned for a supine patient (HFS) with nine coplanar 6 MV
fields at gantry 0°, 40°, …, 320°; gantry 0° on the anatomy's anterior side explains the reference dose
better than its opposite (tested). The isocentre is taken as the centroid of all PTVs (moving it to
PTV70's centroid changes nothing measurable in a ray-traced dose).

- CT: the file's values are HU + 1000 (air 0, fat about 900, muscle about 1,040), a mix of 12- and
  16-bit sources that the description says to clip to [0, 4095]: HU = clip(value, 0, 4095) − 1000,
  so −1000 (air) to 3095 HU; a voxel the sparse file leaves out is air.
- Dose: Gy, total over 35 fractions; the case's reference dose (``None`` when the folder has no
  ``dose.csv``, as for a patient whose dose is to be predicted).
- Structures: PTV70, PTV63, PTV56 as targets with 70, 63, 56 Gy in 35 fractions; the seven OARs named
  as the alias table's TG-263 names (``RightParotid`` → ``Parotid_R``); a body from the CT (:func:`~dosediffusion.prediction.body.body_from_ct`);
  ``possible_dose_mask`` kept as the structure :data:`~dosediffusion.case.DOSE_SUPPORT` (the voxels that
  can receive dose, over which the challenge scores).

:func:`write_openkbp_dose_csv` writes a predicted dose in the challenge's submission format.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np

from dosediffusion.aliases import AliasTable, default_table
from dosediffusion.case import DOSE_SUPPORT, Beam, Case, Prescription, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.atomic import atomic_write_bytes
from dosediffusion.roles import RoleChoice, assign_roles

#: The challenge's array shape (every patient).
SHAPE = (128, 128, 128)
#: HU = clip(value, 0, CT_MAX_VALUE) − CT_OFFSET.
CT_OFFSET = 1000.0
CT_MAX_VALUE = 4095.0
#: The targets and their prescriptions (Gy, total) in :data:`FRACTIONS` fractions.
TARGETS_GY = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}
FRACTIONS = 35
OARS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
#: The nine coplanar fields of every plan (degrees, IEC 61217).
GANTRY_DEG = tuple(float(a) for a in range(0, 360, 40))
PATIENT_POSITION = "HFS"
BODY = "Body"
#: ``Case.meta["SourceFormat"]`` of a case read here (:func:`is_openkbp_case`).
SOURCE_FORMAT = "openkbp"
_MASKS = (DOSE_SUPPORT, *TARGETS_GY, *OARS)
_REQUIRED = ("ct", "voxel_dimensions", DOSE_SUPPORT)


def is_openkbp_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of the challenge's CSV files (it has any of the required ones)."""
    return path.is_dir() and any((path / f"{name}.csv").is_file() for name in _REQUIRED)


def is_openkbp_npz(path: Path) -> bool:
    """Whether ``path`` is a compact OpenKBP ``.npz`` (by its member names; nothing is unpickled)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return "voxel_dimensions.npy" in names or "ct.index_steps.npy" in names


def to_case_order(array: np.ndarray) -> np.ndarray:
    """An OpenKBP array ``A`` (A→P, R→L, head→feet) in the case's (z, y, x) order, z towards the head."""
    return np.ascontiguousarray(np.asarray(array)[:, :, ::-1].transpose(2, 0, 1))


def from_case_order(array: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_case_order`: a case array as the challenge's ``A``."""
    return np.ascontiguousarray(np.asarray(array).transpose(1, 2, 0)[:, :, ::-1])


def _check_indices(indices: np.ndarray, source: Path) -> np.ndarray:
    size = int(np.prod(SHAPE))
    bad = np.flatnonzero((indices < 0) | (indices >= size))
    if bad.size:
        raise InputError(f"index {int(indices[bad[0]])} (row {int(bad[0]) + 1}) is outside the 128 × 128 × 128 grid "
                         f"(0 to {size - 1}): is this file from another data set?", source)
    return indices


def _numbers(fields: list[str], kind: type, source: Path, what: str) -> np.ndarray:
    try:
        return np.array(fields, dtype=kind)
    except ValueError:
        for row, field in enumerate(fields, start=2):
            try:
                kind(field)
            except ValueError:
                raise InputError(f"row {row}: {what} {field!r} is not a number", source) from None
        raise


def read_sparse_csv(path: Path, with_values: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The indices (int64) and, ``with_values``, the values (float64) of one of the challenge's CSV files."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the file: {error}", path) from None
    if not lines or lines[0].replace(" ", "") != ",data":
        raise InputError("not an OpenKBP sparse file: the first line must be ',data'", path)
    pairs = [line.split(",") for line in lines[1:]]
    if any(len(p) != 2 for p in pairs):
        row = next(i for i, p in enumerate(pairs, start=2) if len(p) != 2)
        raise InputError(f"row {row}: expected 'index,value', got {lines[row - 1]!r}", path)
    indices = _check_indices(_numbers([p[0] for p in pairs], np.int64, path, "index"), path)
    if not with_values:
        return indices, None
    values = _numbers([p[1] or "nan" for p in pairs], np.float64, path, "value")
    if not np.all(np.isfinite(values)):
        row = int(np.flatnonzero(~np.isfinite(values))[0]) + 2
        raise InputError(f"row {row}: the value {pairs[row - 2][1]!r} is not a finite number", path)
    return indices, values


def _voxel_dimensions(values: np.ndarray, source: Path) -> tuple[float, float, float]:
    values = np.ravel(np.asarray(values, dtype=float))
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"voxel_dimensions must be three positive sizes in mm, got {values.tolist()}", source)
    return float(values[0]), float(values[1]), float(values[2])


def _read_folder(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], tuple]:
    for name in _REQUIRED:
        if not (folder / f"{name}.csv").is_file():
            raise InputError(f"the OpenKBP patient folder has no {name}.csv", folder)
    try:
        dims = np.loadtxt(folder / "voxel_dimensions.csv", dtype=float, ndmin=1)
    except ValueError as error:
        raise InputError(f"voxel_dimensions must be three numbers, one a line ({error})", folder / "voxel_dimensions.csv") from None
    files = {"ct": read_sparse_csv(folder / "ct.csv", True)}
    if (folder / "dose.csv").is_file():
        files["dose"] = read_sparse_csv(folder / "dose.csv", True)
    for name in _MASKS:
        if (folder / f"{name}.csv").is_file():
            files[name] = read_sparse_csv(folder / f"{name}.csv", False)
    return files, _voxel_dimensions(dims, folder / "voxel_dimensions.csv")


def _read_npz(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], tuple]:
    try:
        data = np.load(path, allow_pickle=False)
        members = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the compact OpenKBP file: {error}", path) from None
    for key in ("voxel_dimensions", "ct.index_steps", "ct.values", f"{DOSE_SUPPORT}.index_steps"):
        if key not in members:
            raise InputError(f"the compact OpenKBP file has no {key!r}", path)
    files: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, value_key, scale in (("ct", "ct.values", 1.0), ("dose", "dose.values_cgy", 0.01)):
        if f"{name}.index_steps" not in members:
            continue
        indices = _check_indices(np.cumsum(members[f"{name}.index_steps"].astype(np.int64)), path)
        values = members.get(value_key)
        if values is None or values.shape != indices.shape:
            raise InputError(f"{value_key!r} must give one value per index of {name!r}", path)
        files[name] = (indices, values.astype(np.float64) * scale)
    for name in _MASKS:
        if f"{name}.index_steps" in members:
            files[name] = (_check_indices(np.cumsum(members[f"{name}.index_steps"].astype(np.int64)), path), None)
    return files, _voxel_dimensions(members["voxel_dimensions"], path)


def _volume(indices: np.ndarray, values: np.ndarray | float, fill: float, dtype) -> np.ndarray:
    flat = np.full(int(np.prod(SHAPE)), fill, dtype=dtype)
    flat[indices] = values
    return to_case_order(flat.reshape(SHAPE))


def openkbp_grid(voxel_dimensions_mm: tuple[float, float, float]) -> Grid:
    """The case grid of an OpenKBP patient: identity direction, centred on (0, 0, 0); the challenge's
    voxel dimensions are in ``A``'s axis order (A→P, R→L, slice), the grid's spacing in (x, y, z)."""
    spacing = (voxel_dimensions_mm[1], voxel_dimensions_mm[0], voxel_dimensions_mm[2])
    size_xyz = (SHAPE[1], SHAPE[0], SHAPE[2])
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(size_xyz, spacing, strict=True))
    return Grid((SHAPE[2], SHAPE[0], SHAPE[1]), spacing, origin)


def _beams(structures: dict[str, Structure], grid: Grid) -> list[Beam]:
    targets = np.zeros(grid.shape, bool)
    for name in TARGETS_GY:
        if name in structures:
            targets |= structures[name].mask
    if not targets.any():
        return []
    isocenter = tuple(grid.index_to_physical(np.argwhere(targets).mean(axis=0)))
    return [Beam(f"Field{i + 1}", gantry, 0.0, 0.0, isocenter) for i, gantry in enumerate(GANTRY_DEG)]


def read_openkbp_case(path: str | PathLike, *, aliases: AliasTable | None = None,
                      roles: Mapping[str, RoleChoice] | None = None) -> Case:
    """A :class:`Case` from an OpenKBP patient folder or compact ``.npz`` (see the module docstring)."""
    from dosediffusion.prediction.body import body_from_ct

    path = Path(path)
    files, voxel_dimensions = (_read_npz if path.is_file() else _read_folder)(path)
    warnings: list[str] = []
    grid = openkbp_grid(voxel_dimensions)
    ct_indices, ct_values = files["ct"]
    ct = _volume(ct_indices, np.clip(ct_values, 0.0, CT_MAX_VALUE) - CT_OFFSET, -CT_OFFSET, np.float32)
    dose = _volume(*files["dose"], 0.0, np.float32) if "dose" in files else None
    if dose is None:
        warnings.append("no dose.csv: the patient has no reference dose")
    table = aliases or default_table()
    structures = {}
    for name in (n for n in _MASKS if n in files):
        named = table.match(name).canonical or name if name in OARS else name  # TG-263: RightParotid → Parotid_R
        structures[named] = Structure(named, _volume(files[name][0], True, False, bool))
    for name, gy in TARGETS_GY.items():
        if name in structures:
            structures[name].role, structures[name].prescription_gy = "ptv", gy
    body = body_from_ct(ct, grid.voxel_volume_cc)
    if body is not None:
        structures[BODY] = Structure(BODY, body)
    levels = [gy for name, gy in TARGETS_GY.items() if name in structures]
    warnings += assign_roles(structures, levels, aliases, roles)
    if body is None:
        warnings.append("no body found in the CT (no tissue region of 10 cc or more)")
    beams = _beams(structures, grid)
    if beams:
        warnings.append("OpenKBP stores no isocentre: the nine fields' isocentre is the centroid of the PTVs")
    case_id = path.name.removesuffix(".npz")
    return Case(case_id=case_id, grid=grid, ct=ct, structures=structures, beams=beams,
                prescription=Prescription(levels, FRACTIONS), dose=dose,
                meta={"PatientID": case_id, "PatientPosition": PATIENT_POSITION, "SourceFormat": SOURCE_FORMAT},
                warnings=warnings)


def is_openkbp_case(case: Case) -> bool:
    """Whether ``case`` was read from an OpenKBP patient (its predictions get a submission file)."""
    return case.meta.get("SourceFormat") == SOURCE_FORMAT


def write_openkbp_dose_csv(dose_gy: np.ndarray, case: Case, path: str | PathLike) -> Path:
    """``dose_gy`` (case order, Gy) in the challenge's submission format: header ``,data`` and one
    ``index,value`` row for each voxel of the dose support with a dose above zero (0 elsewhere), the
    indices of the input files, values to float32 precision (``%.7g``)."""
    support = case.dose_support()
    if support is None:
        raise InputError("the case has neither a possible-dose mask nor a body: no submission can be written", path)
    flat = from_case_order(np.where(support, np.asarray(dose_gy, dtype=np.float32), np.float32(0))).ravel()
    indices = np.flatnonzero(flat > 0)
    rows = "".join(f"{i},{v:.7g}\n" for i, v in zip(indices.tolist(), flat[indices].tolist(), strict=True))
    return atomic_write_bytes(path, (",data\n" + rows).encode())


def read_openkbp_dose_csv(path: str | PathLike, case: Case) -> np.ndarray:
    """A dose in the challenge's format (``dose.csv`` or a submission ``pt_N.csv``) on ``case``'s grid, Gy."""
    path = Path(path)
    if case.grid.shape != (SHAPE[2], SHAPE[0], SHAPE[1]):
        raise InputError(f"an OpenKBP dose file goes with an OpenKBP case (128³), this case's grid is {case.grid.shape}", path)
    indices, values = read_sparse_csv(path, True)
    return _volume(indices, values, 0.0, np.float32)
