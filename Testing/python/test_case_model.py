"""Case model and the alias table."""

import json

import numpy as np
import pytest

from dosediffusion.aliases import AliasTable, dose_from_name
from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.errors import GeometryError, InputError
from dosediffusion.geometry import Grid
from dosediffusion.roles import assign_roles

GRID = Grid((4, 5, 6), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))


def _case(**structures):
    masks = {n: Structure(n, np.ones(GRID.shape, bool)) for n in structures}
    return Case("c", GRID, np.zeros(GRID.shape, np.float32), masks)


def test_arrays_off_the_grid_are_refused():
    with pytest.raises(GeometryError, match="dose has shape"):
        Case("c", GRID, np.zeros(GRID.shape), dose=np.zeros((4, 5, 5)))
    with pytest.raises(GeometryError, match="structure 'x'"):
        Case("c", GRID, np.zeros(GRID.shape), {"x": Structure("x", np.zeros((1, 1, 1)))})


def test_volume_in_cc_and_ptv_order():
    case = _case(a=1)
    assert case.structures["a"].volume_cc(GRID) == pytest.approx(4 * 5 * 6 * 12 / 1000)
    case.structures["p1"] = Structure("p1", np.ones(GRID.shape, bool), "ptv", 56.0)
    case.structures["p2"] = Structure("p2", np.ones(GRID.shape, bool), "ptv", 70.0)
    assert [s.name for s in case.with_role("ptv")] == ["p2", "p1"]


def test_prescription_sorted_and_validated():
    assert Prescription([56, 70, 63], 35).levels_gy == [70.0, 63.0, 56.0]
    with pytest.raises(InputError):
        Prescription([-1.0])
    with pytest.raises(InputError):
        Prescription([60.0], 0)


def test_arc_beam_reports_start_and_stop():
    arc = Beam("A1", 181, 30, 0, (0, 0, 0), (181, 270, 0, 179), arc_direction="CW")
    assert arc.is_arc and arc.arc_stop_deg == 179
    static = Beam("B", 90, 0, 0, (1, 2, 3))
    assert not static.is_arc and static.control_point_gantry_deg == (90.0,)


@pytest.mark.parametrize(
    "name, gy", [("PTV70", 70.0), ("PTV_7000", 70.0), ("ptv_59.4Gy", 59.4), ("PTV5940", 59.4), ("PTV_high", None)]
)
def test_dose_from_name(name, gy):
    assert dose_from_name(name.lower()) == gy


def test_assign_roles_matches_aliases_and_reports_the_rest():
    case = _case(**{"Spinal Cord": 1, "BODY": 1, "PTV_63": 1, "PTV_boost": 1, "GTV": 1, "z_ring": 1})
    warnings = assign_roles(case.structures, [70.0])
    roles = {n: s.role for n, s in case.structures.items()}
    assert roles == {"Spinal Cord": "oar", "BODY": "body", "PTV_63": "ptv", "PTV_boost": "ptv", "GTV": "other", "z_ring": "other"}
    assert case.structures["Spinal Cord"].canonical == "SpinalCord"
    assert case.structures["PTV_63"].prescription_gy == 63.0
    assert case.structures["PTV_boost"].prescription_gy == 70.0  # the plan's only level
    assert any("GTV" in w and "z_ring" not in w for w in warnings)


def test_ptv_without_any_dose_is_reported():
    case = _case(PTV_a=1, PTV_b=1)
    warnings = assign_roles(case.structures, [70.0, 56.0])
    assert any("PTV_a" in w and "PTV_b" in w and "prescription" in w for w in warnings)


def test_custom_alias_table_and_malformed_table(tmp_path):
    path = tmp_path / "aliases.json"
    path.write_text(json.dumps({"body": {"Body": ["skin"]}, "oar": {"Cord": ["myelon"]}, "ptv": ["^ziel"]}))
    table = AliasTable.load(path)
    assert table.match("Myelon").role == "oar" and table.match("Ziel_60").prescription_gy == 60.0
    path.write_text(json.dumps({"oar": {}}))
    with pytest.raises(InputError, match="malformed alias table"):
        AliasTable.load(path)


def test_resampled_case_keeps_volumes_and_doses():
    from case_builders import box_case

    case = box_case()
    fine = Grid((24, 32, 40), tuple(s / 2 for s in case.grid.spacing),
                tuple(o - s / 4 for o, s in zip(case.grid.origin, case.grid.spacing, strict=True)))
    moved = case.resampled(fine)
    assert moved.grid == fine and moved.ct.shape == fine.shape
    for name, s in case.structures.items():
        assert moved.structures[name].volume_cc(fine) == pytest.approx(s.volume_cc(case.grid), rel=0.15), name
        assert moved.structures[name].role == s.role
    # fine voxel (12, 16, 20) lies a quarter coarse voxel before the dose peak at coarse (6, 8, 10)
    # along each axis: trilinear weights 0.75/0.25 over the 8 corners of the cone 70 - 5 * distance
    assert np.allclose(case.grid.physical_to_index(fine.index_to_physical(np.array([12, 16, 20]))), [5.75, 7.75, 9.75])
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T
    weights = np.prod(np.where(corners == 0, 0.75, 0.25), axis=1)
    expected = np.sum(weights * (70.0 - 5.0 * np.linalg.norm(corners, axis=1)))
    assert moved.dose[12, 16, 20] == pytest.approx(expected, abs=1e-3)
    assert moved.beams == case.beams and moved.prescription == case.prescription
