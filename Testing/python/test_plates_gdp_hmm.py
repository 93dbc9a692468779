"""Our beam plate against the GDP-HMM challenge's definition, written out here as a slow reference
from its description (rays from the source through every PTV-surface voxel to the image edge, in
index space, dilated with a 4³ and eroded with a 3³ box)."""

import numpy as np
import pytest
from scipy import ndimage

from dosediffusion.case import Beam
from dosediffusion.conditioning.plates import beam_plate
from dosediffusion.geometry import Grid


def reference_plate(ptv: np.ndarray, iso_index: np.ndarray, spacing_zyx, gantry: float) -> np.ndarray:
    a = np.deg2rad(gantry - 90.0)
    source = np.array([iso_index[0], iso_index[1] + 1000 * np.sin(a) / spacing_zyx[1],
                       iso_index[2] + 1000 * np.cos(a) / spacing_zyx[2]])
    surface = ptv & ~ndimage.binary_erosion(ptv)
    drawn = np.zeros(ptv.shape, bool)
    for point in np.argwhere(surface):
        direction = point - source
        # march from the source through the point until the ray leaves the image, one voxel at a time
        steps = int(np.abs(direction).max())
        t = np.arange(0, 4 * steps) / steps
        ray = np.rint(source + t[:, None] * direction).astype(int)
        keep = np.all((ray >= 0) & (ray < np.array(ptv.shape)), axis=1)
        drawn[tuple(ray[keep].T)] = True
    drawn = ndimage.binary_dilation(drawn, np.ones((4, 4, 4)))
    return ndimage.binary_erosion(drawn, np.ones((3, 3, 3)))


@pytest.mark.parametrize("gantry", [0.0, 50.0, 90.0, 220.0])
def test_beam_plate_matches_the_challenge_definition(gantry):
    grid = Grid((24, 48, 48), (2.5, 2.5, 2.0), (0.0, 0.0, 0.0))  # the challenge's 2.5 x 2.5 x 2 mm
    z, y, x = np.indices(grid.shape)
    ptv = ((z - 12) / 4.0) ** 2 + ((y - 24) / 5.0) ** 2 + ((x - 22) / 7.0) ** 2 <= 1.0
    iso_index = np.array([12, 24, 22])
    iso = tuple(grid.index_to_physical(iso_index))
    ours = beam_plate(ptv, grid, [Beam("B", gantry, 0.0, 0.0, iso)], inverse_square=False) > 0
    reference = reference_plate(ptv, iso_index, (2.0, 2.5, 2.5), gantry)
    # the same prism up to one voxel at its faces (the challenge's even-sized dilation shifts it
    # by one voxel towards lower indices; ours grows by one voxel on every side)
    grow = np.ones((3, 3, 3), bool)
    inner = (slice(1, -1),) * 3  # the reference's rounded ray ends can miss a voxel on the image border
    assert not (ours & ~ndimage.binary_dilation(reference, grow))[inner].any()
    assert not (reference & ~ndimage.binary_dilation(ours, grow))[inner].any()
    dice = 2 * (ours & reference).sum() / (ours.sum() + reference.sum())
    assert dice > 0.85, dice
    assert ours[tuple(iso_index)] and reference[tuple(iso_index)]
