"""Voxel masks → planar contours, the inverse of :mod:`dosediffusion.io.rasterize`.

Each axial slice's mask is outlined along voxel edges: every edge between an inside and an
outside voxel is a boundary edge, oriented so that the inside is always on the same side, and
edges are chained into closed loops (outer outlines and holes alike). Collinear corners are
dropped. Rasterising these loops with the even-odd rule gives back exactly the mask, because every
voxel centre lies half a voxel from the nearest loop edge.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from dosediffusion.geometry import Grid

# the four sides of voxel (i, j) as corner offsets (start, end), in one rotational order
_SIDES = (((0, 0), (0, 1), (-1, 0)),  # top: neighbour (i − 1, j)
          ((0, 1), (1, 1), (0, 1)),  # right: neighbour (i, j + 1)
          ((1, 1), (1, 0), (1, 0)),  # bottom: neighbour (i + 1, j)
          ((1, 0), (0, 0), (0, -1)))  # left: neighbour (i, j − 1)


def _boundary_edges(mask: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Directed boundary edges between corner points (row, col) of a 2-D mask."""
    padded = np.pad(mask, 1)
    edges = []
    for start, end, (di, dj) in _SIDES:
        neighbour = padded[1 + di : padded.shape[0] - 1 + di, 1 + dj : padded.shape[1] - 1 + dj]
        rows, cols = np.nonzero(mask & ~neighbour)
        edges += [((r + start[0], c + start[1]), (r + end[0], c + end[1])) for r, c in zip(rows, cols, strict=True)]
    return edges


def _simplify(loop: list[tuple[int, int]]) -> np.ndarray:
    """Drop corners where the outline goes straight on."""
    points = np.asarray(loop, dtype=float)
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    (ay, ax), (by, bx) = (points - before).T, (after - points).T
    turn = ay * bx - ax * by != 0
    return points[turn]


def slice_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Closed loops (N, 2) in (row, col) voxel-index coordinates (corners at ±0.5) outlining a 2-D mask."""
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for start, end in _boundary_edges(np.asarray(mask, dtype=bool)):
        outgoing[start].append(end)
    loops = []
    while outgoing:
        first = next(iter(outgoing))
        loop, point = [], first
        while True:
            loop.append(point)
            following = outgoing[point].pop()
            if not outgoing[point]:
                del outgoing[point]
            point = following
            if point == first:
                break
        loops.append(_simplify(loop) - 0.5)
    return loops


def mask_to_contours(mask: np.ndarray, grid: Grid) -> list[np.ndarray]:
    """Planar contours (N, 3) in patient mm, slice by slice, whose even-odd fill is ``mask`` on ``grid``."""
    contours = []
    for k in np.nonzero(np.asarray(mask).any(axis=(1, 2)))[0]:
        for loop in slice_loops(mask[k]):
            index = np.column_stack([np.full(len(loop), k, dtype=float), loop])  # (z, y, x)
            contours.append(grid.index_to_physical(index))
    return contours
