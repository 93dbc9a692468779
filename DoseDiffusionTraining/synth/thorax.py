"""Thorax-like phantoms (``site="thorax"`` of :func:`~.phantom.make_phantom`).

- a body of elliptical cross-section whose size drifts along z; soft tissue 0–40 HU with a little
  noise, two lungs (−850 to −700 HU), a vertebra (+400 to +900 HU) with the spinal canal (20 HU);
- organs at risk: ``SpinalCord`` (cord-like, in the canal), ``Esophagus`` (a tube in front of the
  spine), ``Heart`` (organ-like ellipsoid), ``Lung_L`` / ``Lung_R``, and one organ-like ellipsoid
  (``Liver`` or ``Stomach``) placed against the high PTV so that it overlaps it;
- 1–3 PTV levels: the high PTV a union of 1–4 spheres (15–35 mm radius) in lung or mediastinum,
  clear of the vertebra, or, for a concave case, a C wrapped around the ``SpinalCord`` or the
  ``Esophagus`` (:func:`~.shapes.wrapping_target`); each lower level the one above grown by
  5–15 mm, plus a separate nodal sphere; prescriptions 50–70 Gy (2 Gy steps) with 0.9 and 0.8 of
  it (whole Gy) for the lower levels, 25–35 fractions.

The draws of a convex case are those of the thorax phantoms before the other sites existed, so a
seed gives the same phantom as then.
"""

from __future__ import annotations

import numpy as np

from dosediffusion.case import Case
from dosediffusion_training.synth.shapes import (
    Frame,
    assemble,
    draw_beams,
    ellipsoid,
    fill,
    grow,
    isocentre,
    ptv_masks,
    wrapping_target,
)


def make_thorax(seed: int, rng: np.random.Generator, frame: Frame, concave: bool) -> Case:
    """A thorax phantom; ``concave``: the high PTV wraps the cord or the oesophagus."""
    grid, p, spacing, half_z = frame.grid, frame.points, frame.spacing, frame.half_z
    shape, x, y, z = grid.shape, frame.x, frame.y, frame.z

    ax, ay = rng.uniform(120, 160), rng.uniform(85, 110)
    drift = 1 + 0.06 * np.sin(z / half_z * np.pi * rng.uniform(0.5, 1.0) + rng.uniform(0, np.pi))
    body = (x / (ax * drift)) ** 2 + (y / (ay * drift)) ** 2 <= 1.0
    lung_y = rng.uniform(-25, 0)
    lungs = {side: ellipsoid(p, (sign * ax * rng.uniform(0.42, 0.5), lung_y, rng.uniform(-15, 15)),
                             (ax * rng.uniform(0.28, 0.34), ay * rng.uniform(0.5, 0.6), half_z * rng.uniform(0.8, 1.1))) & body
             for side, sign in (("Lung_R", -1), ("Lung_L", 1))}  # LPS: patient left is +x
    spine_y = ay - rng.uniform(30, 40)
    vertebra = ((x / 16.0) ** 2 + ((y - spine_y) / 14.0) ** 2 <= 1.0) & body
    canal = (x**2 + (y - spine_y + 22.0) ** 2 <= 7.0**2) & body
    cord = (x**2 + (y - spine_y + 22.0) ** 2 <= 5.0**2) & body
    esophagus = ((x - rng.uniform(-8, 8)) ** 2 + (y - spine_y + 42.0) ** 2 <= 8.0**2) & body & (np.abs(z) < half_z * 0.9)
    heart = ellipsoid(p, (rng.uniform(10, 35), rng.uniform(-45, -25), rng.uniform(-40, 0)),
                      (rng.uniform(40, 55), rng.uniform(35, 45), rng.uniform(35, 50))) & body & ~lungs["Lung_L"]

    ct = np.full(shape, -1000.0, dtype=np.float32)
    fill(ct, body, rng, (0, 40), 8)
    for lung in lungs.values():
        fill(ct, lung, rng, (-850, -700), 20)
    fill(ct, heart, rng, (30, 50))
    fill(ct, vertebra | canal, rng, (400, 900))
    ct[canal] = 20.0

    meta = {"BodyPartExamined": "CHEST"}
    if concave:
        wrapped = str(rng.choice(["SpinalCord", "Esophagus"]))
        ptv, avoid = wrapping_target(rng, frame, cord if wrapped == "SpinalCord" else esophagus)
        ptv &= body
        centre = grid.index_to_physical(np.argwhere(ptv).mean(axis=0))
        meta["SynthWrappedOAR"] = wrapped
    else:
        centre, ptv = _spheres(rng, frame, lungs, spine_y, ax, ay)
        avoid = vertebra
        ptv &= body & ~avoid
    levels = int(rng.integers(1, 4))
    high = float(rng.choice(np.arange(50, 71, 2)))
    ptvs = [ptv]
    for _ in range(levels - 1):
        node = ellipsoid(p, np.asarray(centre) + rng.normal(0, 40, 3), [rng.uniform(10, 20)] * 3)
        ptvs.append((grow(ptvs[-1], rng.uniform(5, 15), spacing) | node) & body & ~avoid)
    rx = [float(round(high * f)) for f in (1.0, 0.9, 0.8)[:levels]]

    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    radius = np.cbrt(ptv.sum() * spacing.prod() * 3 / (4 * np.pi))
    organ_r = rng.uniform(20, 35)
    organ = ellipsoid(p, np.asarray(centre) + direction * (radius + 0.6 * organ_r), [organ_r, organ_r * 0.8, organ_r]) & body

    masks = {"BODY": body, **ptv_masks(rx, ptvs), "SpinalCord": cord, "Esophagus": esophagus, "Heart": heart, **lungs,
             str(rng.choice(["Liver", "Stomach"])): organ}
    beams = draw_beams(rng, isocentre(grid, ptv))
    return assemble(seed, frame, ct, masks, rx, int(rng.integers(25, 36)), beams, meta)


def _spheres(rng: np.random.Generator, frame: Frame, lungs: dict[str, np.ndarray], spine_y: float,
             ax: float, ay: float) -> tuple[np.ndarray, np.ndarray]:
    """(centre (x, y, z) mm, mask) of a convex high PTV: 1–4 spheres of 15–35 mm radius around a
    centre in a lung or the mediastinum, away from the midline or well in front of the spine."""
    site = rng.choice(["Lung_L", "Lung_R", "mediastinum"])
    while True:
        centre = (rng.uniform(-0.6, 0.6) * ax, rng.uniform(-0.5, 0.2) * ay, rng.uniform(-0.4, 0.4) * frame.half_z)
        if site != "mediastinum":
            candidates = np.argwhere(lungs[site])
            centre = frame.grid.index_to_physical(candidates[rng.integers(len(candidates))])
        if abs(centre[0]) > 30 or centre[1] < spine_y - 70:
            break
    ptv = np.zeros(frame.grid.shape, bool)
    for _ in range(int(rng.integers(1, 5))):
        offset = rng.normal(0, 12, 3)
        ptv |= ellipsoid(frame.points, np.asarray(centre) + offset, [rng.uniform(15, 35)] * 3)
    return centre, ptv
