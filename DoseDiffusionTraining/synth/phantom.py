"""Random but anatomically plausible thorax-like phantoms with a plan to compute.

Each phantom (HFS, axis-aligned, centred on the origin) has:

- a body of elliptical cross-section whose size drifts along z; soft tissue 0–40 HU with a little
  noise, two lungs (−850 to −700 HU), a vertebral column (+400 to +900 HU) with the spinal canal;
- organs at risk: ``SpinalCord`` (cord-like, in the canal), ``Esophagus`` (a tube in front of the
  spine), ``Heart`` (organ-like ellipsoid), ``Lung_L`` / ``Lung_R``, and one organ-like ellipsoid
  (``Liver`` or ``Stomach``) placed against the high PTV so that it overlaps it;
- 1–3 PTV levels: the high PTV a union of 1–4 spheres (15–35 mm radius) in lung or mediastinum,
  each lower level the one above grown by 5–15 mm, plus a separate nodal sphere; prescriptions
  50–70 Gy (2 Gy steps) with 0.9 and 0.8 of it (whole Gy) for the lower levels, 25–35 fractions;
- a beam set: 5–9 equispaced coplanar beams from a random start angle; in a quarter of the
  phantoms some beams get couch kicks, in another quarter the plan is one or two arcs whose
  control points (every 10–20°) are computed as many beams. The isocenter is the high PTV's
  centroid.

Structures carry contours (voxel-edge outlines) so the phantom can be written as RTSTRUCT.
Everything is drawn from ``numpy.random.Generator(seed)``: one seed, one phantom.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.geometry import Grid
from dosediffusion.io.mask_contours import mask_to_contours


def _ellipsoid(points: np.ndarray, centre, radii) -> np.ndarray:
    return (((points - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(axis=-1) <= 1.0


def _grow(mask: np.ndarray, margin_mm: float, spacing_xyz) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean distance, anisotropic voxels)."""
    distance = ndimage.distance_transform_edt(~mask, sampling=tuple(spacing_xyz)[::-1])
    return distance <= margin_mm


def _beams(rng: np.random.Generator, iso: tuple[float, float, float]) -> list[Beam]:
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


def make_phantom(seed: int, spacing_mm: tuple[float, float, float] = (5.0, 5.0, 5.0),
                 shape: tuple[int, int, int] = (36, 56, 72)) -> Case:
    """A random phantom case (no dose yet) on a (z, y, x) ``shape`` grid of ``spacing_mm`` (x, y, z)."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing_mm, dtype=float)
    origin = -(np.asarray(shape[::-1]) - 1) * spacing / 2
    grid = Grid(shape, tuple(spacing), tuple(origin))
    p = grid.index_to_physical(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)  # (x, y, z) mm
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    half_z = (shape[0] - 1) * spacing[2] / 2

    ax, ay = rng.uniform(120, 160), rng.uniform(85, 110)
    drift = 1 + 0.06 * np.sin(z / half_z * np.pi * rng.uniform(0.5, 1.0) + rng.uniform(0, np.pi))
    body = (x / (ax * drift)) ** 2 + (y / (ay * drift)) ** 2 <= 1.0
    lung_y = rng.uniform(-25, 0)
    lungs = {side: _ellipsoid(p, (sign * ax * rng.uniform(0.42, 0.5), lung_y, rng.uniform(-15, 15)),
                              (ax * rng.uniform(0.28, 0.34), ay * rng.uniform(0.5, 0.6), half_z * rng.uniform(0.8, 1.1))) & body
             for side, sign in (("Lung_R", -1), ("Lung_L", 1))}  # LPS: patient left is +x
    spine_y = ay - rng.uniform(30, 40)
    vertebra = ((x / 16.0) ** 2 + ((y - spine_y) / 14.0) ** 2 <= 1.0) & body
    canal = (x**2 + (y - spine_y + 22.0) ** 2 <= 7.0**2) & body
    cord = (x**2 + (y - spine_y + 22.0) ** 2 <= 5.0**2) & body
    esophagus = ((x - rng.uniform(-8, 8)) ** 2 + (y - spine_y + 42.0) ** 2 <= 8.0**2) & body & (np.abs(z) < half_z * 0.9)
    heart = _ellipsoid(p, (rng.uniform(10, 35), rng.uniform(-45, -25), rng.uniform(-40, 0)),
                       (rng.uniform(40, 55), rng.uniform(35, 45), rng.uniform(35, 50))) & body & ~lungs["Lung_L"]

    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[body] = rng.uniform(0, 40) + rng.normal(0, 8, int(body.sum()))
    for lung in lungs.values():
        ct[lung] = rng.uniform(-850, -700) + rng.normal(0, 20, int(lung.sum()))
    ct[heart] = rng.uniform(30, 50)
    ct[vertebra | canal] = rng.uniform(400, 900)
    ct[canal] = 20.0

    # high PTV: spheres around a centre in a lung or the mediastinum, clear of the spine
    site = rng.choice(["Lung_L", "Lung_R", "mediastinum"])
    while True:
        centre = (rng.uniform(-0.6, 0.6) * ax, rng.uniform(-0.5, 0.2) * ay, rng.uniform(-0.4, 0.4) * half_z)
        if site != "mediastinum":
            candidates = np.argwhere(lungs[site])
            centre = grid.index_to_physical(candidates[rng.integers(len(candidates))])
        if abs(centre[0]) > 30 or centre[1] < spine_y - 70:
            break
    ptv = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 5))):
        offset = rng.normal(0, 12, 3)
        ptv |= _ellipsoid(p, np.asarray(centre) + offset, [rng.uniform(15, 35)] * 3)
    ptv &= body & ~vertebra
    levels = int(rng.integers(1, 4))
    high = float(rng.choice(np.arange(50, 71, 2)))
    ptvs = [ptv]
    for _ in range(levels - 1):
        node = _ellipsoid(p, np.asarray(centre) + rng.normal(0, 40, 3), [rng.uniform(10, 20)] * 3)
        ptvs.append((_grow(ptvs[-1], rng.uniform(5, 15), spacing) | node) & body & ~vertebra)
    rx = [float(round(high * f)) for f in (1.0, 0.9, 0.8)[:levels]]

    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    radius = np.cbrt(ptv.sum() * spacing.prod() * 3 / (4 * np.pi))
    organ_r = rng.uniform(20, 35)
    organ = _ellipsoid(p, np.asarray(centre) + direction * (radius + 0.6 * organ_r), [organ_r, organ_r * 0.8, organ_r]) & body

    masks = {"BODY": body, **{f"PTV_{v:g}": m for v, m in zip(rx, ptvs, strict=True)}, "SpinalCord": cord,
             "Esophagus": esophagus, "Heart": heart, **lungs, str(rng.choice(["Liver", "Stomach"])): organ}
    roles = {"BODY": "body", **{f"PTV_{v:g}": "ptv" for v in rx}}
    structures = {name: Structure(name, mask, roles.get(name, "oar"), float(name[4:]) if name.startswith("PTV_") else None,
                                  mask_to_contours(mask, grid))
                  for name, mask in masks.items() if mask.any()}
    iso = tuple(float(round(v, 1)) for v in grid.index_to_physical(np.argwhere(ptv).mean(axis=0)))
    case = Case(f"synth_{seed:05d}", grid, ct, structures, _beams(rng, iso), Prescription(rx, int(rng.integers(25, 36))),
                meta={"PatientID": f"SYNTH{seed:05d}", "PatientName": f"Synthetic^{seed:05d}", "PatientPosition": "HFS"})
    return case
