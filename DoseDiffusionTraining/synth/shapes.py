"""What every synthetic site (:mod:`.phantom`) shares: the grid, solids, C-shaped targets, HU, beams, the Case.

Coordinates are DICOM LPS patient coordinates in mm for a head-first supine patient: x towards the
patient's left, y posterior, z superior; arrays are ``(z, y, x)``. Angles in the axial plane
(:func:`ring_sector`) are degrees from +x (patient left) towards +y (posterior). Centres and radii
may be numbers or arrays that broadcast over the grid (e.g. a per-slice ``(nz, 1, 1)`` column), so a
solid can follow a path along z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.geometry import Grid
from dosediffusion.io.mask_contours import mask_to_contours

#: Gap (mm) between a C-shaped target and the organ it wraps, drawn uniformly.
WRAP_GAP_MM = (0.0, 5.0)
#: Length (mm) along z of a C-shaped target, drawn uniformly (bounded by the organ's length).
WRAP_LENGTH_MM = (30.0, 70.0)
#: Opening of the C (degrees), drawn uniformly.
WRAP_MOUTH_DEG = (50.0, 110.0)
#: Thickness of the C as a multiple of its inner radius, drawn uniformly, and its least thickness (mm).
WRAP_THICKNESS = (0.8, 1.5)
WRAP_MIN_THICKNESS_MM = 10.0


@dataclass(frozen=True)
class Frame:
    """A phantom's grid (axis-aligned, centred on the origin) and the position of every voxel centre."""

    grid: Grid
    points: np.ndarray  # (z, y, x, 3): (x, y, z) mm of each voxel centre

    @property
    def x(self) -> np.ndarray:
        return self.points[..., 0]

    @property
    def y(self) -> np.ndarray:
        return self.points[..., 1]

    @property
    def z(self) -> np.ndarray:
        return self.points[..., 2]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (x, y, z) in mm."""
        return np.asarray(self.grid.spacing)

    @property
    def half_z(self) -> float:
        """Half the grid's length along z in mm (first to last voxel centre)."""
        return (self.grid.shape[0] - 1) * self.grid.spacing[2] / 2


def make_frame(spacing_mm: tuple[float, float, float], shape: tuple[int, int, int]) -> Frame:
    """The frame of a ``shape`` (z, y, x) grid of ``spacing_mm`` (x, y, z) centred on the origin."""
    spacing = np.asarray(spacing_mm, dtype=float)
    origin = -(np.asarray(shape[::-1]) - 1) * spacing / 2
    grid = Grid(shape, tuple(spacing), tuple(origin))
    return Frame(grid, grid.index_to_physical(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3))


def ellipsoid(points: np.ndarray, centre, radii) -> np.ndarray:
    """Voxels of ``points`` (…, 3) inside the axis-aligned ellipsoid (``centre``, ``radii`` in mm)."""
    return (((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0


def capsule(points: np.ndarray, start, end, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the segment ``start``–``end`` (x, y, z mm): a round-ended rod."""
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    axis = end - start
    t = np.clip(((points - start) @ axis) / max(float(axis @ axis), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - start - t[..., None] * axis, axis=-1) <= radius_mm


def elliptic_cylinder(frame: Frame, centre_xy, radii_xy, z_range=(-np.inf, np.inf)) -> np.ndarray:
    """An ellipse (centre, radii in mm) in every axial slice whose z lies in ``z_range`` (mm)."""
    (cx, cy), (rx, ry) = centre_xy, radii_xy
    inside = ((frame.x - cx) / rx) ** 2 + ((frame.y - cy) / ry) ** 2 <= 1.0
    return inside & (frame.z >= z_range[0]) & (frame.z <= z_range[1])


def ring_sector(frame: Frame, centre_xy, radii_xy, thickness_mm: float, mouth_deg: float, mouth_width_deg: float,
                z_range=(-np.inf, np.inf)) -> np.ndarray:
    """An elliptic ring (outer radii ``radii_xy``, ``thickness_mm`` wide) in the slices of ``z_range``,
    open over ``mouth_width_deg`` around the direction ``mouth_deg``: a C, U or horseshoe."""
    (cx, cy), (rx, ry) = centre_xy, radii_xy
    inner = elliptic_cylinder(frame, centre_xy, (np.maximum(rx - thickness_mm, 1e-3), np.maximum(ry - thickness_mm, 1e-3)))
    angle = np.degrees(np.arctan2(frame.y - cy, frame.x - cx))
    away = np.abs((angle - mouth_deg + 180.0) % 360.0 - 180.0)
    return elliptic_cylinder(frame, centre_xy, radii_xy, z_range) & ~inner & (away > mouth_width_deg / 2)


def grow(mask: np.ndarray, margin_mm: float, spacing_xyz) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean distance, anisotropic voxels)."""
    distance = ndimage.distance_transform_edt(~mask, sampling=tuple(spacing_xyz)[::-1])
    return distance <= margin_mm


def depth(mask: np.ndarray, spacing_xyz) -> np.ndarray:
    """Distance (mm) of every voxel of ``mask`` from its outside (0 outside)."""
    return ndimage.distance_transform_edt(mask, sampling=tuple(spacing_xyz)[::-1])


def sigmoid(value):
    """A smooth step from 0 to 1 (logistic), for outlines that change along z."""
    return 1.0 / (1.0 + np.exp(-np.asarray(value, dtype=float)))


def fill(ct: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hu_range: tuple[float, float],
         noise_hu: float = 0.0) -> None:
    """Set ``ct`` (HU) in ``mask`` to a level drawn from ``hu_range``, plus Gaussian noise of ``noise_hu``."""
    level = rng.uniform(*hu_range)
    ct[mask] = level + rng.normal(0, noise_hu, int(mask.sum())) if noise_hu else level


def wrapping_target(rng: np.random.Generator, frame: Frame, organ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A C-shaped target around ``organ`` (as TG-119's C-shape wraps its core) and what it must keep out of.

    Over :data:`WRAP_LENGTH_MM` of the organ's length each axial slice gets a ring centred on the
    organ's centroid in that slice, so the C follows the organ's path. Its inner radius is the
    organ's largest radius (to the outer edge of its farthest voxel) plus a gap of
    :data:`WRAP_GAP_MM`, its thickness :data:`WRAP_THICKNESS` × that radius (at least
    :data:`WRAP_MIN_THICKNESS_MM`); it is open over :data:`WRAP_MOUTH_DEG` in a random direction.
    The organ grown by the gap is cut out: the organ lies inside the target's hull, not in the target.

    Returns:
        ``(target, keep_out)``: the C, and the organ grown by the gap (crop further PTV levels with it).
    """
    nz = frame.grid.shape[0]
    slices = np.flatnonzero(organ.any(axis=(1, 2)))
    run = min(len(slices), max(1, round(rng.uniform(*WRAP_LENGTH_MM) / frame.grid.spacing[2])))
    first = int(rng.integers(0, len(slices) - run + 1))
    centre, in_run, extent = np.zeros((nz, 1, 1, 2)), np.zeros(nz, bool), 0.0
    for k in slices[first:first + run]:
        xy = frame.points[k][organ[k]][:, :2]
        centre[k, 0, 0] = xy.mean(axis=0)
        extent = max(extent, float(np.linalg.norm(xy - centre[k, 0, 0], axis=1).max()))
        in_run[k] = True
    gap = rng.uniform(*WRAP_GAP_MM)
    inner = extent + float(frame.spacing[:2].max()) / 2 + gap
    thickness = max(WRAP_MIN_THICKNESS_MM, inner * rng.uniform(*WRAP_THICKNESS))
    ring = ring_sector(frame, (centre[..., 0], centre[..., 1]), (inner + thickness,) * 2, thickness,
                       rng.uniform(0, 360), rng.uniform(*WRAP_MOUTH_DEG))
    keep_out = grow(organ, gap, frame.spacing)
    return ring & in_run[:, None, None] & ~keep_out, keep_out


def draw_beams(rng: np.random.Generator, iso: tuple[float, float, float]) -> list[Beam]:
    """A plan: 5–9 equispaced coplanar beams (half the plans), the same with couch kicks of ±15–30° on
    every second beam (a quarter), or one or two arcs with control points every 10–20° (a quarter)."""
    kind = rng.choice(["coplanar", "couch", "arc"], p=[0.5, 0.25, 0.25])
    if kind == "arc":
        beams = []
        for k in range(int(rng.integers(1, 3))):
            step = float(rng.choice([10.0, 15.0, 20.0]))
            start = float(rng.uniform(0, 360))
            span = float(rng.uniform(180, 358))
            direction = "CW" if k % 2 == 0 else "CC"
            sign = 1.0 if direction == "CW" else -1.0
            angles = tuple(float((start + sign * a) % 360) for a in np.arange(0, span + 1e-6, step))
            beams.append(Beam(f"Arc{k + 1}", angles[0], 30.0, 0.0, iso, angles, direction, meterset_weight=300.0))
        return beams
    n = int(rng.integers(5, 10))
    start = float(rng.uniform(0, 360 / n))
    beams = []
    for i in range(n):
        couch = float(rng.choice([-30.0, -15.0, 15.0, 30.0])) if kind == "couch" and i % 2 else 0.0
        beams.append(Beam(f"B{i + 1}", (start + 360.0 * i / n) % 360, 0.0, couch, iso, meterset_weight=100.0))
    return beams


def isocentre(grid: Grid, mask: np.ndarray) -> tuple[float, float, float]:
    """Centroid (x, y, z) mm of ``mask``, rounded to 0.1 mm: the plan's isocentre."""
    return tuple(float(round(v, 1)) for v in grid.index_to_physical(np.argwhere(mask).mean(axis=0)))


def ptv_masks(levels_gy: list[float], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``PTV_<Gy>`` → mask for each prescription level (Gy, highest first) and its mask."""
    return {f"PTV_{v:g}": m for v, m in zip(levels_gy, masks, strict=True)}


def assemble(seed: int, frame: Frame, ct: np.ndarray, masks: dict[str, np.ndarray], levels_gy: list[float],
             fractions: int, beams: list[Beam], meta: dict[str, str]) -> Case:
    """The Case ``synth_<seed>``: ``BODY`` the body, ``PTV_<Gy>`` PTVs (prescription from the name),
    everything else an organ at risk; empty masks dropped; contours from the masks; ``meta`` added
    to the patient identifiers."""
    def role(name: str) -> str:
        return "body" if name == "BODY" else "ptv" if name.startswith("PTV_") else "oar"

    structures = {name: Structure(name, mask, role(name), float(name[4:]) if role(name) == "ptv" else None,
                                  mask_to_contours(mask, frame.grid))
                  for name, mask in masks.items() if mask.any()}
    return Case(f"synth_{seed:05d}", frame.grid, ct, structures, beams, Prescription(levels_gy, fractions),
                meta={"PatientID": f"SYNTH{seed:05d}", "PatientName": f"Synthetic^{seed:05d}", "PatientPosition": "HFS",
                      **meta})
