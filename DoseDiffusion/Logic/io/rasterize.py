"""Planar contours → voxel masks with the even-odd rule.

A voxel is inside a structure when its centre is inside an odd number of the structure's
contours on its axial slice, so holes (a contour inside another) and several islands per slice
come out right whatever order or winding the contours have. Each slice is filled by a vectorised
scanline: the crossings of every contour edge with every voxel-centre row are sorted and filled
between consecutive pairs (half-open, so shared edges are counted once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dosediffusion.geometry import Grid


@dataclass
class RasterReport:
    """What rasterising one structure ran into."""

    off_plane: int = 0  # contours further than a quarter slice from any CT slice centre
    outside: int = 0  # contours with points beyond the image (clipped)
    beyond: int = 0  # contours on slices outside the image (dropped)
    slices: set[int] = field(default_factory=set)


def _fill_slice(polygons: list[np.ndarray], ny: int, nx: int) -> np.ndarray:
    """Even-odd fill of (N, 2) polygons in continuous (y, x) index coordinates on an (ny, nx) slice."""
    starts = np.concatenate(polygons)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    y0, x0, y1, x1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    moving = y0 != y1
    y0, x0, y1, x1 = y0[moving], x0[moving], y1[moving], x1[moving]
    lo = np.clip(np.ceil(np.minimum(y0, y1)), 0, ny).astype(np.int64)
    hi = np.clip(np.ceil(np.maximum(y0, y1)), 0, ny).astype(np.int64)  # rows [lo, hi)
    counts = hi - lo
    mask = np.zeros((ny, nx), dtype=bool)
    if counts.sum() == 0:
        return mask
    edge = np.repeat(np.arange(len(lo)), counts)
    rows = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    xs = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # clipped rows may lose a partner only when a polygon leaves the image vertically: pairs stay
    # per row because every closed polygon crosses each row an even number of times
    left, right = np.clip(np.ceil(xs[0::2]), 0, nx).astype(np.int64), np.clip(np.ceil(xs[1::2]), 0, nx).astype(np.int64)
    # fill only the bounding box of the crossings
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(left.min()), int(right.max())  # filled columns lie in [c0, c1)
    diff = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.int32)
    np.add.at(diff, (rows[0::2] - r0, left - c0), 1)
    np.add.at(diff, (rows[1::2] - r0, right - c0), -1)
    mask[r0:r1, c0:c1] = np.cumsum(diff, axis=1)[:, : c1 - c0] > 0
    return mask


def rasterize(contours: list[np.ndarray], grid: Grid) -> tuple[np.ndarray, RasterReport]:
    """Closed planar contours (each (N, 3) patient points, mm) → boolean mask on ``grid``.

    The grid's slices must be the contours' planes (an axial CT): each contour goes to the slice
    nearest to it; contours further than a quarter slice from it are counted as ``off_plane``.
    """
    nz, ny, nx = grid.shape
    report = RasterReport()
    per_slice: dict[int, list[np.ndarray]] = {}
    for points in contours:
        if len(points) < 3:
            continue
        index = grid.physical_to_index(points)  # (N, 3) as (z, y, x)
        z = float(np.mean(index[:, 0]))
        k = int(round(z))
        if np.ptp(index[:, 0]) > 0.5 or abs(z - k) > 0.25:
            report.off_plane += 1
        if not 0 <= k < nz:
            report.beyond += 1
            continue
        if index[:, 1].min() < -0.5 or index[:, 1].max() > ny - 0.5 or index[:, 2].min() < -0.5 or index[:, 2].max() > nx - 0.5:
            report.outside += 1
        per_slice.setdefault(k, []).append(index[:, 1:])
    mask = np.zeros(grid.shape, dtype=bool)
    for k, polygons in per_slice.items():
        mask[k] = _fill_slice(polygons, ny, nx)
        report.slices.add(k)
    return mask, report
