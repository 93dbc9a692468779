"""One prescription rule for every reader: the plan's levels, else the doses of the PTVs, each level once."""

import numpy as np
import pytest
from case_builders import box_case

from dosediffusion.case import Prescription, Structure
from dosediffusion.io.gdp_hmm import write_gdp_hmm_npz
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_sidecar_case
from dosediffusion.roles import case_prescription


def _two_70_gy_targets():
    """The box with a second 70 Gy PTV and a 56 Gy one, and no prescription of its own."""
    case = box_case()
    z, y, x = np.indices(case.grid.shape)
    case.structures["PTV70_2"] = Structure("PTV70_2", (z == 1) & (y == 8) & (x == 10), "ptv", 70.0)
    case.structures["PTV56"] = Structure("PTV56", (z == 2) & (y == 8) & (x == 10), "ptv", 56.0)
    case.prescription = Prescription([], 30)
    return case


def test_levels_are_distinct_and_highest_first():
    assert Prescription([56, 70, 70.0]).levels_gy == [70.0, 56.0]


def test_the_plan_s_levels_win_else_the_targets_doses():
    case = _two_70_gy_targets()
    assert case_prescription(Prescription([66.0], 33), case.structures) == Prescription([66.0], 33)
    assert case_prescription(Prescription([], 30), case.structures) == Prescription([70.0, 56.0], 30)
    case.structures["PTV56"].role = "other"  # a structure that is not a target gives no level
    assert case_prescription(Prescription([], 30), case.structures).levels_gy == [70.0]


@pytest.mark.parametrize("write", [
    lambda case, folder: write_sidecar_case(case, folder),
    lambda case, folder: write_gdp_hmm_npz(case, folder / "c.npz"),
])
def test_every_reader_gives_two_70_gy_targets_one_level(write, tmp_path):
    case = _two_70_gy_targets()
    written = write(case, tmp_path)
    read = load_case(written if written.suffix == ".npz" else tmp_path)
    assert read.prescription.levels_gy == [70.0, 56.0]
