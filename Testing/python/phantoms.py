"""Analytic phantoms for tests: a water cylinder in air with structures whose contours and
volumes are known exactly, a dose with a known formula, and a plan; as a Case or a DICOM RT set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.geometry import Grid
from dosediffusion.io.rasterize import rasterize

POSITIONS = {  # DICOM PatientPosition → image direction (columns: x, y, z index axes in LPS)
    "HFS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "HFP": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "FFS": (-1, 0, 0, 0, 1, 0, 0, 0, -1),
}


@dataclass
class Expected:
    """What the phantom holds, computed from its definition (not from any reader)."""

    analytic_cc: dict[str, float]  # volume of the solid
    stack_cc: dict[str, float]  # sum over slices of polygon area × slice thickness
    dose_formula: str


def _circle(cx, cy, z, r, n=96):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)], axis=1)


def _square(cx, cy, z, half):
    return np.array([[cx - half, cy - half, z], [cx + half, cy - half, z], [cx + half, cy + half, z], [cx - half, cy + half, z]])


def _area(points) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def make_phantom_case(spacing=(2.5, 2.5, 2.5), position: str = "HFS", size_mm=(200.0, 160.0, 120.0)) -> tuple[Case, Expected]:
    """The phantom on a grid of ``spacing`` (x, y, z) mm, patient ``position`` (HFS/HFP/FFS).

    Structures (centres in patient mm, the isocenter at the origin):
    ``PTV_60`` sphere R = 20 at (0, 0, 0); ``SpinalCord`` cube of side 20 at (0, 40, 0) (overlapping nothing);
    ``Esophagus`` ring (outer r 25, inner r 12, |z| ≤ 20) at (-40, 0, 0); ``BODY`` cylinder r 70 (|z| ≤ 50).
    Dose: ``1 Gy/mm × (x + 60)`` clipped at 0 inside the body, 0 outside.
    """
    sx, sy, sz = spacing
    shape = tuple(int(round(s / d)) for s, d in zip(size_mm[::-1], (sz, sy, sx), strict=True))
    direction = np.asarray(POSITIONS[position], dtype=float).reshape(3, 3)
    extent = (np.array(shape[::-1]) - 1) * np.array(spacing)
    origin = -direction @ (extent / 2)  # centre of the image at the origin
    grid = Grid(shape, spacing, origin, direction.ravel())
    slices_z = np.sort(grid.index_to_physical(np.stack([np.arange(shape[0]), np.zeros(shape[0]), np.zeros(shape[0])], 1))[:, 2])
    contours: dict[str, list[np.ndarray]] = {"PTV_60": [], "SpinalCord": [], "Esophagus": [], "BODY": []}
    for z in slices_z:
        if abs(z) < 20:
            contours["PTV_60"].append(_circle(0, 0, z, np.sqrt(20**2 - z**2)))
        if abs(z) <= 10:
            contours["SpinalCord"].append(_square(0, 40, z, 10))
        if abs(z) <= 20:
            contours["Esophagus"] += [_circle(-40, 0, z, 25), _circle(-40, 0, z, 12)]
        if abs(z) <= 50:
            contours["BODY"].append(_circle(0, 0, z, 70, 180))
    structures = {}
    for name, polys in contours.items():
        mask, _ = rasterize(polys, grid)
        role = {"PTV_60": "ptv", "BODY": "body"}.get(name, "oar")
        structures[name] = Structure(name, mask, role, 60.0 if role == "ptv" else None, polys)
    points = grid.index_to_physical(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    body = structures["BODY"].mask
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    dose = np.where(body, np.clip(points[..., 0] + 60.0, 0, None), 0.0).astype(np.float32)
    ring_area = sum(_area(p) * (1 if i % 2 == 0 else -1) for i, p in enumerate(contours["Esophagus"]))
    expected = Expected(
        analytic_cc={"PTV_60": 4 / 3 * np.pi * 20**3 / 1000, "SpinalCord": 8.0,
                     "Esophagus": np.pi * (625 - 144) * 40 / 1000, "BODY": np.pi * 70**2 * 100 / 1000},
        stack_cc={
            "PTV_60": sum(_area(p) for p in contours["PTV_60"]) * sz / 1000,
            "SpinalCord": sum(_area(p) for p in contours["SpinalCord"]) * sz / 1000,
            "Esophagus": ring_area * sz / 1000,
            "BODY": sum(_area(p) for p in contours["BODY"]) * sz / 1000,
        },
        dose_formula="max(x + 60, 0) Gy inside BODY",
    )
    iso = (0.0, 0.0, 0.0)
    beams = [
        Beam("G0", 0.0, 0.0, 0.0, iso, meterset_weight=120.0),
        Beam("G90", 90.0, 15.0, 0.0, iso, meterset_weight=95.5),
        Beam("G270K", 270.0, 0.0, 30.0, iso, meterset_weight=80.0),
        Beam("Arc", 181.0, 30.0, 0.0, iso, tuple(float((181 + 20 * k) % 360) for k in range(18)), arc_direction="CW",
             meterset_weight=300.0),
    ]
    case = Case("phantom", grid, ct, structures, beams, Prescription([60.0], 30), dose,
                meta={"PatientID": "PHANTOM01", "PatientName": "Phantom^Analytic", "PatientPosition": position})
    return case, expected


def write_phantom_dicom(folder, **kwargs):
    """Write the phantom as a DICOM RT set in ``folder`` (created); returns (case, expected, paths)."""
    from dosediffusion.io.dicom_write import write_case_dicom

    case, expected = make_phantom_case(**kwargs)
    return case, expected, write_case_dicom(case, folder)
