"""A fitted correction of the ray-traced prior: what the plans of a data set give where the prior says p.

The prior (:func:`~dosediffusion.conditioning.prior_dose.prior_dose`) draws the beams' paths, not an
optimised dose: it overdoses the fall-off and knows nothing of organ sparing. The correction is a lookup
table fitted on training cases, with two features per voxel of the dose support: the prior relative to
the highest prescription, ``r = prior / Rx`` (:data:`RATIO_EDGES`), and the signed distance to the union
of the prescribed PTVs, ``d`` (mm, negative inside; :data:`DISTANCE_EDGES_MM`). The table holds the mean of
``dose / Rx`` over the training voxels of each bin, so the corrected prior is ``Rx · table[r, d]`` (an
empty bin keeps the prior). Then, per organ at risk seen in fitting, the voxels of that organ outside
the PTVs are scaled by the organ's factor, the least-squares ``Σ dose · c / Σ c²`` of the corrected
prior ``c`` over its training voxels: the sparing the plans achieve there.

Fitting takes seconds per case (the prior dominates). The fitted correction is saved with a model in its
preprocessing settings (:attr:`~dosediffusion.conditioning.prepare.PrepareConfig.prior_correction`), so
every caller that prepares a case for that model gets the same corrected prior.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dosediffusion.case import Case, Structure
from dosediffusion.errors import InputError
from dosediffusion.roles import high_ptv

#: Bin edges of ``prior / Rx`` (the last bin is open above).
RATIO_EDGES = np.round(np.arange(0.0, 1.30001, 0.05), 4)
#: Bin edges of the signed distance to the PTVs (mm; the first and last bins are open).
DISTANCE_EDGES_MM = np.concatenate([np.arange(-30.0, 30.0, 2.5), np.arange(30.0, 60.0, 5.0), np.arange(60.0, 160.0, 10.0)])


@dataclass(frozen=True)
class Features:
    """A case's correction features on its grid (z, y, x): ``ratio`` = prior / ``rx_gy``, ``distance_mm``
    signed to the PTVs' union, ``outside`` the voxels outside every prescribed PTV."""

    rx_gy: float
    ratio: np.ndarray
    distance_mm: np.ndarray
    outside: np.ndarray


def features(case: Case, prior_gy: np.ndarray) -> Features:
    """The correction's features of ``case`` and its prior dose (Gy on ``case.grid``)."""
    high = high_ptv(case)
    if high is None:
        raise InputError("the prior's correction needs a PTV with a prescription and voxels", case.case_id)
    rx = float(high.prescription_gy)
    union = np.any([s.mask for s in case.with_role("ptv") if s.prescription_gy and s.mask.any()], axis=0)
    image = sitk.GetImageFromArray(union.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in case.grid.spacing))
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                                                   useImageSpacing=True))
    return Features(rx, np.asarray(prior_gy, np.float32) / np.float32(rx), distance.astype(np.float32), ~union)


def organ_name(organ: Structure) -> str:
    """The name an organ's factor is kept under: the alias table's standard name, else the source's."""
    return organ.canonical or organ.name


def _bins(ratio: np.ndarray, distance_mm: np.ndarray, ratio_edges: np.ndarray, distance_edges: np.ndarray):
    i = np.clip(np.searchsorted(ratio_edges, ratio, side="right") - 1, 0, len(ratio_edges) - 1)
    j = np.clip(np.searchsorted(distance_edges, distance_mm, side="right") - 1, 0, len(distance_edges) - 1)
    return i, j


@dataclass(frozen=True)
class PriorCorrection:
    """``table[i, j]``: mean dose / Rx in ratio bin ``i`` and distance bin ``j`` (NaN: no training voxel);
    ``organ_factors``: the sparing factor of each organ (by :func:`organ_name`) outside the PTVs."""

    table: np.ndarray
    organ_factors: dict[str, float]
    ratio_edges: np.ndarray
    distance_edges_mm: np.ndarray

    @classmethod
    def fit(cls, cases: Iterable[tuple[Case, np.ndarray]]) -> PriorCorrection:
        """Fitted on (case with a dose, its prior dose in Gy) pairs, over each case's dose support."""
        shape = (len(RATIO_EDGES), len(DISTANCE_EDGES_MM))
        sums, counts, kept = np.zeros(shape), np.zeros(shape), []
        for case, prior_gy in cases:
            support = case.dose_support()
            if case.dose is None or support is None:
                raise InputError("fitting the prior's correction needs cases with a dose and a body", case.case_id)
            f = features(case, prior_gy)
            index = _bins(f.ratio[support], f.distance_mm[support], RATIO_EDGES, DISTANCE_EDGES_MM)
            np.add.at(sums, index, case.dose[support] / f.rx_gy)
            np.add.at(counts, index, 1)
            kept.append((case, f, support))
        if not kept:
            raise InputError("no cases to fit the prior's correction on")
        table = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        lookup = cls(table, {}, RATIO_EDGES, DISTANCE_EDGES_MM)
        dot, square = {}, {}
        for case, f, support in kept:
            corrected = lookup._table_dose(f)
            for organ in case.with_role("oar"):
                voxels, name = organ.mask & f.outside & support, organ_name(organ)
                dot[name] = dot.get(name, 0.0) + float(np.dot(case.dose[voxels], corrected[voxels]))
                square[name] = square.get(name, 0.0) + float(np.dot(corrected[voxels], corrected[voxels]))
        factors = {name: dot[name] / square[name] for name in sorted(dot) if square[name] > 0}
        return cls(table, factors, RATIO_EDGES, DISTANCE_EDGES_MM)

    def _table_dose(self, f: Features) -> np.ndarray:
        i, j = _bins(f.ratio, f.distance_mm, self.ratio_edges, self.distance_edges_mm)
        looked_up = self.table[i, j]
        return (np.where(np.isnan(looked_up), f.ratio, looked_up) * f.rx_gy).astype(np.float32)

    def apply(self, case: Case, prior_gy: np.ndarray) -> np.ndarray:
        """The corrected prior (float32 Gy on ``case.grid``), zero where the prior is (outside the dose support)."""
        f = features(case, prior_gy)
        looked_up = self._table_dose(f)
        dose = looked_up.copy()
        for organ in case.with_role("oar"):  # where organs overlap, the later one's factor
            factor = self.organ_factors.get(organ_name(organ))
            if factor is not None:
                voxels = organ.mask & f.outside
                dose[voxels] = looked_up[voxels] * np.float32(factor)
        support = case.dose_support()
        if support is not None:
            dose[~support] = 0.0
        return dose

    def to_dict(self) -> dict:
        return {"ratio_edges": self.ratio_edges.tolist(), "distance_edges_mm": self.distance_edges_mm.tolist(),
                "table": [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in self.table],
                "organ_factors": {k: round(v, 5) for k, v in self.organ_factors.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> PriorCorrection:
        try:
            ratio, distance = np.asarray(data["ratio_edges"], float), np.asarray(data["distance_edges_mm"], float)
            table = np.asarray([[np.nan if v is None else v for v in row] for row in data["table"]], float)
            factors = {str(k): float(v) for k, v in data["organ_factors"].items()}
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"the prior's correction is malformed ({error}): refit it") from None
        if table.shape != (len(ratio), len(distance)):
            raise InputError(f"the prior's correction table is {table.shape}, its edges say "
                             f"{(len(ratio), len(distance))}: refit it")
        return cls(table, factors, ratio, distance)
