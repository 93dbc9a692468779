"""Even-odd rasterisation of planar contours."""

import numpy as np
import pytest

from dosediffusion.geometry import Grid
from dosediffusion.io.rasterize import rasterize

GRID = Grid((5, 120, 120), (1.0, 1.0, 2.0), (-59.5, -59.5, -4.0))


def circle(cx, cy, r, z=0.0, n=360, reverse=False):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if reverse:
        t = t[::-1]
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, z)], axis=1)


def test_square_fills_exactly_its_voxel_centres():
    square = np.array([[-10.0, -10, 0], [10, -10, 0], [10, 10, 0], [-10, 10, 0]])
    mask, _ = rasterize([square], GRID)
    assert mask.sum() == 20 * 20 and mask[2].sum() == 400 and not mask[1].any()


@pytest.mark.parametrize("reverse_hole", [False, True])
def test_ring_is_outer_minus_inner_whatever_the_winding(reverse_hole):
    mask, _ = rasterize([circle(0, 0, 40), circle(0, 0, 20, reverse=reverse_hole)], GRID)
    assert mask[2].sum() == pytest.approx(np.pi * (40**2 - 20**2), rel=0.01)
    assert not mask[2, 60, 60] and mask[2, 60, 60 + 30]


def test_islands_and_an_island_in_a_hole():
    mask, _ = rasterize([circle(-30, 0, 10), circle(30, 0, 10)], GRID)
    assert mask[2].sum() == pytest.approx(2 * np.pi * 100, rel=0.02)
    nested, _ = rasterize([circle(0, 0, 50), circle(0, 0, 30), circle(0, 0, 10)], GRID)
    assert nested[2].sum() == pytest.approx(np.pi * (2500 - 900 + 100), rel=0.01)


def test_orientation_does_not_change_the_physical_mask():
    flipped = Grid((5, 120, 120), (1.0, 1.0, 2.0), (59.5, 59.5, 4.0), (-1, 0, 0, 0, -1, 0, 0, 0, -1))
    contour = [circle(15, -10, 12)]
    a, _ = rasterize(contour, GRID)
    b, _ = rasterize(contour, flipped)
    np.testing.assert_array_equal(a, b[::-1, ::-1, ::-1])


def test_reports_contours_off_the_image_and_between_slices():
    _, report = rasterize([circle(0, 0, 10, z=100.0)], GRID)
    assert report.beyond == 1
    _, report = rasterize([circle(55, 0, 20)], GRID)
    assert report.outside == 1
    _, report = rasterize([circle(0, 0, 10, z=1.0)], GRID)  # halfway between slices at 0 and 2 mm
    assert report.off_plane == 1
