"""Dose-volume histograms with sub-voxel accuracy.

Each structure is sampled on a grid finer than the CT's where it is small: in-plane by a factor
that gives at least ``target_samples`` samples (at most ``max_factor``), along z by the same factor
when the structure has no contours (with contours the planes are the drawn ones, each standing for
its slab). Samples come from the contours (even-odd rasterisation on the fine grid) when the
structure has them, else from the mask. The dose is interpolated trilinearly at every sample.
D-metrics are interpolated between samples, never read off a histogram bin edge.

Units: dose in Gy, volume in cc, relative volume in %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dosediffusion.case import Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.rasterize import rasterize


@dataclass(frozen=True)
class DVH:
    """The dose samples of one structure, highest dose first, each with the volume it stands for."""

    doses_gy: np.ndarray  # (n,) descending
    volumes_cc: np.ndarray  # (n,)

    @property
    def volume_cc(self) -> float:
        return float(self.volumes_cc.sum())

    @property
    def mean_gy(self) -> float:
        return float(np.dot(self.doses_gy, self.volumes_cc) / self.volume_cc)

    @property
    def max_gy(self) -> float:
        return float(self.doses_gy[0])

    @property
    def min_gy(self) -> float:
        return float(self.doses_gy[-1])

    def _cumulative_mid(self) -> np.ndarray:
        """Volume (cc) receiving at least each sample's dose, counted to the sample's middle."""
        return np.cumsum(self.volumes_cc) - self.volumes_cc / 2

    def dose_at_volume_cc(self, volume_cc: float) -> float:
        """D at ``volume_cc``: the dose that the hottest ``volume_cc`` cc receive at least (Gy)."""
        if volume_cc < 0:
            raise InputError(f"volume must be positive, got {volume_cc} cc")
        return float(np.interp(volume_cc, self._cumulative_mid(), self.doses_gy))

    def dose_at_volume_percent(self, percent: float) -> float:
        """D at ``percent`` % of the structure (D95 = ``dose_at_volume_percent(95)``), Gy."""
        if not 0 <= percent <= 100:
            raise InputError(f"volume percentage must be in [0, 100], got {percent}")
        return self.dose_at_volume_cc(percent / 100.0 * self.volume_cc)

    def volume_at_dose_cc(self, dose_gy: float) -> float:
        """V at ``dose_gy``: the volume receiving at least ``dose_gy`` (cc), interpolated."""
        ascending = self.doses_gy[::-1]
        cumulative = self._cumulative_mid()[::-1]
        if dose_gy <= ascending[0]:
            return self.volume_cc
        if dose_gy > ascending[-1]:
            return 0.0
        return float(np.interp(dose_gy, ascending, cumulative))

    def volume_at_dose_percent(self, dose_gy: float) -> float:
        """V at ``dose_gy`` in % of the structure volume."""
        return 100.0 * self.volume_at_dose_cc(dose_gy) / self.volume_cc

    def cumulative(self, bin_width_gy: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(dose bin edges (Gy), volume % receiving at least each edge), from 0 to the maximum."""
        edges = np.arange(0.0, self.max_gy + bin_width_gy, bin_width_gy)
        ascending = self.doses_gy[::-1]
        at_least = self.volume_cc - np.concatenate([[0.0], np.cumsum(self.volumes_cc[::-1])])
        index = np.searchsorted(ascending, edges, side="left")
        return edges, 100.0 * at_least[index] / self.volume_cc

    def differential(self, bin_width_gy: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(dose bin edges (Gy), volume (cc) with a dose in each bin)."""
        edges = np.arange(0.0, self.max_gy + 2 * bin_width_gy, bin_width_gy)
        volumes, _ = np.histogram(self.doses_gy, bins=edges, weights=self.volumes_cc)
        return edges, volumes


def _factor(voxels: int, target_samples: int, max_factor: int, per_axes: int) -> int:
    if voxels == 0:
        return 1
    return int(np.clip(np.ceil((target_samples / voxels) ** (1.0 / per_axes)), 1, max_factor))


def _fine_grid(grid: Grid, lo: np.ndarray, hi: np.ndarray, factor: int, along_z: bool) -> Grid:
    """The sub-grid over voxels ``lo..hi`` (z, y, x, inclusive) with ``factor`` samples per voxel in
    plane (and along z when ``along_z``), sample centres placed symmetrically inside each voxel."""
    fz = factor if along_z else 1
    shape = ((hi - lo + 1) * np.array([fz, factor, factor])).astype(int)
    spacing = np.array(grid.spacing) / np.array([factor, factor, fz])
    first = lo - (1 - 1.0 / np.array([fz, factor, factor])) / 2  # continuous index of the first sample
    origin = grid.index_to_physical(first)
    return Grid(tuple(shape), tuple(spacing), tuple(origin), grid.direction)


def trilinear(volume: np.ndarray, index_zyx: np.ndarray) -> np.ndarray:
    """``volume`` (z, y, x) at continuous indices (n, 3); outside the volume the nearest edge value."""
    upper = np.array(volume.shape) - 1
    index = np.clip(index_zyx, 0, upper)
    base = np.minimum(np.floor(index).astype(np.int64), np.maximum(upper - 1, 0))
    frac = index - base
    out = np.zeros(len(index), dtype=np.float64)
    for corner in np.ndindex(2, 2, 2):
        c = np.asarray(corner)
        idx = np.minimum(base + c, upper)
        weight = np.prod(np.where(c == 1, frac, 1 - frac), axis=1)
        out += weight * volume[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def compute_dvh(
    dose_gy: np.ndarray,
    grid: Grid,
    structure: Structure,
    *,
    target_samples: int = 100_000,
    max_factor: int = 8,
) -> DVH:
    """The DVH of ``structure`` in ``dose_gy`` (both on ``grid``)."""
    mask = structure.mask
    if dose_gy.shape != grid.shape or mask.shape != grid.shape:
        raise InputError(f"dose {dose_gy.shape} and structure {structure.name!r} {mask.shape} must be on the grid {grid.shape}")
    if not mask.any():
        raise InputError(f"structure {structure.name!r} is empty: no DVH")
    found = np.argwhere(mask)
    lo, hi = found.min(axis=0), found.max(axis=0)
    contours = structure.contours
    factor = _factor(len(found), target_samples, max_factor, 2 if contours else 3)
    if factor == 1 and not contours:
        doses = dose_gy[mask].astype(np.float64)
        volumes = np.full(len(doses), grid.voxel_volume_cc)
    else:
        lo_pad, hi_pad = np.maximum(lo - 1, 0), np.minimum(hi + 1, np.array(grid.shape) - 1)
        fine = _fine_grid(grid, lo_pad, hi_pad, factor, along_z=not contours)
        if contours:
            inside, _ = rasterize(contours, fine)
        else:
            fz = factor
            inside = np.repeat(np.repeat(np.repeat(mask[lo_pad[0]:hi_pad[0] + 1, lo_pad[1]:hi_pad[1] + 1,
                                                        lo_pad[2]:hi_pad[2] + 1], fz, 0), factor, 1), factor, 2)
        points = np.argwhere(inside)
        if len(points) == 0:  # contours thinner than the fine grid: fall back to the voxel mask
            doses = dose_gy[mask].astype(np.float64)
            volumes = np.full(len(doses), grid.voxel_volume_cc)
        else:
            doses = trilinear(dose_gy, grid.physical_to_index(fine.index_to_physical(points)))
            volumes = np.full(len(doses), fine.voxel_volume_cc)
    order = np.argsort(-doses, kind="stable")
    return DVH(doses[order], volumes[order])
