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
from functools import cached_property

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

    @cached_property
    def volume_cc(self) -> float:
        """Structure volume (cc)."""
        return float(self.volumes_cc.sum())

    @cached_property
    def mean_gy(self) -> float:
        """Volume-weighted mean dose (Gy)."""
        return float(np.sum(self.doses_gy * self.volumes_cc) / self.volume_cc)

    @property
    def max_gy(self) -> float:
        return float(self.doses_gy[0])

    @property
    def min_gy(self) -> float:
        return float(self.doses_gy[-1])

    @cached_property
    def _cumulative_mid(self) -> np.ndarray:
        """Volume (cc) receiving at least each sample's dose, counted to the sample's middle (computed once)."""
        return np.cumsum(self.volumes_cc) - self.volumes_cc / 2

    def dose_at_volume_cc(self, volume_cc: float) -> float:
        """D at ``volume_cc``: the dose that the hottest ``volume_cc`` cc receive at least (Gy)."""
        if volume_cc < 0:
            raise InputError(f"volume must be positive, got {volume_cc} cc")
        return float(np.interp(volume_cc, self._cumulative_mid, self.doses_gy))

    def dose_at_volume_percent(self, percent: float) -> float:
        """D at ``percent`` % of the structure (D95 = ``dose_at_volume_percent(95)``), Gy."""
        if not 0 <= percent <= 100:
            raise InputError(f"volume percentage must be in [0, 100], got {percent}")
        return self.dose_at_volume_cc(percent / 100.0 * self.volume_cc)

    def volume_at_dose_cc(self, dose_gy: float) -> float:
        """V at ``dose_gy``: the volume receiving at least ``dose_gy`` (cc), interpolated."""
        ascending = self.doses_gy[::-1]
        cumulative = self._cumulative_mid[::-1]
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
    """Samples per voxel edge so that ``voxels`` voxels give about ``target_samples`` samples."""
    if voxels == 0:
        return 1
    return int(np.clip(np.ceil((target_samples / voxels) ** (1.0 / per_axes)), 1, max_factor))


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """First and last voxel index (z, y, x), inclusive, of the True voxels; None when there are none."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    slab = mask[zs[0]:zs[-1] + 1]
    ys, xs = np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1)))
    return np.array([zs[0], ys[0], xs[0]]), np.array([zs[-1], ys[-1], xs[-1]])


def _fine_grid(grid: Grid, lo: np.ndarray, hi: np.ndarray, factor: int, along_z: bool) -> Grid:
    """The sub-grid over voxels ``lo..hi`` (z, y, x, inclusive) with ``factor`` samples per voxel in
    plane (and along z when ``along_z``), sample centres placed symmetrically inside each voxel."""
    fz = factor if along_z else 1
    shape = ((hi - lo + 1) * np.array([fz, factor, factor])).astype(int)
    spacing = np.array(grid.spacing) / np.array([factor, factor, fz])
    first = lo - (1 - 1.0 / np.array([fz, factor, factor])) / 2  # continuous index of the first sample
    origin = grid.index_to_physical(first)
    return Grid(tuple(shape), tuple(spacing), tuple(origin), grid.direction)


def _axis_weights(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper neighbour index and the upper's weight of continuous indices ``positions``
    on an axis of ``n`` voxels (clamped to the edge values outside)."""
    clamped = np.clip(positions, 0, n - 1)
    base = np.minimum(np.floor(clamped).astype(np.int64), max(n - 2, 0))
    return base, np.minimum(base + 1, n - 1), clamped - base


def _lerp_axis(values: np.ndarray, lower: np.ndarray, upper: np.ndarray, frac: np.ndarray, axis: int) -> np.ndarray:
    """``values`` linearly interpolated along ``axis`` between indices ``lower`` and ``upper`` with weight ``frac``."""
    lower_values = np.take(values, lower, axis=axis)
    if not frac.any():
        return lower_values
    shape = [1, 1, 1]
    shape[axis] = len(frac)
    weight = frac.astype(values.dtype).reshape(shape)
    return lower_values + (np.take(values, upper, axis=axis) - lower_values) * weight


def sample_block(dose_gy: np.ndarray, lo: np.ndarray, hi: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Trilinear dose (Gy) at every sample of the sub-grid over voxels ``lo..hi`` (z, y, x, inclusive)
    with ``factors`` (z, y, x) samples per voxel, placed symmetrically inside each voxel: shape
    ``(hi - lo + 1) * factors``. Separable (one axis at a time) on the block of voxels the samples
    need, so it costs a few operations per sample; values beyond the grid are the nearest edge value."""
    weights, box = [], []
    for axis in range(3):
        f = factors[axis]
        positions = lo[axis] - 0.5 + (np.arange((hi[axis] - lo[axis] + 1) * f) + 0.5) / f
        lower, upper, frac = _axis_weights(positions, dose_gy.shape[axis])
        first = int(lower.min())
        box.append(slice(first, int(upper.max()) + 1))
        weights.append((lower - first, upper - first, frac))
    out = dose_gy[tuple(box)]
    if out.dtype.kind != "f":  # integer doses: interpolate in floating point
        out = out.astype(np.float64)
    for axis in (0, 2, 1):  # z first: with contours it only picks the planes
        out = _lerp_axis(out, *weights[axis], axis=axis)
    return out


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


def _voxel_samples(dose_gy: np.ndarray, mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The dose (Gy, the dose's own dtype) of every voxel of ``mask`` (found within its bounding box ``lo..hi``)."""
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    return dose_gy[box][mask[box]]


def compute_dvh(
    dose_gy: np.ndarray,
    grid: Grid,
    structure: Structure,
    *,
    target_samples: int = 100_000,
    max_factor: int = 8,
) -> DVH:
    """The DVH of ``structure`` in ``dose_gy`` (both on ``grid``).

    Only the structure's bounding box (one voxel of margin) is sampled: its fine grid is the
    voxel grid subdivided ``factor`` times per axis (see the module docstring), the dose on it is
    interpolated separably and the samples are those inside the contours (or the mask).
    """
    mask = structure.mask
    if dose_gy.shape != grid.shape or mask.shape != grid.shape:
        raise InputError(f"dose {dose_gy.shape} and structure {structure.name!r} {mask.shape} must be on the grid {grid.shape}")
    box = _bounding_box(mask)
    if box is None:
        raise InputError(f"structure {structure.name!r} is empty: no DVH")
    lo, hi = box
    voxels = int(np.count_nonzero(mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]))
    contours = structure.contours
    factor = _factor(voxels, target_samples, max_factor, 2 if contours else 3)
    if factor == 1 and not contours:
        doses, volume = _voxel_samples(dose_gy, mask, lo, hi), grid.voxel_volume_cc
    else:
        lo_pad, hi_pad = np.maximum(lo - 1, 0), np.minimum(hi + 1, np.array(grid.shape) - 1)
        fz = 1 if contours else factor
        if contours:
            inside, _ = rasterize(contours, _fine_grid(grid, lo_pad, hi_pad, factor, along_z=False))
        else:
            block = mask[lo_pad[0]:hi_pad[0] + 1, lo_pad[1]:hi_pad[1] + 1, lo_pad[2]:hi_pad[2] + 1]
            inside = np.repeat(np.repeat(np.repeat(block, fz, 0), factor, 1), factor, 2)
        if not inside.any():  # contours thinner than the fine grid: fall back to the voxel mask
            doses, volume = _voxel_samples(dose_gy, mask, lo, hi), grid.voxel_volume_cc
        else:
            fine = sample_block(dose_gy, lo_pad, hi_pad, (fz, factor, factor))
            doses, volume = fine[inside], grid.voxel_volume_cc / (fz * factor * factor)
    # every sample stands for the same volume, so the doses alone are sorted (in their own precision)
    doses = np.sort(doses)[::-1].astype(np.float64)
    return DVH(doses, np.full(len(doses), volume))
