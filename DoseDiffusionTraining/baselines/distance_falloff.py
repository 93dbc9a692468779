"""The trivial baseline: each PTV's prescription inside it, falling off with the distance outside.

Fitted on training cases: for every PTV, the mean of dose / its prescription over the voxels of the
dose support (:meth:`~dosediffusion.case.Case.dose_support`: the body, or OpenKBP's possible-dose mask),
binned by the voxel's distance (mm) outside that PTV (inside: 0 mm), made non-increasing. A prediction
is, per voxel of the dose support, the maximum over PTVs of ``Rx · curve(distance)``. It knows the
anatomy only through the PTVs and the body,
nothing of beams or organs: any model worth shipping must beat it clearly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from dosediffusion.case import Case
from dosediffusion.errors import InputError

BIN_MM = 2.5
MAX_MM = 150.0


def _distances(case: Case) -> list[tuple[float, np.ndarray]]:
    """(prescription Gy, distance in mm outside the PTV, 0 inside) per PTV with a prescription."""
    spacing_zyx = tuple(case.grid.spacing)[::-1]
    return [(s.prescription_gy, ndimage.distance_transform_edt(~s.mask, sampling=spacing_zyx))
            for s in case.with_role("ptv") if s.prescription_gy and s.mask.any()]


@dataclass
class DistanceFalloff:
    """``curve[i]``: mean dose / prescription at distance ``i · BIN_MM`` mm (bin centre) outside a PTV."""

    curve: np.ndarray

    @classmethod
    def fit(cls, cases: Iterable[Case]) -> DistanceFalloff:
        bins = int(MAX_MM / BIN_MM) + 1
        sums, counts = np.zeros(bins), np.zeros(bins)
        for case in cases:
            body = case.dose_support()
            if case.dose is None or body is None:
                raise InputError("fitting the fall-off needs cases with a dose and a body", case.case_id)
            for rx, distance in _distances(case):
                index = np.minimum(np.round(distance[body] / BIN_MM).astype(int), bins - 1)
                np.add.at(sums, index, case.dose[body] / rx)
                np.add.at(counts, index, 1)
        if not counts.any():
            raise InputError("no PTV in the fitting cases")
        filled = counts > 0
        curve = np.interp(np.arange(bins), np.nonzero(filled)[0], sums[filled] / counts[filled])
        return cls(np.minimum.accumulate(curve))  # never rising with distance

    def predict(self, case: Case) -> np.ndarray:
        """Dose (Gy) on the case's grid; zero outside the case's dose support (as every prediction)."""
        dose = np.zeros(case.grid.shape, np.float32)
        for rx, distance in _distances(case):
            index = np.minimum(np.round(distance / BIN_MM).astype(int), len(self.curve) - 1)
            dose = np.maximum(dose, (rx * self.curve[index]).astype(np.float32))
        support = case.dose_support()
        if support is not None:
            dose[~support] = 0.0
        return dose

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"bin_mm": BIN_MM, "curve": self.curve.round(5).tolist()}))

    @classmethod
    def load(cls, path: str | Path) -> DistanceFalloff:
        return cls(np.asarray(json.loads(Path(path).read_text())["curve"]))
