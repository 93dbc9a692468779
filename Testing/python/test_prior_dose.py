"""The ray-traced prior dose against the physics it claims: single beams on water phantoms (depth dose,
field edges with divergence, a dense slab), patient position and couch, arc thinning, dose support,
normalisation and refusals. Expected values come from the geometry of each phantom, not from the output."""

import numpy as np
import pytest

import dosediffusion.conditioning.prior_dose as prior_module
from dosediffusion.case import DOSE_SUPPORT, Beam, Case, Prescription, Structure
from dosediffusion.conditioning.prior_dose import (
    PriorDoseConfig,
    beam_directions,
    prior_dose,
    relative_electron_density,
)
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid

N, VOXEL = 64, 2.5  # 64³ voxels of 2.5 mm; voxel 32 on every axis is the isocentre (0, 0, 0)
BODY_LO, BODY_HI = 6, 58  # the water box: indices [6, 58] on every axis, symmetric about voxel 32
PTV_HALF = (6, 4, 6)  # the PTV: ±6 voxels in x and z, ±4 in y (index half sizes)
CONFIG = PriorDoseConfig()


def physical(index: np.ndarray) -> np.ndarray:
    """Patient coordinate (mm) of voxel indices along any axis of the phantom grid."""
    return (np.asarray(index, dtype=float) - 32) * VOXEL


def water_case(beams, *, hu_slab=None, position="HFS", support=None, second_ptv=False) -> Case:
    """A water box in air with a box PTV (70 Gy) at the isocentre; ``hu_slab``: (HU, y index from, to)."""
    grid = Grid((N, N, N), (VOXEL,) * 3, (-32 * VOXEL,) * 3)
    z, y, x = np.indices(grid.shape)
    body = np.all([(a >= BODY_LO) & (a <= BODY_HI) for a in (z, y, x)], axis=0)
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    if hu_slab is not None:
        hu, y0, y1 = hu_slab
        ct[body & (y >= y0) & (y < y1)] = hu
    ptv = (abs(x - 32) <= PTV_HALF[0]) & (abs(y - 32) <= PTV_HALF[1]) & (abs(z - 32) <= PTV_HALF[2])
    structures = {"PTV70": Structure("PTV70", ptv, "ptv", 70.0), "BODY": Structure("BODY", body, "body")}
    levels = [70.0]
    if second_ptv:
        lateral = (x >= 42) & (x <= 56) & (abs(y - 32) <= PTV_HALF[1]) & (abs(z - 32) <= PTV_HALF[2])
        structures["PTV56"] = Structure("PTV56", lateral, "ptv", 56.0)
        levels.append(56.0)
    if support is not None:
        structures[DOSE_SUPPORT] = Structure(DOSE_SUPPORT, support, "other")
    return Case("water", grid, ct, structures, list(beams), Prescription(levels, 35), meta={"PatientPosition": position})


def static(gantry, couch=0.0, sad=1000.0) -> Beam:
    return Beam(f"G{gantry:g}", gantry, 0.0, couch, (0.0, 0.0, 0.0), sad_mm=sad)


def half_max_edge(profile: np.ndarray, positions: np.ndarray, centre_value: float) -> float:
    """Where ``profile`` (rising towards the centre, falling beyond it) first falls below half of
    ``centre_value`` going outwards from the centre, by linear interpolation (mm)."""
    half = 0.5 * centre_value
    k = int(np.flatnonzero(profile < half)[0])
    return float(np.interp(half, [profile[k], profile[k - 1]], [positions[k], positions[k - 1]]))


def test_electron_density_of_air_water_and_bone():
    import torch

    rho = relative_electron_density(torch.tensor([-1000.0, -2000.0, 0.0, 1950.0]))
    assert rho.tolist() == pytest.approx([0.0, 0.0, 1.0, 2.0])


def test_depth_dose_beyond_buildup_falls_as_attenuation_and_inverse_square():
    """Gantry 0 (HFS) enters at the anterior face (LPS −y); on the central axis, beyond 5 build-up lengths,
    log(dose · (t / SAD)²) is a straight line in depth of slope −μ. Without the inverse square the slope
    would be off by about 40 %, so the fit tells the two apart."""
    dose = prior_dose(water_case([static(0.0)]), CONFIG)
    iy = np.arange(BODY_LO, BODY_HI + 1)
    y = physical(iy)
    surface = physical(BODY_LO) - VOXEL / 2
    depth = y - surface
    axis = dose[32, iy, 32]
    t = y + 1000.0  # distance from the source (at y = −SAD) along the axis
    beyond = depth >= 5 * CONFIG.buildup_mm
    slope, _ = np.polyfit(depth[beyond], np.log(axis[beyond] * (t[beyond] / 1000.0) ** 2), 1)
    assert slope == pytest.approx(-CONFIG.mu_per_mm, rel=0.03)
    raw_slope, _ = np.polyfit(depth[beyond], np.log(axis[beyond]), 1)
    assert abs(raw_slope + CONFIG.mu_per_mm) > 0.3 * CONFIG.mu_per_mm  # the inverse square is in the dose
    assert axis[0] < axis[np.argmin(abs(depth - 3 * CONFIG.buildup_mm))]  # a build-up at the surface


@pytest.mark.parametrize("sad", [1000.0, 500.0])
def test_field_edge_lies_where_the_ptv_projects_with_divergence(sad):
    """The lateral 50 % point at two depths lies on the line from the source past the PTV's widest
    projected corner: its upstream face (y = −4.5 voxels), x = ±6.5 voxels, magnified to each depth."""
    dose = prior_dose(water_case([static(0.0, sad=sad)]), CONFIG)
    face_t, face_x = sad + physical(32 - PTV_HALF[1] - 0.5), physical(32 + PTV_HALF[0] + 0.5)
    edge_at_iso = face_x * sad / face_t
    ix = np.arange(32, BODY_HI + 1)
    edges = {}
    for iy in (14, 50):  # 45 mm upstream of the isocentre and 45 mm downstream
        t = sad + physical(iy)
        profile = dose[32, iy, ix]
        edges[iy] = half_max_edge(profile, physical(ix), profile[0])
        assert edges[iy] == pytest.approx(edge_at_iso * t / sad, abs=0.5 * VOXEL)
        mirrored = dose[32, iy, 64 - ix]  # the field is symmetric about the axis
        assert half_max_edge(mirrored, physical(ix), mirrored[0]) == pytest.approx(edges[iy], abs=0.1)
    assert edges[50] - edges[14] == pytest.approx(edge_at_iso * (physical(50) - physical(14)) / sad, abs=0.3 * VOXEL)


def test_dense_slab_attenuates_downstream_as_its_density_says():
    """A bone slab (1000 HU, 20 mm) between the surface and the PTV: downstream of it the dose relative to
    upstream of it falls by exp(−μ · (ρ − 1) · 20 mm) more than in water; upstream nothing changes."""
    import torch

    y0, y1 = 16, 24  # voxels 16..23: 8 × 2.5 = 20 mm
    slab = prior_dose(water_case([static(0.0)], hu_slab=(1000.0, y0, y1)), CONFIG)
    water = prior_dose(water_case([static(0.0)]), CONFIG)
    rho = float(relative_electron_density(torch.tensor(1000.0)))
    expected = np.exp(-CONFIG.mu_per_mm * (rho - 1.0) * (y1 - y0) * VOXEL)
    up, down = 12, 50
    ratio = (slab[32, down, 32] / slab[32, up, 32]) / (water[32, down, 32] / water[32, up, 32])
    assert ratio == pytest.approx(expected, rel=0.01)
    assert expected < 0.97  # the slab is visible at all


def test_prone_patient_gets_gantry_zero_from_the_other_side():
    """HFP: gantry 0 stands above the prone patient's back (LPS +y), so the dose is the HFS dose mirrored
    in y (the phantom is symmetric about the isocentre), entering at high y."""
    hfs = prior_dose(water_case([static(0.0)]), CONFIG)
    hfp = prior_dose(water_case([static(0.0)], position="HFP"), CONFIG)
    assert hfs[32, 10, 32] > 1.3 * hfs[32, 54, 32]
    assert hfp[32, 54, 32] > 1.3 * hfp[32, 10, 32]
    np.testing.assert_allclose(hfp[1:, 1:, 1:], hfs[1:, 1:, 1:][:, ::-1, :], atol=0.01 * hfs.max())


def test_couch_rotation_turns_a_lateral_beam_to_the_feet():
    """HFS gantry 90 with couch 0 comes from the patient's left (+x); with couch 90 the source lies at
    −z (feet) and the dose falls from the feet towards the head."""
    lateral = prior_dose(water_case([static(90.0)]), CONFIG)
    assert lateral[32, 32, 54] > 1.3 * lateral[32, 32, 10]
    couch = prior_dose(water_case([static(90.0, couch=90.0)]), CONFIG)
    assert couch[10, 32, 32] > 1.3 * couch[54, 32, 32]
    assert couch[32, 32, 54] == pytest.approx(couch[32, 32, 10], rel=1e-3)  # no longer lateral
    np.testing.assert_allclose(couch[1:, 1:, 1:], lateral[1:, 1:, 1:].transpose(2, 1, 0)[::-1], atol=0.02 * lateral.max())


def test_arc_control_points_are_thinned_to_the_arc_step():
    """An arc sampled every 2° from 0° to 90° is traced every 10th control point (20° apart, the smallest
    stride that keeps them ≥ 20° apart): the same dose as static beams at 0°, 20°, …, 80°."""
    arc = Beam("Arc", 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), tuple(float(a) for a in range(0, 92, 2)), arc_direction="CW")
    directions = beam_directions([arc], CONFIG.arc_step_deg)
    assert [d[0] for d in directions] == [0.0, 20.0, 40.0, 60.0, 80.0]
    assert len(beam_directions([arc], 15.0)) == 6  # stride 8: 0, 16, …, 80
    np.testing.assert_allclose(prior_dose(water_case([arc]), CONFIG),
                               prior_dose(water_case([static(g) for g in (0, 20, 40, 60, 80)]), CONFIG), atol=1e-3)


def test_zero_outside_the_dose_support_and_d97_of_the_highest_ptv_is_its_prescription():
    case = water_case([static(0.0)], second_ptv=True)
    dose = prior_dose(case, CONFIG)
    body = case.body.mask
    assert np.all(dose[~body] == 0) and dose[body].min() >= 0
    assert np.percentile(dose[case.structures["PTV70"].mask], 3) == pytest.approx(70.0, rel=1e-4)
    # a PTV56 beside the PTV70 (apertures apart, same depth): its fluence is weighted by 56 / 70
    assert dose[32, 32, 49] / dose[32, 32, 32] == pytest.approx(56.0 / 70.0, rel=0.02)
    support = body.copy()
    support[:, :, :20] = False
    limited = water_case([static(0.0), static(120.0), static(240.0)], support=support)
    assert limited.dose_support() is not None
    dose = prior_dose(limited, CONFIG)
    assert np.all(dose[~support] == 0) and dose[support].max() > 0


def test_bad_input_is_refused_before_any_beam_is_traced(monkeypatch):
    def traced(*args, **kwargs):
        raise AssertionError("a beam was traced before the input was checked")

    monkeypatch.setattr(prior_module, "_direction_dose", traced)
    with pytest.raises(InputError, match="beams"):
        prior_dose(water_case([]))
    no_ptv = water_case([static(0.0)])
    no_ptv.structures["PTV70"].role, no_ptv.structures["PTV70"].prescription_gy = "oar", None
    with pytest.raises(InputError, match="target"):
        prior_dose(no_ptv)
    unknown = water_case([static(0.0)], position="HFDL")
    with pytest.raises(InputError, match="patient position"):
        prior_dose(unknown)
    outside = np.zeros((N, N, N), bool)
    outside[:4] = True
    with pytest.raises(InputError, match="outside the dose support"):
        prior_dose(water_case([static(0.0)], support=outside))
