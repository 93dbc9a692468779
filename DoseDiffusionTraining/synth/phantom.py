"""Random but anatomically plausible phantoms of three treatment sites, each with a plan to compute.

:func:`make_phantom` draws one phantom (HFS, axis-aligned grid centred on the origin, DICOM LPS
coordinates: patient left is +x, posterior +y, superior +z) of a site:

- ``thorax`` (:mod:`.thorax`): elliptical body, lungs, vertebra; ``SpinalCord``, ``Esophagus``,
  ``Heart``, ``Lung_L``/``Lung_R``, ``Liver`` or ``Stomach``; 1–3 PTV levels at 50–70 Gy.
- ``head_neck`` (:mod:`.head_neck`): neck widening to the head and to the shoulders, cervical
  spine, mandible, skull base, airway; ``SpinalCord``, ``Brainstem``, ``Parotid_L``/``Parotid_R``,
  ``Larynx``, ``Esophagus``, ``Cavity_Oral``, ``Mandible``; 2–3 PTV levels of 70/63/56 or 66/60/54 Gy
  (30–35 fractions): an oropharynx or larynx primary, involved and elective neck nodes.
- ``pelvis`` (:mod:`.pelvis`): male pelvis with femora, hip bones and sacrum; ``Bladder``,
  ``Rectum``, ``Femur_Head_L``/``Femur_Head_R``, ``PenileBulb``; the prostate (with the seminal
  vesicles in half the cases) grown by 5–10 mm at 70–80 Gy in 2 Gy fractions, in a third of the
  cases with a pelvic-node level.

PTVs are named ``PTV_<Gy>`` (each lower level contains the ones above), so the shipped scorecard of
the site (``lung_60``, ``head_neck_sib_70_63_56``, ``prostate_78``) is the one that fits. With
probability ``concave_share`` the high PTV is instead a C wrapped around an organ at risk, 0–5 mm
from it (:func:`~.shapes.wrapping_target`; thorax: cord or oesophagus, head and neck: cord or
brainstem, pelvis: rectum), named in ``case.meta["SynthWrappedOAR"]``. Every plan is 5–9
coplanar beams, the same with couch kicks, or one or two arcs (:func:`~.shapes.draw_beams`),
isocentre at the high PTV's centroid. ``case.meta["BodyPartExamined"]`` is ``CHEST``,
``HEADNECK`` or ``PELVIS``. Structures carry contours (voxel-edge outlines) so the phantom can be
written as RTSTRUCT.

Everything is drawn from ``numpy.random.default_rng(seed)``: one seed and site, one phantom. Whether
the target is concave comes from a child stream of the same seed (``Generator.spawn``), so a case
that is not concave is the same phantom whatever ``concave_share`` is, and ``make_phantom(seed)``
(thorax, no concave targets) is the thorax phantom of the versions before the other sites.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion_training.synth.head_neck import make_head_neck
from dosediffusion_training.synth.pelvis import make_pelvis
from dosediffusion_training.synth.shapes import Frame, make_frame
from dosediffusion_training.synth.thorax import make_thorax

SITES: dict[str, Callable[[int, np.random.Generator, Frame, bool], Case]] = {
    "thorax": make_thorax, "head_neck": make_head_neck, "pelvis": make_pelvis}


def make_phantom(seed: int, spacing_mm: tuple[float, float, float] = (5.0, 5.0, 5.0),
                 shape: tuple[int, int, int] = (36, 56, 72), site: str = "thorax", concave_share: float = 0.0) -> Case:
    """A random phantom case (no dose yet) of ``site`` (one of :data:`SITES`) on a (z, y, x) ``shape``
    grid of ``spacing_mm`` (x, y, z); its high PTV wraps an organ at risk with probability ``concave_share``."""
    if site not in SITES:
        raise InputError(f"unknown synthetic site {site!r}; known: {', '.join(SITES)}")
    rng = np.random.default_rng(seed)
    concave = bool(rng.spawn(1)[0].random() < concave_share)
    return SITES[site](seed, rng, make_frame(spacing_mm, shape), concave)
