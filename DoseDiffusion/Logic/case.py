"""The Case: one patient's arrays on one CT grid, with structures, beams and prescription.

This is the single in-memory contract between readers, conditioning, the model, metrics and
writers (see DESIGN.md). Every array is ``(z, y, x)`` on :attr:`Case.grid`; CT is in HU, dose in
Gy (total over all fractions), masks are boolean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dosediffusion.errors import GeometryError, InputError
from dosediffusion.geometry import Grid, resample

Role = Literal["ptv", "oar", "body", "other"]
ROLES: tuple[str, ...] = ("ptv", "oar", "body", "other")
#: The structure that marks the voxels where a dose can be non-zero (the OpenKBP challenge's
#: ``possible_dose_mask``; role ``other``): the dose's support, over which the challenge scores.
DOSE_SUPPORT = "possible_dose_mask"


@dataclass
class Structure:
    """A named region of interest.

    Attributes:
        name: the name as the source gives it (e.g. the RTSTRUCT ROIName).
        mask: boolean array on the case grid, shape ``(z, y, x)``.
        role: ``ptv``, ``oar``, ``body`` or ``other``.
        prescription_gy: for a PTV, its prescribed dose in Gy (total); else None.
        contours: optional closed polygons, each an ``(N, 3)`` array of patient points (x, y, z)
            in mm on one axial plane, as the source drew them (kept for sub-voxel DVH work).
        canonical: the alias table's standard name (TG-263 style) when the name matched one.
    """

    name: str
    mask: np.ndarray
    role: Role = "other"
    prescription_gy: float | None = None
    contours: list[np.ndarray] | None = None
    canonical: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise InputError(f"structure {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        self.mask = np.asarray(self.mask, dtype=bool)

    def volume_cc(self, grid: Grid) -> float:
        """Voxel-count volume of the mask in cc."""
        return float(np.count_nonzero(self.mask)) * grid.voxel_volume_cc


@dataclass
class Beam:
    """One treatment beam (a static field, or an arc sampled by its control points).

    Angles follow IEC 61217 as DICOM RTPLAN stores them: degrees, gantry 0° with the source above a
    head-first-supine patient. ``isocenter_mm`` is in patient coordinates (x, y, z) mm, the CT's
    frame of reference.

    Attributes:
        gantry_deg: gantry angle of the first control point (the start angle for an arc).
        control_point_gantry_deg: gantry angle of every control point (one value for a static beam).
        arc_direction: ``"CW"`` or ``"CC"`` for arcs, None for static beams.
        meterset_weight: the beam's monitor units (or relative weight) where the plan gives them.
        sad_mm: source-to-axis distance in mm.
    """

    name: str
    gantry_deg: float
    collimator_deg: float
    couch_deg: float
    isocenter_mm: tuple[float, float, float]
    control_point_gantry_deg: tuple[float, ...] = ()
    arc_direction: str | None = None
    meterset_weight: float | None = None
    sad_mm: float = 1000.0
    radiation_type: str = "PHOTON"

    def __post_init__(self):
        self.isocenter_mm = tuple(float(v) for v in self.isocenter_mm)
        if not self.control_point_gantry_deg:
            self.control_point_gantry_deg = (float(self.gantry_deg),)
        self.control_point_gantry_deg = tuple(float(v) for v in self.control_point_gantry_deg)

    @property
    def is_arc(self) -> bool:
        return self.arc_direction is not None

    @property
    def arc_stop_deg(self) -> float | None:
        """Gantry angle of the last control point of an arc, None for static beams."""
        return self.control_point_gantry_deg[-1] if self.is_arc else None


@dataclass
class Prescription:
    """Prescribed dose levels in Gy (total), distinct and highest first, and the number of fractions."""

    levels_gy: list[float] = field(default_factory=list)
    fractions: int | None = None

    def __post_init__(self):
        self.levels_gy = sorted({float(v) for v in self.levels_gy}, reverse=True)
        if any(v <= 0 for v in self.levels_gy):
            raise InputError(f"prescription levels must be positive Gy, got {self.levels_gy}")
        if self.fractions is not None and int(self.fractions) < 1:
            raise InputError(f"number of fractions must be at least 1, got {self.fractions}")

    @property
    def high_gy(self) -> float | None:
        return self.levels_gy[0] if self.levels_gy else None


@dataclass
class Case:
    """One patient on one CT grid.

    Attributes:
        case_id: a label for messages and file names (patient id or folder name).
        grid: the CT grid.
        ct: CT in HU, shape ``grid.shape``.
        structures: name → :class:`Structure`, masks on ``grid``.
        beams: the plan's beams (empty when there is no plan).
        prescription: PTV dose levels and fractions.
        dose: the case's own (reference) dose in Gy on ``grid``, or None.
        meta: identifiers from the source (DICOM UIDs, patient id/name, PatientPosition) used by writers.
        warnings: things a user should know about the input, one line each.
    """

    case_id: str
    grid: Grid
    ct: np.ndarray
    structures: dict[str, Structure] = field(default_factory=dict)
    beams: list[Beam] = field(default_factory=list)
    prescription: Prescription = field(default_factory=Prescription)
    dose: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._check("CT", self.ct)
        if self.dose is not None:
            self._check("dose", self.dose)
        for structure in self.structures.values():
            self._check(f"structure {structure.name!r}", structure.mask)

    def _check(self, what: str, array: np.ndarray) -> None:
        if np.shape(array) != self.grid.shape:
            raise GeometryError(f"{what} has shape {np.shape(array)}, the case grid is {self.grid.shape}", self.case_id)

    def with_role(self, role: Role) -> list[Structure]:
        """Structures of one role; PTVs sorted by prescription, highest first."""
        found = [s for s in self.structures.values() if s.role == role]
        if role == "ptv":
            found.sort(key=lambda s: -(s.prescription_gy or 0.0))
        return found

    @property
    def body(self) -> Structure | None:
        """The body (external) structure, if any."""
        bodies = self.with_role("body")
        return bodies[0] if bodies else None

    @property
    def patient_position(self) -> str:
        """The patient's position on the couch (DICOM PatientPosition: ``HFS``, ``HFP``, ``FFS``, ``FFP``, …),
        which the beams' gantry and couch angles refer to; ``HFS`` when the source states none."""
        return str(self.meta.get("PatientPosition") or "HFS").strip().upper()

    def dose_support(self) -> np.ndarray | None:
        """The voxels (z, y, x) where a dose can be non-zero: the :data:`DOSE_SUPPORT` structure when the
        source gives one, else the body's mask, else None."""
        if DOSE_SUPPORT in self.structures:
            return self.structures[DOSE_SUPPORT].mask
        return self.body.mask if self.body is not None else None

    def resampled(self, grid: Grid) -> Case:
        """This case on another grid: CT and dose linearly, masks as thresholded fractions."""
        structures = {
            name: Structure(s.name, resample(s.mask, self.grid, grid), s.role, s.prescription_gy, s.contours, s.canonical)
            for name, s in self.structures.items()
        }
        return Case(
            case_id=self.case_id,
            grid=grid,
            ct=resample(self.ct, self.grid, grid, default=-1000.0),
            structures=structures,
            beams=list(self.beams),
            prescription=self.prescription,
            dose=None if self.dose is None else resample(self.dose, self.grid, grid),
            meta=dict(self.meta),
            warnings=list(self.warnings),
        )
