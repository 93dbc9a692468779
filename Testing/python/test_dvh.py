"""DVH on analytic shapes in a 1 Gy/mm gradient: sphere and cylinder (large and small)."""

import numpy as np
import pytest

from dosediffusion.case import Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.rasterize import rasterize
from dosediffusion.metrics.dvh import compute_dvh


def _setup(spacing, radius, with_contours=True, centre=(0.3, -0.7, 0.0)):
    size = 2 * radius + 30
    shape = tuple(int(np.ceil(size / s)) for s in spacing[::-1])
    origin = -np.array(shape[::-1]) * np.array(spacing) / 2
    grid = Grid(shape, spacing, tuple(origin))
    zs = grid.index_to_physical(np.stack([np.arange(shape[0]), np.zeros(shape[0]), np.zeros(shape[0])], 1))[:, 2]
    t = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    contours = []
    for z in zs:
        r2 = radius**2 - (z - centre[2]) ** 2
        if r2 > 0:
            r = np.sqrt(r2)
            contours.append(np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t), np.full_like(t, z)], 1))
    mask, _ = rasterize(contours, grid)
    points = grid.index_to_physical(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    dose = (points[..., 0] + 100.0).astype(np.float32)  # 1 Gy/mm along x
    stack_cc = sum(0.5 * abs(np.dot(c[:, 0], np.roll(c[:, 1], -1)) - np.dot(c[:, 1], np.roll(c[:, 0], -1)))
                   for c in contours) * spacing[2] / 1000
    return grid, Structure("s", mask, contours=contours if with_contours else None), dose, stack_cc, centre[0] + 100.0


@pytest.mark.parametrize("spacing", [(2.5, 2.5, 2.5), (4.0, 4.0, 3.0)])
def test_large_sphere_in_a_gradient(spacing):
    grid, sphere, dose, stack_cc, centre_dose = _setup(spacing, radius=15.0)  # ~14 cc
    dvh = compute_dvh(dose, grid, sphere)
    assert dvh.volume_cc == pytest.approx(stack_cc, rel=0.01)
    assert dvh.mean_gy == pytest.approx(centre_dose, abs=0.1)  # symmetric about its centre
    assert dvh.dose_at_volume_percent(50) == pytest.approx(centre_dose, abs=0.5)
    # for a sphere in a linear gradient, D at x % solves a cubic; D95 and D5 are symmetric about the centre
    d95, d5 = dvh.dose_at_volume_percent(95), dvh.dose_at_volume_percent(5)
    assert (d95 + d5) / 2 == pytest.approx(centre_dose, abs=0.5)
    # the cap of height h above the plane x = c + 15 - h holds pi h^2 (3R - h) / 3 of the volume
    h = 15.0 - (d5 - centre_dose)
    assert np.pi * h**2 * (45.0 - h) / 3 / 1000 == pytest.approx(0.05 * dvh.volume_cc, rel=0.1)
    assert dvh.volume_at_dose_percent(centre_dose) == pytest.approx(50.0, abs=2.0)
    assert dvh.max_gy == pytest.approx(centre_dose + 15.0, abs=1.0)


def test_small_sphere_half_a_cc():
    grid, sphere, dose, stack_cc, centre_dose = _setup((3.0, 3.0, 3.0), radius=4.92)  # 0.5 cc
    dvh = compute_dvh(dose, grid, sphere)
    assert dvh.volume_cc == pytest.approx(stack_cc, rel=0.05)
    assert dvh.dose_at_volume_percent(95) > 0  # peers return 0 Gy here
    assert dvh.mean_gy == pytest.approx(centre_dose, abs=1.0)
    assert (dvh.dose_at_volume_percent(98) + dvh.dose_at_volume_percent(2)) / 2 == pytest.approx(centre_dose, abs=1.0)


def test_mask_only_structures_are_supersampled_too():
    grid, sphere, dose, _, centre_dose = _setup((3.0, 3.0, 3.0), radius=10.0, with_contours=False)
    dvh = compute_dvh(dose, grid, sphere)
    assert dvh.volume_cc == pytest.approx(sphere.volume_cc(grid), rel=1e-6)
    assert dvh.mean_gy == pytest.approx(centre_dose, abs=0.6)


def test_cumulative_and_differential_agree():
    grid, sphere, dose, _, _ = _setup((2.5, 2.5, 2.5), radius=12.0)
    dvh = compute_dvh(dose, grid, sphere)
    edges, percent = dvh.cumulative(0.5)
    assert percent[0] == pytest.approx(100.0) and np.all(np.diff(percent) <= 1e-9)
    d_edges, cc = dvh.differential(0.5)
    assert cc.sum() == pytest.approx(dvh.volume_cc)
    assert dvh.volume_at_dose_cc(0.0) == pytest.approx(dvh.volume_cc)
    assert dvh.volume_at_dose_cc(dvh.max_gy + 1) == 0.0


def test_empty_structure_is_refused():
    grid = Grid((4, 4, 4), (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError, match="empty"):
        compute_dvh(np.zeros(grid.shape), grid, Structure("x", np.zeros(grid.shape, bool)))


@pytest.mark.parametrize("position", ["HFP", "FFS"])
def test_patient_orientation_does_not_change_the_dvh(position):
    from phantoms import make_phantom_case

    hfs, _ = make_phantom_case()
    other, _ = make_phantom_case(position=position)
    for name in ("PTV_60", "Esophagus", "SpinalCord"):
        a = compute_dvh(hfs.dose, hfs.grid, hfs.structures[name])
        b = compute_dvh(other.dose, other.grid, other.structures[name])
        assert b.volume_cc == pytest.approx(a.volume_cc, rel=1e-3), name
        assert b.mean_gy == pytest.approx(a.mean_gy, abs=0.05), name
        assert b.dose_at_volume_percent(95) == pytest.approx(a.dose_at_volume_percent(95), abs=0.1), name
