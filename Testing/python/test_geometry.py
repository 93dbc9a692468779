"""Grid geometry: index <-> patient mapping, SimpleITK round trip, resampling."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from dosediffusion.errors import GeometryError
from dosediffusion.geometry import Grid, resample, resample_scipy

HFP = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # head first prone: x and y index axes point to -x, -y


def test_index_to_physical_matches_simpleitk_for_rotated_grid():
    grid = Grid((5, 6, 7), (1.5, 2.0, 3.0), (10.0, -20.0, 30.0), HFP)
    image = grid.to_image(np.zeros(grid.shape, np.float32))
    for zyx in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        expected = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx[::-1]))
        np.testing.assert_allclose(grid.index_to_physical(np.array(zyx)), expected)
        np.testing.assert_allclose(grid.physical_to_index(np.array(expected)), zyx, atol=1e-9)


def test_from_image_reads_shape_in_zyx_order():
    image = sitk.Image([7, 6, 5], sitk.sitkFloat32)  # x, y, z sizes
    image.SetSpacing((1.0, 2.0, 3.0))
    grid = Grid.from_image(image)
    assert grid.shape == (5, 6, 7)
    assert grid.voxel_volume_cc == pytest.approx(0.006)


def test_bad_grids_are_refused():
    with pytest.raises(GeometryError, match="spacing"):
        Grid((2, 2, 2), (1, 0, 1), (0, 0, 0))
    with pytest.raises(GeometryError, match="orthonormal"):
        Grid((2, 2, 2), (1, 1, 1), (0, 0, 0), (1, 1, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(GeometryError, match="does not match"):
        Grid((2, 2, 2), (1, 1, 1), (0, 0, 0)).to_image(np.zeros((2, 2, 3)))


def test_resample_linear_reproduces_a_linear_ramp():
    source = Grid((10, 12, 14), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    x = source.index_to_physical(np.indices(source.shape).reshape(3, -1).T)[:, 0].reshape(source.shape)
    target = Grid((6, 7, 8), (3.0, 3.0, 3.0), (1.0, 1.0, 1.0))
    out = resample(x, source, target)
    tx = target.index_to_physical(np.indices(target.shape).reshape(3, -1).T)[:, 0].reshape(target.shape)
    np.testing.assert_allclose(out, tx, atol=1e-4)


def test_resample_mask_keeps_volume_and_outside_is_default():
    source = Grid((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    mask = np.zeros(source.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    target = Grid((40, 40, 40), (0.5, 0.5, 0.5), (-0.25, -0.25, -0.25))
    out = resample(mask, source, target)
    assert out.dtype == bool
    assert out.sum() * 0.125 == pytest.approx(1000.0, rel=0.05)
    far = Grid((2, 2, 2), (1.0, 1.0, 1.0), (100.0, 100.0, 100.0))
    assert not resample(mask, source, far).any()


@pytest.mark.parametrize("interpolation", ["linear", "nearest", "bspline"])
def test_scipy_resampling_equals_simpleitk(interpolation):
    """Without SimpleITK (a bare GPU image) resample() uses scipy: the same values, border and outside
    included, on oblique and axis-aligned grids, for doses, labels and masks (a mask is resampled as
    fractions whatever the kernel)."""
    rng = np.random.default_rng(0)
    rotation = Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix()
    source = Grid((12, 15, 17), (2.0, 1.5, 2.5), (-10.0, 5.0, 3.0), tuple(rotation.ravel()))
    for target in (Grid((20, 21, 22), (1.3, 1.1, 1.7), (-14.0, 2.0, -1.0)),
                   Grid((9, 10, 11), (3.0, 3.0, 3.0), (-8.3, 6.1, 2.2), tuple(rotation.ravel()))):
        for array in (rng.random(source.shape).astype(np.float32) * 60, rng.random(source.shape) > 0.5,
                      rng.integers(0, 5, source.shape).astype(np.int16)):
            kind = interpolation if array.dtype != np.int16 else "nearest"
            expected, got = resample(array, source, target, kind, 7), resample_scipy(array, source, target, kind, 7)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            if kind != "nearest" and array.dtype != bool:
                np.testing.assert_allclose(got, expected, atol=1e-3)
            else:  # labels: voxels exactly halfway between two may round either way
                assert np.mean(got != expected) < 1e-3
