"""Masks → contours: rasterising the contours gives back exactly the mask, in every orientation."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import POSITIONS

from dosediffusion.geometry import Grid
from dosediffusion.io.mask_contours import mask_to_contours, slice_loops
from dosediffusion.io.rasterize import rasterize


@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_round_trip_is_exact(position):
    rng = np.random.default_rng(1)
    grid = Grid((6, 20, 24), (2.5, 3.0, 4.0), (10.0, -5.0, 3.0), POSITIONS[position])
    mask = rng.random(grid.shape) > 0.5  # islands, holes and diagonal (saddle) contacts everywhere
    mask[2, 5:15, 5:15] = True
    mask[2, 8:12, 8:12] = False
    back, report = rasterize(mask_to_contours(mask, grid), grid)
    assert np.array_equal(back, mask)
    assert report.outside == 0 and report.off_plane == 0


def test_loops_follow_voxel_edges():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    (loop,) = slice_loops(mask)
    assert sorted(map(tuple, loop)) == [(0.5, 0.5), (0.5, 3.5), (2.5, 0.5), (2.5, 3.5)]  # four corners only
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert len(slice_loops(ring)) == 2
