"""Male pelvis-like (prostate) phantoms (``site="pelvis"`` of :func:`~.phantom.make_phantom`).

The grid's z extent runs from below the prostate's apex (penile bulb) to above the femoral heads
(lower sacrum, iliac wings). Anatomy (mm, LPS, patient left +x, posterior +y):

- body: a superellipse per slice (semi-axes 145–165 × 95–120 mm, exponent 2.2–3, slowly varying
  along z); soft tissue 30–50 HU with noise, a fat layer (−120 to −80 HU) 15–30 mm under the skin;
- bone (+400 to +900 HU): femoral heads (radius 22–26 mm, ``Femur_Head_L``/``Femur_Head_R``), necks
  and shafts, the acetabula cupping the heads, the pubic arch (symphysis anterior), the ischia,
  sacrum and coccyx behind the rectum, the iliac wings above the femoral heads;
- ``Bladder`` (urine 0–15 HU) anterior to and above the prostate, ``Rectum`` (a tube of 11–18 mm
  radius behind the prostate following the sacrum's curve, with a gas pocket (−950 to −800 HU) in
  40 % of the cases), ``PenileBulb`` below the prostate's apex;
- PTVs: ``PTV_<Gy>`` at 70–80 Gy (2 Gy steps, 2 Gy per fraction): the prostate (radii 18–26 ×
  14–19 × 16–24 mm, with the seminal vesicles in half the cases) grown by 5–10 mm, which overlaps
  the bladder's and the rectum's walls; in 35 % of the cases a lower level at 50–56 Gy, the high one
  grown by 5–10 mm plus both iliac node chains (rods of 10–14 mm radius along the pelvic side
  walls). A concave high PTV wraps the ``Rectum`` instead, at most 30 mm above the prostate's centre
  (every level keeps out of the wrapped part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dosediffusion.case import Case
from dosediffusion_training.synth.shapes import (
    Frame,
    assemble,
    capsule,
    depth,
    draw_beams,
    ellipsoid,
    elliptic_cylinder,
    fill,
    grow,
    isocentre,
    ptv_masks,
    ring_sector,
    sigmoid,
    wrapping_target,
)

NODE_SHARE = 0.35
NODE_LEVELS_GY = (50.0, 52.0, 54.0, 56.0)
WRAP_ABOVE_MM = 30.0  # a concave target wraps the rectum no higher than this above the prostate's centre


@dataclass(frozen=True)
class Pelvis:
    """Landmarks of one phantom (mm, LPS)."""

    half_z: float  # half the grid's length along z
    outline: tuple[float, float, float]  # body semi-axes (x, y) and superellipse exponent
    prostate: tuple[float, float, float]  # centre (x, y, z)
    prostate_radii: tuple[float, float, float]
    symphysis_y: float  # y of the front of the pubic symphysis
    femoral_head: tuple[float, float, float]  # |x|, y, z of the heads' centres
    femoral_radius: float
    rectum_x: float
    rectum_y0: float  # y of the rectum's centre at and below the prostate
    rectum_curve: float  # mm posterior per mm² above the prostate (the sacral curve)
    rectum_radii: tuple[float, float]

    def rectum_y(self, z):
        """y of the rectum's centre at ``z``: straight up to 15 mm above the prostate, then curving back."""
        return self.rectum_y0 + self.rectum_curve * np.maximum(0.0, np.asarray(z) - self.prostate[2] - 15.0) ** 2

    def sacrum_y(self, z):
        """y of the sacrum's (and coccyx's) centre at ``z``: just behind the rectum."""
        return self.rectum_y(z) + self.rectum_radii[1] + 22.0


def make_pelvis(seed: int, rng: np.random.Generator, frame: Frame, concave: bool) -> Case:
    """A prostate phantom; ``concave``: the high PTV wraps the rectum."""
    pelvis = _landmarks(rng, frame)
    body = _outline(rng, frame, pelvis)
    bone, femoral_heads = _bones(rng, frame, pelvis, body)
    organs, gas = _organs(rng, frame, pelvis, body, bone)
    ct = _ct(rng, frame, body, bone, organs, gas)
    meta = {"BodyPartExamined": "PELVIS"}
    if concave:
        high, keep_out = wrapping_target(rng, frame, organs["Rectum"] & (frame.z <= pelvis.prostate[2] + WRAP_ABOVE_MM))
        meta["SynthWrappedOAR"] = "Rectum"
    else:
        high, keep_out = grow(_prostate(rng, frame, pelvis), rng.uniform(5, 10), frame.spacing), np.zeros_like(body)
    rx, ptvs = [float(rng.choice(np.arange(70.0, 81.0, 2.0)))], [high]
    if rng.random() < NODE_SHARE:
        rx.append(float(rng.choice(NODE_LEVELS_GY)))
        ptvs.append(grow(high, rng.uniform(5, 10), frame.spacing) | _iliac_nodes(rng, frame, pelvis))
    ptvs = [m & body & ~keep_out for m in ptvs]
    beams = draw_beams(rng, isocentre(frame.grid, ptvs[0]))
    masks = {"BODY": body, **ptv_masks(rx, ptvs), **organs, **femoral_heads}
    return assemble(seed, frame, ct, masks, rx, round(rx[0] / 2.0), beams, meta)


def _landmarks(rng: np.random.Generator, frame: Frame) -> Pelvis:
    outline = (rng.uniform(145, 165), rng.uniform(95, 120), rng.uniform(2.2, 3.0))
    symphysis_y = -outline[1] + rng.uniform(22, 35)
    radii = (rng.uniform(18, 26), rng.uniform(14, 19), rng.uniform(16, 24))
    prostate = (0.0, symphysis_y + rng.uniform(35, 45), rng.uniform(-0.3, -0.1) * frame.half_z)
    return Pelvis(half_z=frame.half_z, outline=outline, prostate=prostate, prostate_radii=radii, symphysis_y=symphysis_y,
                  femoral_head=(rng.uniform(80, 95), prostate[1] + rng.uniform(0, 15), prostate[2] + rng.uniform(0, 15)),
                  femoral_radius=rng.uniform(22, 26), rectum_x=rng.uniform(-5, 5),
                  rectum_y0=prostate[1] + radii[1] + rng.uniform(8, 14), rectum_curve=rng.uniform(0.004, 0.008),
                  rectum_radii=(rng.uniform(13, 18), rng.uniform(11, 16)))


def _outline(rng: np.random.Generator, frame: Frame, pelvis: Pelvis) -> np.ndarray:
    """The body: a superellipse whose size drifts by up to 3 % along z."""
    ax, ay, power = pelvis.outline
    drift = 1 + 0.03 * np.sin(frame.z / frame.half_z * np.pi * rng.uniform(0.5, 1.0) + rng.uniform(0, np.pi))
    return np.abs(frame.x / (ax * drift)) ** power + np.abs(frame.y / (ay * drift)) ** power <= 1.0


def _bones(rng: np.random.Generator, frame: Frame, pelvis: Pelvis, body: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All bone, and the femoral heads by name."""
    p, z = frame.points, frame.z
    hx, hy, hz = pelvis.femoral_head
    r = pelvis.femoral_radius
    heads, bone = {}, np.zeros(frame.grid.shape, bool)
    for name, side in (("Femur_Head_R", -1.0), ("Femur_Head_L", 1.0)):  # LPS: patient left is +x
        centre = np.array([side * hx, hy, hz])
        heads[name] = ellipsoid(p, centre, [r] * 3) & body
        trochanter = centre + [side * 35.0, 5.0, -30.0]
        cup = ellipsoid(p, centre, [r + 7.0] * 3) & ~ellipsoid(p, centre, [r + 1.0] * 3)
        bone |= (heads[name] | capsule(p, centre, trochanter, rng.uniform(13, 15))
                 | capsule(p, trochanter, trochanter + [side * 5.0, 5.0, -300.0], rng.uniform(13, 16))
                 | (cup & (side * (frame.x - centre[0]) < 5.0) & (z > hz - r / 2)))
        bone |= elliptic_cylinder(frame, (side * rng.uniform(45, 55), hy + rng.uniform(20, 30)),
                                  (rng.uniform(9, 12), rng.uniform(12, 16)), (pelvis.prostate[2] - rng.uniform(35, 45), hz))
    arch_y = rng.uniform(45, 55)
    bone |= ring_sector(frame, (0.0, pelvis.symphysis_y + arch_y), (rng.uniform(60, 75), arch_y), rng.uniform(10, 14), 90.0,
                        rng.uniform(170, 200), (pelvis.prostate[2] - rng.uniform(20, 30), hz + rng.uniform(0, 10)))
    sacrum_x = 12.0 + 38.0 * sigmoid((z - hz - 25.0) / 10.0)
    bone |= elliptic_cylinder(frame, (0.0, pelvis.sacrum_y(z)), (sacrum_x, rng.uniform(9, 13)),
                              (pelvis.prostate[2] + rng.uniform(0, 10), np.inf))
    bone |= (ring_sector(frame, (0.0, hy), (rng.uniform(105, 125), rng.uniform(55, 70)), rng.uniform(8, 12), -90.0,
                         rng.uniform(180, 220), (hz + rng.uniform(25, 35), np.inf)) & (np.abs(frame.x) > sacrum_x + 5.0))
    return bone & body, heads


def _organs(rng: np.random.Generator, frame: Frame, pelvis: Pelvis, body: np.ndarray,
            bone: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Bladder, rectum and penile bulb (the prostate scorecard's names), and the rectal gas (maybe none)."""
    p, z = frame.points, frame.z
    px, py, pz = pelvis.prostate
    bladder_radii = (rng.uniform(28, 45), rng.uniform(22, 35), rng.uniform(22, 35))
    bladder = ellipsoid(p, (rng.uniform(-5, 5), py - rng.uniform(5, 15),
                            pz + pelvis.prostate_radii[2] + bladder_radii[2] * rng.uniform(0.6, 0.85)), bladder_radii)
    rectum_y = pelvis.rectum_y(z)
    rectum = elliptic_cylinder(frame, (pelvis.rectum_x, rectum_y), pelvis.rectum_radii, (pz - rng.uniform(30, 40), np.inf))
    bulb = ellipsoid(p, (0.0, py - rng.uniform(0, 10), pz - pelvis.prostate_radii[2] - rng.uniform(12, 20)),
                     (rng.uniform(8, 11), rng.uniform(7, 10), rng.uniform(7, 10)))
    organs = {name: m & body & ~bone for name, m in (("Bladder", bladder), ("Rectum", rectum), ("PenileBulb", bulb))}
    gas = np.zeros_like(body)
    if rng.random() < 0.4:
        start = pz + rng.uniform(-10, 20)
        gas = elliptic_cylinder(frame, (pelvis.rectum_x, rectum_y), np.asarray(pelvis.rectum_radii) * rng.uniform(0.3, 0.6),
                                (start, start + rng.uniform(15, 40))) & organs["Rectum"]
    return organs, gas


def _ct(rng: np.random.Generator, frame: Frame, body: np.ndarray, bone: np.ndarray, organs: dict[str, np.ndarray],
        gas: np.ndarray) -> np.ndarray:
    """HU: air, soft tissue with noise, a fat layer, urine, rectal content and gas, bone."""
    ct = np.full(frame.grid.shape, -1000.0, dtype=np.float32)
    fill(ct, body, rng, (30, 50), 10)
    fill(ct, body & (depth(body, frame.spacing) <= rng.uniform(15, 30)), rng, (-120, -80), 10)
    fill(ct, organs["Bladder"], rng, (0, 15), 5)
    fill(ct, organs["Rectum"], rng, (10, 40), 15)
    fill(ct, gas, rng, (-950, -800), 20)
    fill(ct, bone, rng, (400, 900), 20)
    return ct


def _prostate(rng: np.random.Generator, frame: Frame, pelvis: Pelvis) -> np.ndarray:
    """The clinical target: the prostate, with the seminal vesicles (behind the bladder) in half the cases."""
    prostate = ellipsoid(frame.points, pelvis.prostate, pelvis.prostate_radii)
    if rng.random() < 0.5:
        _, py, pz = pelvis.prostate
        for side in (-1.0, 1.0):
            prostate |= ellipsoid(frame.points, (side * rng.uniform(12, 18), py + 0.6 * pelvis.prostate_radii[1],
                                                 pz + pelvis.prostate_radii[2] + rng.uniform(0, 5)),
                                  (rng.uniform(12, 16), rng.uniform(5, 7), rng.uniform(7, 10)))
    return prostate


def _iliac_nodes(rng: np.random.Generator, frame: Frame, pelvis: Pelvis) -> np.ndarray:
    """Both iliac node chains: rods from near the midline at the grid's top down the pelvic side walls
    to in front of the acetabula."""
    _, hy, hz = pelvis.femoral_head
    top_y = float(pelvis.sacrum_y(frame.half_z)) - 45.0
    nodes = np.zeros(frame.grid.shape, bool)
    for side in (-1.0, 1.0):
        nodes |= capsule(frame.points, (side * rng.uniform(15, 25), top_y, frame.half_z),
                         (side * rng.uniform(60, 75), hy - rng.uniform(25, 40), hz + rng.uniform(10, 20)), rng.uniform(10, 14))
    return nodes
