"""The pyRadPlan dose engine bridge (``dosediffusion_training.synth.engine``) on water phantoms.

pyRadPlan runs in its own environment (``DoseDiffusionTraining/synth/setup_engine_env.sh``, called
by ``bash Testing/install_test_deps.sh``); a missing environment is an error, not a skip: CI makes it.

Phantom: a water cylinder (axis along z) in air on a non-cubic grid, a spherical PTV off the
centre by different amounts in x, y and z (so that any swap of axes or origins between our
(z, y, x) arrays and pyRadPlan's SimpleITK images moves the dose away from it), an OAR sphere
beside it (8 mm gap). Plan: 5 equidistant coplanar 6 MV beams, 60 Gy in 30 fractions, few
optimiser iterations, on a 5 mm grid (pyRadPlan's dose grid is then the CT grid itself). The
single-beam test uses an anisotropic grid (5, 4.5, 6 mm), so the dose is computed on pyRadPlan's
5 mm dose grid and resampled: it checks the geometry of that path (entry side, lateral position).
About 25 s on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from dosediffusion.errors import InputError
from dosediffusion_training.synth import engine

pytestmark = pytest.mark.peers  # a helper environment: see pyproject's markers

SPACING = (5.0, 5.0, 5.0)  # x, y, z mm
SHAPE = (30, 38, 42)  # z, y, x
ANISOTROPIC_SPACING = (5.0, 4.5, 6.0)
ANISOTROPIC_SHAPE = (26, 40, 40)
BODY_RADIUS_MM = 80.0
PTV_CENTRE = (25.0, -20.0, 12.0)  # x, y, z mm
PTV_RADIUS_MM = 20.0
OAR_CENTRE = (PTV_CENTRE[0] - 43.0, PTV_CENTRE[1], PTV_CENTRE[2])
OAR_RADIUS_MM = 15.0
RX_GY = 60.0
FRACTIONS = 30


def _origin(spacing=SPACING, shape=SHAPE):
    """A grid centred on the patient origin: (x, y, z) mm of voxel [0, 0, 0]."""
    return tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing, strict=True))


def _coordinates(spacing=SPACING, shape=SHAPE):
    """Patient coordinates (x, y, z) mm of every voxel centre, each (z, y, x)."""
    axes = [np.arange(n) * s + o for n, s, o in zip(shape[::-1], spacing, _origin(spacing, shape), strict=True)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return x, y, z


def _sphere(centre, radius, spacing=SPACING, shape=SHAPE):
    x, y, z = _coordinates(spacing, shape)
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def _phantom(spacing=SPACING, shape=SHAPE):
    x, y, _ = _coordinates(spacing, shape)
    body = x**2 + y**2 <= BODY_RADIUS_MM**2
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    structures = [("PTV", _sphere(PTV_CENTRE, PTV_RADIUS_MM, spacing, shape), "ptv", RX_GY),
                  ("OAR", _sphere(OAR_CENTRE, OAR_RADIUS_MM, spacing, shape), "oar", 0.0),
                  ("BODY", body, "body", 0.0)]
    return ct, structures


def _plan(beams, max_iterations, spacing=SPACING, shape=SHAPE):
    ct, structures = _phantom(spacing, shape)
    return engine.compute_dose(ct, spacing, _origin(spacing, shape), structures, FRACTIONS, beams, PTV_CENTRE,
                               max_iterations=max_iterations, timeout_s=300)


@pytest.fixture(scope="module")
def five_beam_plan():
    beams = [(g, 0.0) for g in (0.0, 72.0, 144.0, 216.0, 288.0)]
    return _plan(beams, max_iterations=100)


def _d95(values):
    return float(np.percentile(values, 5))


def test_five_beam_plan_covers_the_ptv(five_beam_plan):
    dose, info = five_beam_plan
    _, structures = _phantom()
    ptv, oar, body = (mask for _, mask, _, _ in structures)
    assert dose.shape == SHAPE and dose.dtype == np.float32
    assert info["pyradplan_version"] == "0.5.0"
    # pyRadPlan places our masks at the same patient coordinates as we do (its world frame is ours)
    x, y, z = _coordinates()
    ptv_centroid = [float(a[ptv].mean()) for a in (x, y, z)]
    np.testing.assert_allclose(info["target_centroid_mm"], ptv_centroid, atol=0.01)
    assert info["num_bixels"] == info["bixel_weights"].size > 0
    assert np.all(info["bixel_weights"] >= 0)
    # the optimiser ran on a finite objective: it converged or used its iterations, never "ABNORMAL"
    # (falloff shells ranked after the body owned no voxels, and their objectives were 0/0)
    assert "ABNORMAL" not in info["optimizer_message"].upper() and info["optimizer_message"], info
    assert np.all(dose >= 0)
    # the maximum lies in the PTV (one voxel of margin for the dose grid's interpolation)
    near_ptv = _sphere(PTV_CENTRE, PTV_RADIUS_MM + max(SPACING))
    assert near_ptv[np.unravel_index(np.argmax(dose), dose.shape)]
    assert abs(_d95(dose[ptv]) - RX_GY) <= 0.10 * RX_GY, _d95(dose[ptv])
    assert abs(float(dose[ptv].mean()) - RX_GY) <= 0.05 * RX_GY, dose[ptv].mean()
    assert float(dose.max()) <= 1.2 * RX_GY
    assert float(dose[oar].mean()) <= 0.35 * RX_GY, dose[oar].mean()
    # no dose outside the body: the outline limits the dose calculation
    assert float(dose[~body].max()) == 0.0
    assert float(dose[body].min()) >= 0.0 and float(dose[body].mean()) > 0.05 * RX_GY


def test_five_beam_dose_sits_at_the_ptv(five_beam_plan):
    """Coordinate conventions: the high dose is where the PTV is in our (z, y, x) arrays."""
    dose, _ = five_beam_plan
    x, y, z = _coordinates()
    high = dose >= 0.95 * RX_GY
    centroid = np.array([a[high].mean() for a in (x, y, z)])
    ptv = _sphere(PTV_CENTRE, PTV_RADIUS_MM)
    ptv_centroid = np.array([a[ptv].mean() for a in (x, y, z)])
    assert np.all(np.abs(centroid - ptv_centroid) <= 0.5 * np.asarray(SPACING)), (centroid, ptv_centroid)
    # most of the high dose is inside the PTV
    assert high[ptv].sum() >= 0.9 * ptv.sum()
    assert high.sum() <= 1.6 * ptv.sum()


def test_gantry_zero_enters_from_anterior_on_a_resampled_grid():
    """One beam at gantry 0 irradiates from the anterior side (−y in LPS): on the beam's axis the
    dose falls from the anterior entry (past the build-up) to the posterior exit; across the beam
    (x and z at the PTV's depth) it is centred on the PTV. Anisotropic CT grid: pyRadPlan computes
    on its 5 mm dose grid and resamples onto ours."""
    spacing, shape = ANISOTROPIC_SPACING, ANISOTROPIC_SHAPE
    dose, info = _plan([(0.0, 0.0)], max_iterations=20, spacing=spacing, shape=shape)
    assert dose.shape == shape
    x, y, z = _coordinates(spacing, shape)
    ptv = _sphere(PTV_CENTRE, PTV_RADIUS_MM, spacing, shape)
    np.testing.assert_allclose(info["target_centroid_mm"], [float(a[ptv].mean()) for a in (x, y, z)], atol=0.01)
    iz = int(np.argmin(np.abs(z[:, 0, 0] - PTV_CENTRE[2])))
    ix = int(np.argmin(np.abs(x[0, 0, :] - PTV_CENTRE[0])))
    column, ys = dose[iz, :, ix], y[iz, :, ix]
    inside = np.sqrt(x[0, 0, ix] ** 2 + ys**2) <= BODY_RADIUS_MM
    entry, exit_ = ys[inside].min(), ys[inside].max()
    anterior = column[(ys > entry + 10.0) & (ys < entry + 30.0)].mean()
    posterior = column[(ys < exit_ - 10.0) & (ys > exit_ - 30.0)].mean()
    assert anterior > 1.5 * posterior, (anterior, posterior)
    # the field's cross-section at the PTV's depth is centred on the PTV (in x and in z)
    iy = int(np.argmin(np.abs(y[0, :, 0] - PTV_CENTRE[1])))
    plane = dose[:, iy, :]
    field = plane >= 0.5 * plane.max()
    for axis, coordinate in ((0, x[:, iy, :]), (2, z[:, iy, :])):
        centre = coordinate[field].mean()
        assert abs(centre - PTV_CENTRE[axis]) <= 0.5 * spacing[axis], (axis, centre)
    assert np.ptp(x[:, iy, :][field]) <= 2 * PTV_RADIUS_MM + 2 * 5.0 + spacing[0]  # bixels of 5 mm
    assert float(dose[x**2 + y**2 > BODY_RADIUS_MM**2].max()) == 0.0


def test_missing_engine_environment_is_a_clear_input_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOSEDIFFUSION_ENGINE_ENV", str(tmp_path / "nowhere"))
    ct, structures = _phantom()
    with pytest.raises(InputError, match="setup_engine_env.sh"):
        engine.compute_dose(ct, SPACING, _origin(), structures, FRACTIONS, [(0.0, 0.0)], PTV_CENTRE)


def test_bad_request_is_an_input_error():
    ct, structures = _phantom()
    with pytest.raises(InputError, match="role"):
        engine.compute_dose(ct, SPACING, _origin(), [("PTV", structures[0][1], "target", 60.0)], FRACTIONS,
                            [(0.0, 0.0)], PTV_CENTRE)
    with pytest.raises(InputError, match="no structure has role 'ptv'"):
        engine.compute_dose(ct, SPACING, _origin(), structures[1:], FRACTIONS, [(0.0, 0.0)], PTV_CENTRE)


def test_worker_failure_is_reported_in_one_line():
    """A request the worker refuses (isocentre outside the CT) comes back as its one-line message."""
    ct, structures = _phantom()
    with pytest.raises(InputError, match="pyRadPlan dose engine failed: .*isocenter"):
        engine.compute_dose(ct, SPACING, _origin(), structures, FRACTIONS, [(0.0, 0.0)], (1000.0, 0.0, 0.0))


def test_overlaps_go_to_the_lowest_priority_and_shells_rank_before_the_body():
    from dosediffusion_training.synth.pyradplan_worker import overlap_priorities, owned_voxels

    request = {"roles": ["ptv", "ptv", "oar", "body"], "prescriptions": [60.0, 54.0, 0.0, 0.0]}
    priorities, shell = overlap_priorities(request)
    assert priorities == [0, 1, 2, 4] and shell == 3
    body = np.ones((1, 1, 6), bool)
    high, low, oar = (np.zeros_like(body) for _ in range(3))
    high[..., 0:2], low[..., 0:3], oar[..., 2:4] = True, True, True
    shell_mask = np.zeros_like(body)
    shell_mask[..., 3:5] = True
    # high keeps 2, low keeps 1 (voxel 2), the OAR 1 (voxel 3), the shell 1 (voxel 4), the body 1 (voxel 5)
    assert owned_voxels([high, low, oar, body, shell_mask], [*priorities, shell]) == [2, 1, 1, 1, 1]
    assert owned_voxels([high, high.copy()], [0, 0]) == [2, 2]  # ties keep the voxel in both
