"""Beam and angle plates against geometry with answers computed by hand."""

import numpy as np
import pytest

from dosediffusion.case import Beam
from dosediffusion.conditioning.beam_geometry import source_direction
from dosediffusion.conditioning.plates import angle_plate, beam_plate
from dosediffusion.geometry import Grid

GRID = Grid((41, 81, 81), (2.0, 2.0, 2.0), (-80.0, -80.0, -40.0))  # iso (0, 0, 0) at index (20, 40, 40)
ISO = (0.0, 0.0, 0.0)
HALF = 10.0  # cube PTV half-width, mm


def _cube():
    points = GRID.index_to_physical(np.indices(GRID.shape).reshape(3, -1).T).reshape(*GRID.shape, 3)
    return np.all(np.abs(points) <= HALF + 1e-6, axis=-1)


def test_source_directions_follow_iec_for_hfs():
    np.testing.assert_allclose(source_direction(0), [0, -1, 0], atol=1e-12)  # anterior
    np.testing.assert_allclose(source_direction(90), [1, 0, 0], atol=1e-12)  # patient left
    np.testing.assert_allclose(source_direction(90, couch_deg=90), [0, 0, -1], atol=1e-12)  # from the feet
    np.testing.assert_allclose(source_direction(0, patient_position="HFP"), [0, 1, 0], atol=1e-12)


def test_single_beam_through_a_cube_is_a_divergent_prism():
    plate = beam_plate(_cube(), GRID, [Beam("A", 0.0, 0, 0, ISO)], inverse_square=False, margin_mm=0.0)
    sad = 1000.0
    # at depth d from the source the aperture half-width is HALF * d / (sad - HALF) (the near face
    # of the cube sets the aperture); check on rows far before and far behind the cube
    for iy in (2, 78):
        y = GRID.index_to_physical(np.array([20, iy, 40]))[1]
        half = HALF * (sad + y) / (sad - HALF)
        row = plate[20, iy, :]
        x = GRID.index_to_physical(np.stack([np.full(81, 20), np.full(81, iy), np.arange(81)], -1))[:, 0]
        assert np.all(row[np.abs(x) < half - 1.0] == 1.0)
        assert np.all(row[np.abs(x) > half + 2.0] == 0.0)
    # the same along z (the prism diverges in both directions of the field)
    col = plate[:, 78, 40]
    z = GRID.index_to_physical(np.stack([np.arange(41), np.full(41, 78), np.full(41, 40)], -1))[:, 2]
    half = HALF * (sad + 76.0) / (sad - HALF)
    assert np.all(col[np.abs(z) < half - 1.0] == 1.0) and np.all(col[np.abs(z) > half + 2.0] == 0.0)


def test_inverse_square_weight_is_one_at_the_isocenter_and_falls_with_depth():
    plate = beam_plate(_cube(), GRID, [Beam("A", 0.0, 0, 0, ISO)])
    assert plate[20, 40, 40] == pytest.approx(1.0, abs=1e-5)
    y_far = GRID.index_to_physical(np.array([20, 78, 40]))[1]
    assert plate[20, 78, 40] == pytest.approx((1000.0 / (1000.0 + y_far)) ** 2, rel=1e-5)


def test_opposed_beams_give_a_symmetric_plate():
    plate = beam_plate(_cube(), GRID, [Beam("A", 0.0, 0, 0, ISO), Beam("P", 180.0, 0, 0, ISO)])
    np.testing.assert_allclose(plate, plate[:, ::-1, :], atol=1e-5)
    assert plate[20, 40, 40] == pytest.approx(2.0, abs=1e-5)


def test_couch_rotation_turns_the_beam_out_of_the_axial_plane():
    lateral = beam_plate(_cube(), GRID, [Beam("L", 90.0, 0, 0, ISO)], inverse_square=False)
    vertex = beam_plate(_cube(), GRID, [Beam("V", 90.0, 0, 90.0, ISO)], inverse_square=False)
    # lateral beam: along x through the cube, nothing far above or below it in y
    assert lateral[20, 40, 2] == 1 and lateral[20, 40, 78] == 1 and lateral[20, 10, 40] == 0
    # couch 90: the beam runs along z (cranio-caudal) through the cube, not along x
    assert vertex[2, 40, 40] == 1 and vertex[38, 40, 40] == 1 and vertex[20, 40, 2] == 0
    assert vertex[20, 40, 40] == 1


def test_arc_samples_every_other_control_point_like_static_beams():
    cps = tuple(float(a) for a in range(0, 100, 10))
    arc = beam_plate(_cube(), GRID, [Beam("Arc", 0.0, 0, 0, ISO, cps, arc_direction="CW")])
    statics = beam_plate(_cube(), GRID, [Beam(f"S{a}", a, 0, 0, ISO) for a in cps[::2]])
    np.testing.assert_allclose(arc, statics, atol=1e-6)


def test_angle_plate_draws_lines_towards_the_sources_near_the_isocenter():
    plate = angle_plate(GRID, [Beam("A", 0.0, 0, 0, ISO), Beam("L", 90.0, 0, 0, ISO)])
    assert plate[20, 10, 40] == 1  # anterior of the isocenter (smaller y): gantry 0
    assert plate[20, 70, 40] == 0  # posterior: no beam from there
    assert plate[20, 40, 70] == 1 and plate[20, 40, 10] == 0  # patient left: gantry 90
    assert plate[15, 10, 40] == 1 and plate[25, 10, 40] == 0 and plate[14, 10, 40] == 0  # slices [15, 25)
    assert plate[20, 10, 43] == 0 and plate[20, 10, 41] == 1  # 4 px wide line


def test_empty_ptv_is_refused():
    with pytest.raises(Exception, match="PTV mask is empty"):
        beam_plate(np.zeros(GRID.shape, bool), GRID, [Beam("A", 0.0, 0, 0, ISO)])


@pytest.mark.parametrize("gantry", [0.0, 40.0, 90.0, 200.0, 315.0])
def test_source_matches_the_gdp_hmm_index_convention(gantry):
    """The challenge's toolkit puts the source at (iso_z, iso_y + 1000 sin(g - 90°) / s_y,
    iso_x + 1000 cos(g - 90°) / s_x) in index space of an HFS image with identity direction."""
    from dosediffusion.conditioning.beam_geometry import source_position

    source_index = GRID.physical_to_index(source_position(ISO, gantry))
    a = np.deg2rad(gantry - 90.0)
    expected = (20.0, 40.0 + 1000.0 * np.sin(a) / 2.0, 40.0 + 1000.0 * np.cos(a) / 2.0)
    np.testing.assert_allclose(source_index, expected, atol=1e-9)
