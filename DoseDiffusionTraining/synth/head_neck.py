"""Head-and-neck-like phantoms (``site="head_neck"`` of :func:`~.phantom.make_phantom`).

The grid's z extent (180 mm at the default grid) runs from the lower neck, where the outline widens
to the shoulders, past the mandible to the skull base. Anatomy (mm, LPS: patient left +x,
posterior +y, superior +z):

- body: an ellipse per slice that blends from the neck (semi-axes 50–65 × 50–62 mm) into the head
  (68–80 × 85–100 mm, centred further forward) below the chin and into the shoulders (80–100 mm
  wider) at the bottom; soft tissue 20–45 HU with noise, a fat layer (−110 to −70 HU) 4–10 mm deep;
- cervical spine (+350 to +800 HU): vertebral bodies and arches along a lordotic curve up to the
  foramen magnum, the canal (5–20 HU) with the ``SpinalCord`` behind the bodies; above it the
  ``Brainstem``, the clivus in front of it and the occipital bone behind (+900 to +1500 HU);
- ``Mandible`` (+900 to +1400 HU): a horseshoe 7–10 mm thick open posteriorly, with the rami;
  ``Cavity_Oral`` inside its arch; ``Parotid_L``/``Parotid_R`` (−30 to +10 HU) lateral to the rami;
  ``Larynx`` (30–60 HU) below the mandible, the airway (−990 to −950 HU) running from the trachea
  through the larynx up the pharynx; the ``Esophagus`` from the larynx's lower edge down, between
  the airway and the spine;
- PTVs: 2 or 3 levels (half each) of 70/63/56 Gy (33 or 35 fractions) or 66/60/54 Gy (30 or 33
  fractions), the middle one left out for 2. The high PTV is an oropharynx (one side) or larynx
  primary of 1–3 ellipsoids of 12–22 mm, with an involved node in half the cases. The primary
  side's level II–III nodes (a rod of 12–16 mm radius from below the mandible's angle to the
  larynx) join the next level (the one above grown by 5–10 mm); the other side's nodes (60 %) or
  the primary side's lower neck join the lowest (the one above grown by 3–8 mm; with 2 levels,
  both join the low level). The PTVs keep 5 mm from the cord; in a concave case the high PTV wraps
  the ``SpinalCord`` or the ``Brainstem`` instead, and the PTVs keep out of the wrapped organ.
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

#: Prescription families (Gy, highest first) and their numbers of fractions.
PRESCRIPTIONS = {(70.0, 63.0, 56.0): (33, 35), (66.0, 60.0, 54.0): (30, 33)}
CORD_MARGIN_MM = 5.0


@dataclass(frozen=True)
class Neck:
    """Landmarks of one phantom (mm, LPS)."""

    half_z: float  # half the grid's length along z
    z_chin: float  # centre of the mandible's body
    z_skull_base: float  # foramen magnum: top of the spine and the cord
    z_larynx: float  # centre of the larynx
    larynx_half: float  # half the larynx's length along z
    spine_y0: float  # y of the vertebral bodies' centre at z = 0
    lordosis: float  # how much further back the spine lies at the grid's ends
    spine_radii: tuple[float, float]  # vertebral body semi-axes (x, y)
    prevertebral: float  # from the vertebral bodies' front to the oesophagus / pharynx centre
    airway_y: float  # y of the trachea and larynx lumen
    brainstem_y: float  # y of the brainstem's centre
    head: tuple[float, float, float]  # head semi-axes (x, y) and centre y
    ramus_y: float  # y of the mandible's rami
    chin_y: float  # y of the front of the mandible
    mandible_x: float  # half the mandible's width

    def spine_y(self, z):
        """y of the vertebral bodies' centre at ``z`` (a lordotic curve, the mid-neck most anterior)."""
        return self.spine_y0 + self.lordosis * (np.asarray(z) / self.half_z) ** 2

    def canal_y(self, z):
        """y of the spinal canal's centre (and the cord's) at ``z``."""
        return self.spine_y(z) + self.spine_radii[1] + 8.0

    def esophagus_y(self, z):
        """y of the oesophagus' (and the pharynx's back wall's) centre at ``z``."""
        return self.spine_y(z) - self.spine_radii[1] - self.prevertebral


@dataclass(frozen=True)
class Rod:
    """A chain of lymph nodes as a round-ended rod (x, y, z mm; radius mm)."""

    top: np.ndarray
    bottom: np.ndarray
    radius: float

    def mask(self, frame: Frame) -> np.ndarray:
        """The rod's voxels on ``frame``."""
        return capsule(frame.points, self.top, self.bottom, self.radius)


def make_head_neck(seed: int, rng: np.random.Generator, frame: Frame, concave: bool) -> Case:
    """A head-and-neck phantom; ``concave``: the high PTV wraps the cord or the brainstem."""
    neck = _landmarks(rng, frame)
    body = _outline(rng, frame, neck)
    bones = _bones(rng, frame, neck, body)
    organs, airway = _organs(rng, frame, neck, body, bones)
    ct = _ct(rng, frame, body, bones, organs, airway)
    side = 1.0 if rng.random() < 0.5 else -1.0
    ipsilateral = _chain(rng, neck, side)
    meta = {"BodyPartExamined": "HEADNECK"}
    if concave:
        wrapped = str(rng.choice([n for n in ("SpinalCord", "Brainstem") if organs[n].any()]))
        high, keep_out = wrapping_target(rng, frame, organs[wrapped])
        meta["SynthWrappedOAR"] = wrapped
    else:
        high = _primary(rng, frame, neck, side, ipsilateral)
        keep_out = grow(organs["SpinalCord"], CORD_MARGIN_MM, frame.spacing)
    if rng.random() < 0.6:  # bilateral: the other side's chain
        other = _chain(rng, neck, -side).mask(frame)
    else:  # unilateral: the primary side's lower neck
        low_neck = np.array([side * rng.uniform(30, 45), ipsilateral.bottom[1], -frame.half_z + rng.uniform(5, 15)])
        other = capsule(frame.points, ipsilateral.bottom, low_neck, ipsilateral.radius)
    family = list(PRESCRIPTIONS)[int(rng.integers(len(PRESCRIPTIONS)))]
    rx = list(family) if rng.random() < 0.5 else [family[0], family[2]]
    ptvs = [m & body & ~keep_out for m in _levels(rng, frame, high, len(rx), ipsilateral.mask(frame), other)]
    fractions = int(rng.choice(PRESCRIPTIONS[family]))
    beams = draw_beams(rng, isocentre(frame.grid, ptvs[0]))
    return assemble(seed, frame, ct, {"BODY": body, **ptv_masks(rx, ptvs), **organs}, rx, fractions, beams, meta)


def _landmarks(rng: np.random.Generator, frame: Frame) -> Neck:
    z_chin = rng.uniform(-0.05, 0.15) * frame.half_z
    spine_y0, spine_radii = rng.uniform(8, 16), (rng.uniform(11, 14), rng.uniform(9, 11))
    head = (rng.uniform(68, 80), rng.uniform(85, 100), rng.uniform(-20, -10))
    ramus_y = spine_y0 - rng.uniform(5, 12)
    return Neck(half_z=frame.half_z, z_chin=z_chin, z_skull_base=z_chin + rng.uniform(40, 50),
                z_larynx=z_chin - rng.uniform(30, 45), larynx_half=rng.uniform(18, 24), spine_y0=spine_y0,
                lordosis=rng.uniform(4, 8), spine_radii=spine_radii, prevertebral=rng.uniform(6, 9),
                airway_y=spine_y0 - spine_radii[1] - rng.uniform(26, 32),
                brainstem_y=spine_y0 + spine_radii[1] + 8.0 - rng.uniform(0, 6), head=head, ramus_y=ramus_y,
                chin_y=head[2] - head[1] + rng.uniform(8, 14), mandible_x=rng.uniform(45, 55))


def _outline(rng: np.random.Generator, frame: Frame, neck: Neck) -> np.ndarray:
    """The body: a neck ellipse blending into the head's below the chin and into the shoulders' at the bottom."""
    neck_shape = np.array([rng.uniform(50, 65), rng.uniform(50, 62), rng.uniform(0, 10)])  # semi-axes x, y; centre y
    shoulders = neck_shape + [rng.uniform(80, 100), rng.uniform(15, 30), rng.uniform(5, 15)]
    to_head = sigmoid((frame.z - neck.z_chin + rng.uniform(22, 30)) / 6.0)[..., None]
    to_shoulders = sigmoid((-frame.half_z + rng.uniform(5, 30) - frame.z) / 8.0)[..., None]
    shape = neck_shape + (np.asarray(neck.head) - neck_shape) * to_head + (shoulders - neck_shape) * to_shoulders
    ax, ay, cy = np.moveaxis(shape, -1, 0)
    return (frame.x / ax) ** 2 + ((frame.y - cy) / ay) ** 2 <= 1.0


def _bones(rng: np.random.Generator, frame: Frame, neck: Neck, body: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the vertebrae (bodies and arches), the spinal canal, the skull base and the mandible."""
    top, canal_y = neck.z_skull_base, neck.canal_y(frame.z)
    vertebrae = (elliptic_cylinder(frame, (0.0, neck.spine_y(frame.z)), neck.spine_radii, (-np.inf, top))
                 | elliptic_cylinder(frame, (0.0, canal_y), (12.0, 12.0), (-np.inf, top)))
    canal = elliptic_cylinder(frame, (0.0, canal_y), (7.0, 7.0), (-np.inf, top + 5.0))
    under_skin = depth(body, frame.spacing) - 4.0
    occiput = ((under_skin > 0) & (under_skin <= rng.uniform(5, 8)) & (frame.z > top - 10.0)
               & (frame.y > neck.brainstem_y - 15.0))
    clivus = capsule(frame.points, (0.0, neck.brainstem_y - 22.0, top - 5.0), (0.0, neck.brainstem_y - 32.0, top + 40.0),
                     rng.uniform(5, 7))
    thickness = rng.uniform(7, 10)
    arch = (neck.mandible_x, neck.ramus_y - neck.chin_y)
    mandible = ring_sector(frame, (0.0, neck.ramus_y), arch, thickness, 90.0, rng.uniform(180, 200),
                           (neck.z_chin - rng.uniform(10, 14), neck.z_chin + rng.uniform(10, 14)))
    ramus_top = neck.z_chin + rng.uniform(35, 45)
    for side in (-1.0, 1.0):
        mandible |= elliptic_cylinder(frame, (side * (arch[0] - thickness / 2), neck.ramus_y - 5.0), (4.0, 12.0),
                                      (neck.z_chin, ramus_top))
    return {"vertebrae": vertebrae & body & ~canal, "canal": canal & body, "skull": (occiput | clivus) & body & ~canal,
            "Mandible": mandible & body}


def _organs(rng: np.random.Generator, frame: Frame, neck: Neck, body: np.ndarray,
            bones: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The organs at risk (named as the head-and-neck scorecard names them) and the airway."""
    p, z, top = frame.points, frame.z, neck.z_skull_base
    cord = elliptic_cylinder(frame, (0.0, neck.canal_y(z)), (rng.uniform(5.5, 7.0), rng.uniform(5.0, 6.0)), (-np.inf, top))
    brainstem = ellipsoid(p, (0.0, neck.brainstem_y, top + rng.uniform(25, 32)),
                          (rng.uniform(12, 15), rng.uniform(11, 14), rng.uniform(28, 35)))
    larynx_bottom, larynx_top = neck.z_larynx - neck.larynx_half, neck.z_larynx + neck.larynx_half
    larynx = ellipsoid(p, (0.0, neck.airway_y, neck.z_larynx), (rng.uniform(16, 20), rng.uniform(13, 17), neck.larynx_half))
    esophagus = elliptic_cylinder(frame, (0.0, neck.esophagus_y(z)), (rng.uniform(8, 10), rng.uniform(5, 7)),
                                  (-np.inf, larynx_bottom + 10.0))
    # the airway: trachea and larynx lumen, then up the pharynx just in front of the spine
    up = np.clip((z - larynx_top + 10.0) / 20.0, 0.0, 1.0)
    airway_y = neck.airway_y + (neck.esophagus_y(z) - rng.uniform(4, 8) - neck.airway_y) * up
    airway = elliptic_cylinder(frame, (0.0, airway_y), (7.0 + 5.0 * up, 6.0 - 1.5 * up), (-np.inf, top - 5.0))
    depth_y = neck.ramus_y - neck.chin_y
    oral = ellipsoid(p, (0.0, neck.ramus_y - 0.45 * depth_y, neck.z_chin + rng.uniform(12, 20)),
                     (neck.mandible_x * rng.uniform(0.5, 0.6), depth_y * rng.uniform(0.3, 0.38), rng.uniform(12, 16)))
    parotids = {name: ellipsoid(p, (side * (neck.mandible_x + rng.uniform(2, 8)), neck.ramus_y + rng.uniform(5, 15),
                                    neck.z_chin + rng.uniform(25, 35)),
                                (rng.uniform(10, 14), rng.uniform(16, 22), rng.uniform(18, 24)))
                for name, side in (("Parotid_R", -1.0), ("Parotid_L", 1.0))}  # LPS: patient left is +x
    bone = bones["vertebrae"] | bones["skull"] | bones["Mandible"]
    soft = {"SpinalCord": cord & ~brainstem, "Brainstem": brainstem, **parotids, "Larynx": larynx,
            "Esophagus": esophagus, "Cavity_Oral": oral}
    organs = {name: mask & body & ~bone for name, mask in soft.items()}
    return {**organs, "Mandible": bones["Mandible"]}, airway & body & ~bone


def _ct(rng: np.random.Generator, frame: Frame, body: np.ndarray, bones: dict[str, np.ndarray],
        organs: dict[str, np.ndarray], airway: np.ndarray) -> np.ndarray:
    """HU: air, soft tissue with noise, a fat layer under the skin, glands, larynx, bone, CSF, the airway."""
    ct = np.full(frame.grid.shape, -1000.0, dtype=np.float32)
    fill(ct, body, rng, (20, 45), 8)
    fill(ct, body & (depth(body, frame.spacing) <= rng.uniform(4, 10)), rng, (-110, -70), 10)
    for name in ("Parotid_L", "Parotid_R"):
        fill(ct, organs[name], rng, (-30, 10), 8)
    fill(ct, organs["Larynx"], rng, (30, 60), 8)
    fill(ct, bones["vertebrae"], rng, (350, 800), 20)
    fill(ct, bones["skull"], rng, (900, 1500), 20)
    fill(ct, bones["Mandible"], rng, (900, 1400), 20)
    fill(ct, bones["canal"], rng, (5, 20), 5)
    fill(ct, airway, rng, (-990, -950), 10)
    return ct


def _chain(rng: np.random.Generator, neck: Neck, side: float) -> Rod:
    """One side's upper and mid neck nodes (levels II–III): from below the mandible's angle to the larynx."""
    top = np.array([side * rng.uniform(30, 40), neck.spine_y0 - rng.uniform(0, 10), neck.z_chin + rng.uniform(10, 25)])
    bottom = np.array([side * rng.uniform(25, 35), neck.spine_y0 - rng.uniform(0, 10), neck.z_larynx - rng.uniform(0, 30)])
    return Rod(top, bottom, rng.uniform(12, 16))


def _primary(rng: np.random.Generator, frame: Frame, neck: Neck, side: float, chain: Rod) -> np.ndarray:
    """A convex high PTV: 1–3 ellipsoids (12–22 mm) around an oropharynx (on ``side``) or larynx
    primary, with an involved node (10–15 mm) on ``chain`` in half the cases."""
    if rng.random() < 0.5:
        z = neck.z_chin + rng.uniform(0, 20)
        centre = np.array([side * rng.uniform(8, 22), float(neck.esophagus_y(z)) - rng.uniform(0, 12), z])
    else:
        centre = np.array([side * rng.uniform(0, 8), neck.airway_y, neck.z_larynx + rng.uniform(-8, 8)])
    gtv = np.zeros(frame.grid.shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        gtv |= ellipsoid(frame.points, centre + rng.normal(0, 6, 3), rng.uniform(12, 22, 3))
    if rng.random() < 0.5:
        node = chain.top + (chain.bottom - chain.top) * rng.uniform(0.1, 0.6)
        gtv |= ellipsoid(frame.points, node, [rng.uniform(10, 15)] * 3)
    return gtv


def _levels(rng: np.random.Generator, frame: Frame, high: np.ndarray, count: int, ipsilateral: np.ndarray,
            other: np.ndarray) -> list[np.ndarray]:
    """``count`` (2 or 3) nested PTV levels, highest first: with 3, the middle one is the high one grown
    by 5–10 mm plus the ``ipsilateral`` nodes and the low one that grown by 3–8 mm plus the ``other``
    nodes; with 2, the low one is the high one grown by 5–10 mm plus both."""
    extras = [ipsilateral, other] if count == 3 else [ipsilateral | other]
    ptvs = [high]
    for extra, margin in zip(extras, ((5.0, 10.0), (3.0, 8.0)), strict=False):
        ptvs.append(grow(ptvs[-1], rng.uniform(*margin), frame.spacing) | extra)
    return ptvs
