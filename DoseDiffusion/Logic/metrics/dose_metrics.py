"""Standard dose metrics per structure, and target indices.

- ``standard_metrics``: volume (cc), Dmean/Dmin/Dmax, D98%, D95%, D50%, D2%, D0.03cc (Gy), each named
  as :func:`~dosediffusion.metrics.dvh_metric.parse_dvh_metric` reads it.
- Homogeneity index (ICRU 83): HI = (D2 − D98) / D50.
- Paddick conformity index: CI = TV_PIV² / (TV × PIV), TV the target volume, PIV the volume of the
  prescription isodose (body voxels receiving ≥ the prescription), TV_PIV their overlap (cc).
"""

from __future__ import annotations

import numpy as np

from dosediffusion.case import Case, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.metrics.dvh import DVH, compute_dvh
from dosediffusion.metrics.dvh_metric import DvhMetric, parse_dvh_metric

#: The ``dvh`` report's dose metrics (Gy): JSON key → the DVH metric.
STANDARD_METRICS: dict[str, DvhMetric] = {
    key: parse_dvh_metric(name) for key, name in (
        ("mean_gy", "Dmean"), ("min_gy", "Dmin"), ("max_gy", "Dmax"), ("d98_gy", "D98%"), ("d95_gy", "D95%"),
        ("d50_gy", "D50%"), ("d2_gy", "D2%"), ("d0_03cc_gy", "D0.03cc"))
}
STANDARD_KEYS = ("volume_cc", *STANDARD_METRICS)


def standard_metrics(dvh: DVH) -> dict[str, float]:
    """The ``dvh --json`` numbers of one structure (keys :data:`STANDARD_KEYS`): its volume (cc) and the
    :data:`STANDARD_METRICS` (Gy)."""
    return {"volume_cc": dvh.volume_cc, **{key: metric.value(dvh) for key, metric in STANDARD_METRICS.items()}}


def homogeneity_index(dvh: DVH) -> float:
    """ICRU 83 homogeneity index (D2% − D98%) / D50% of a target; 0 is perfectly homogeneous."""
    d50 = dvh.dose_at_volume_percent(50)
    if d50 <= 0:
        raise InputError("homogeneity index needs a target with a positive median dose")
    return (dvh.dose_at_volume_percent(2) - dvh.dose_at_volume_percent(98)) / d50


def paddick_conformity_index(dose_gy: np.ndarray, grid: Grid, target: Structure, prescription_gy: float,
                             body: Structure | None = None) -> float:
    """Paddick CI = TV_PIV² / (TV · PIV) on the voxel grid; 1 is a perfectly conformal dose."""
    isodose = dose_gy >= prescription_gy
    if body is not None:
        isodose &= body.mask
    tv, piv = target.mask.sum(), isodose.sum()
    if tv == 0 or piv == 0:
        return 0.0
    overlap = np.count_nonzero(target.mask & isodose)
    return float(overlap**2 / (tv * piv))


def case_dvhs(case: Case, dose_gy: np.ndarray | None = None) -> dict[str, DVH]:
    """DVHs of every non-empty structure of ``case`` in ``dose_gy`` (default: the case's dose)."""
    dose = case.dose if dose_gy is None else dose_gy
    if dose is None:
        raise InputError("no dose: the case has none and none was given", case.case_id)
    return {name: compute_dvh(dose, case.grid, s) for name, s in case.structures.items() if s.mask.any()}
