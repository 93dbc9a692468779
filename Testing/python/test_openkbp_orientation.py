"""The OpenKBP reader's orientation, proved on the shared validation patients.

The reader (``dosediffusion.io.openkbp``) claims that its case grid is in LPS patient coordinates
(x → patient left, y → posterior, z → head; identity direction) and that gantry 0° of the nine fields,
for a supine (HFS) patient, stands on the anatomy's anterior side with the isocentre at the PTVs'
centroid. Both are checked on the data, in patient coordinates from ``case.grid``:

- anatomy, in every patient that has both structures: the spinal cord and the brainstem lie posterior
  to the mandible (+y), the brainstem superior to the mandible and to the larynx (+z), the left parotid
  on the patient's left of the right one (+x);
- beams: in a shell of :data:`SHELL_MM` from the PTVs, the reference dose follows the part of the
  ray-traced prior dose (:func:`~dosediffusion.conditioning.prior_dose.prior_dose`) in which the reader's
  beams and the same beams turned by 180° differ: its correlation with ``prior(reader) − prior(turned)``
  is positive. The nine fields' paths are nearly the same lines either way (each field has an opposite in
  the turned set 20° off); only where the dose enters (attenuation, inverse square, build-up) tells them
  apart, and that difference is what is tested. (The plain comparison, MAE after a per-case
  least-squares scale of each prior alone, favours the reader's beams in about two thirds of the
  validation patients at 20–60 mm, measured: the prior's unmodulated fields err more than the
  entrance side changes.)

Either check fails if the reader's anterior-posterior axis is reversed: the cord would be anterior of
the mandible, and reversed arrays are the turned beams' geometry.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from openkbp_data import OPENKBP, needs_openkbp
from scipy import ndimage

from dosediffusion.conditioning.prior_dose import prior_dose
from dosediffusion.io.openkbp import TARGETS_GY, read_openkbp_case

PATIENTS = sorted((OPENKBP / "validation").glob("pt_*.npz"))
BEAM_PATIENTS = PATIENTS[:12]  # a ray-traced prior twice per patient: 12 patients, not all 33
SHELL_MM = (20.0, 60.0)  # distance from the nearest PTV voxel (mm)
#: (structure, structure behind it, patient axis 0 x / 1 y / 2 z): the second's centroid has the higher coordinate.
ORDER = (("Mandible", "SpinalCord", 1), ("Mandible", "Brainstem", 1), ("Mandible", "Brainstem", 2),
         ("Larynx", "Brainstem", 2), ("Parotid_R", "Parotid_L", 0))


@lru_cache(maxsize=1)
def _case(path: Path):
    return read_openkbp_case(path)


def _turned(case, degrees: float):
    return replace(case, beams=[replace(b, gantry_deg=(b.gantry_deg + degrees) % 360,
                                        control_point_gantry_deg=((b.gantry_deg + degrees) % 360,)) for b in case.beams])


def scaled_mae(reference: np.ndarray, prior: np.ndarray) -> float:
    """MAE (Gy) between ``reference`` and ``prior`` scaled by least squares (both over the same voxels)."""
    return float(np.mean(np.abs(reference - float(reference @ prior) / float(prior @ prior) * prior)))


@needs_openkbp
@pytest.mark.parametrize("path", PATIENTS, ids=lambda p: p.stem)
def test_anatomy_lies_where_the_reader_says(path):
    case = _case(path)
    centroid = {name: case.grid.index_to_physical(np.argwhere(s.mask).mean(axis=0))
                for name, s in case.structures.items() if s.mask.any()}
    checked = [(front, back, axis) for front, back, axis in ORDER if front in centroid and back in centroid]
    for front, back, axis in checked:
        gap = centroid[back][axis] - centroid[front][axis]
        assert gap > 10.0, f"{back} is not {'left posterior superior'.split()[axis]} of {front}: {gap:.1f} mm"
    assert case.meta["PatientPosition"] == "HFS"


def test_anatomy_checks_cover_every_pair():
    """Most validation patients have the structures of every pair (so the anatomy test is not vacuous)."""
    if not PATIENTS:
        pytest.skip(f"the OpenKBP patients are not at {OPENKBP}")
    counts = dict.fromkeys(ORDER, 0)
    for path in PATIENTS:
        with np.load(path) as data:
            names = {key.split(".")[0] for key in data.files}
        aliases = {"Parotid_R": "RightParotid", "Parotid_L": "LeftParotid"}
        for pair in ORDER:
            counts[pair] += all(aliases.get(n, n) in names for n in pair[:2])
    assert min(counts.values()) >= 10, counts


@needs_openkbp
@pytest.mark.parametrize("path", BEAM_PATIENTS, ids=lambda p: p.stem)
def test_gantry_zero_is_anterior_in_the_dose(path):
    case = _case(path)
    targets = np.any([case.structures[n].mask for n in TARGETS_GY if n in case.structures], axis=0)
    distance = ndimage.distance_transform_edt(~targets, sampling=case.grid.spacing[::-1])
    shell = (distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1]) & case.dose_support()
    reference = case.dose[shell].astype(np.float64)
    reader, turned = (prior_dose(c)[shell].astype(np.float64) for c in (case, _turned(case, 180.0)))
    correlation = float(np.corrcoef(reference, reader - turned)[0, 1])
    assert correlation > 0, (f"the reference dose follows the turned beams (correlation {correlation:.3f}; MAE "
                             f"{scaled_mae(reference, reader):.2f} Gy reader, {scaled_mae(reference, turned):.2f} turned)")
