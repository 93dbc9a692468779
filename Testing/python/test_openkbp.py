"""OpenKBP patients: both forms read to one case, CT in HU, roles and prescriptions, the submission file,
the challenge's scores on hand-computed cases, and bad folders refused in one line.

The real patients are read from ``../shared/data/openkbp`` (never copied into the repository); the
tests that need them skip, saying so, where that folder is absent."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from model_builders import tiny_pipeline
from openkbp_data import OPENKBP, needs_openkbp

from dosediffusion.case import DOSE_SUPPORT
from dosediffusion.cli.main import main
from dosediffusion.io.load import load_case
from dosediffusion.io.openkbp import (
    SHAPE,
    from_case_order,
    read_openkbp_dose_csv,
    read_sparse_csv,
    to_case_order,
    write_openkbp_dose_csv,
)
from dosediffusion.metrics.openkbp import dose_score, dvh_points, dvh_score, openkbp_scores

VOXEL_MM = (3.5, 3.0, 2.5)  # as voxel_dimensions.csv lists them: A's axes (A→P, R→L, slice)


def _index(a0: int, a1: int, a2: int) -> int:
    return int(np.ravel_multi_index((a0, a1, a2), SHAPE))


def _block(lo: int, hi: int) -> np.ndarray:
    """The C-order indices of the cube [lo, hi)³ of the challenge's array."""
    axis = np.arange(lo, hi)
    return np.ravel_multi_index(np.meshgrid(axis, axis, axis, indexing="ij"), SHAPE).ravel()


def _write(path, indices, values=None) -> None:
    rows = [f"{i},{'' if values is None else values[k]}" for k, i in enumerate(indices)]
    path.write_text("\n".join([",data", *rows]) + "\n")


@pytest.fixture
def small_patient(tmp_path):
    """A made-up OpenKBP folder: a 20³ block of muscle (file value 1040) in air, one voxel of fat (900),
    one of dense bone beyond the 12-bit range (5000), a PTV70 cube, the cord and a dose on the block."""
    folder = tmp_path / "pt_9"
    folder.mkdir()
    (folder / "voxel_dimensions.csv").write_text("\n".join(f"{v:.18e}" for v in VOXEL_MM) + "\n")
    body = _block(54, 74)
    ct = np.full(body.size, 1040.0)
    ct[body == _index(60, 60, 60)] = 900.0
    ct[body == _index(70, 70, 70)] = 5000.0
    _write(folder / "ct.csv", body, ct)
    _write(folder / "possible_dose_mask.csv", body)
    _write(folder / "PTV70.csv", _block(62, 66))
    _write(folder / "SpinalCord.csv", [_index(56, 64, 64), _index(57, 64, 64)])
    _write(folder / "RightParotid.csv", [_index(64, 58, 64)])
    _write(folder / "dose.csv", body, np.linspace(1.0, 70.0, body.size))
    return folder


def test_ct_is_hu_from_the_file_value_less_1000_clipped_to_12_bits(small_patient):
    case = load_case(small_patient)
    hu = from_case_order(case.ct)
    assert hu[64, 64, 64] == 40.0  # muscle: file value 1040
    assert hu[60, 60, 60] == -100.0  # fat: 900
    assert hu[70, 70, 70] == 3095.0  # 5000 clipped to 4095
    assert hu[0, 0, 0] == -1000.0  # a voxel the sparse file leaves out is air
    assert case.body.mask.sum() == 20**3  # the body found from the CT is the block


def test_array_axes_map_to_patient_directions(small_patient):
    case = load_case(small_patient)
    # spacing (x, y, z) from A's (A→P, R→L, slice) dimensions; identity direction, centred on the origin
    assert case.grid.spacing == pytest.approx((VOXEL_MM[1], VOXEL_MM[0], VOXEL_MM[2]))
    assert np.allclose(case.grid.matrix, np.eye(3))
    assert np.allclose(case.grid.index_to_physical(np.array([63.5, 63.5, 63.5])), 0.0)
    cord = case.structures["SpinalCord"].mask
    # A[56, 64, 64] lands at case index (z, y, x) = (127 − 64, 56, 64): the slice axis runs head → feet
    assert cord[127 - 64, 56, 64] and cord[127 - 64, 57, 64] and cord.sum() == 2
    assert np.array_equal(from_case_order(to_case_order(np.arange(8).reshape(2, 2, 2))), np.arange(8).reshape(2, 2, 2))


def test_roles_prescriptions_and_plan(small_patient):
    case = load_case(small_patient)
    ptv = case.structures["PTV70"]
    assert (ptv.role, ptv.prescription_gy) == ("ptv", 70.0)
    assert case.prescription.levels_gy == [70.0] and case.prescription.fractions == 35
    # OARs under their TG-263 names; the possible-dose mask is the dose's support, not a structure to score
    assert case.structures["Parotid_R"].role == "oar" and "RightParotid" not in case.structures
    assert case.structures[DOSE_SUPPORT].role == "other" and case.dose_support().sum() == 20**3
    assert [b.gantry_deg for b in case.beams] == [float(a) for a in range(0, 360, 40)]
    centroid = case.grid.index_to_physical(np.argwhere(ptv.mask).mean(axis=0))
    assert all(np.allclose(b.isocenter_mm, centroid) for b in case.beams)
    assert case.meta["PatientPosition"] == "HFS"
    assert not any("unmatched" in w or "no role" in w for w in case.warnings), case.warnings


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "ct.csv").unlink(), "ct.csv: the OpenKBP patient folder has no ct.csv"),
    (lambda f: (f / "possible_dose_mask.csv").unlink(), "has no possible_dose_mask.csv"),
    (lambda f: (f / "voxel_dimensions.csv").write_text("3.5\n3.0\n"), "three positive sizes in mm"),
    (lambda f: _write(f / "PTV70.csv", [5, 128**3]), "PTV70.csv: index 2097152 (row 2) is outside the 128 × 128 × 128"),
    (lambda f: _write(f / "dose.csv", [5, 6], ["1.5", "high"]), "dose.csv: row 3: value 'high' is not a number"),
    (lambda f: _write(f / "ct.csv", ["5", "x7"], [1, 2]), "ct.csv: row 3: index 'x7' is not a number"),
    (lambda f: (f / "Brainstem.csv").write_text("index,value\n1,\n"), "Brainstem.csv: not an OpenKBP sparse file"),
])
def test_an_almost_openkbp_folder_is_refused_in_one_line_naming_the_file(small_patient, damage, message, capsys):
    damage(small_patient)
    assert main(["inspect", str(small_patient)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.split(": ", 1)[-1] in err[0], err
    assert message.split(":")[0] in err[0]


def test_a_folder_without_dose_csv_is_predictable_but_cannot_be_evaluated(small_patient, tmp_path, capsys):
    (small_patient / "dose.csv").unlink()
    case = load_case(small_patient)
    assert case.dose is None and any("no dose.csv" in w for w in case.warnings)
    assert main(["evaluate", "--case", str(small_patient), "--pred", str(tmp_path / "x.csv")]) == 2
    assert "no dose" in capsys.readouterr().err


def test_hand_computed_dose_score_counts_every_voxel_over_the_support():
    ref = np.zeros((2, 2, 2))
    ref[0] = 10.0
    pred = ref.copy()
    pred[0, 0, 0] = 13.0  # |Δ| = 3 inside the support
    pred[1, 1, 1] = 2.0  # |Δ| = 2 outside it: counted all the same
    support = np.zeros((2, 2, 2), bool)
    support[0] = True
    assert dose_score(pred, ref, support) == pytest.approx((3 + 2) / 4)


def test_hand_computed_dvh_points():
    doses = np.arange(1.0, 101.0)  # 100 voxels of 1 … 100 Gy
    mask = np.ones(100, bool)
    target = dvh_points(doses, mask, "ptv", 0.01)
    # numpy's linear percentiles: the 1st percentile of 1 … 100 is 1 + 0.01 · 99
    assert target == pytest.approx({"D99": 1.99, "D95": 5.95, "D1": 99.01})
    # an OAR of 0.05 cc voxels: 0.1 cc is 2 voxels, D0.1cc the 98th percentile; mean 50.5
    assert dvh_points(doses, mask, "oar", 0.05) == pytest.approx({"D0.1cc": 98.02, "mean": 50.5})
    # voxels larger than 0.1 cc: one voxel is the hottest 0.1 cc
    assert dvh_points(doses, mask, "oar", 0.5)["D0.1cc"] == pytest.approx(99.01)
    # the challenge's rule on small structures: 3 voxels, 2 in 0.1 cc → the 33.3rd percentile;
    # 2 voxels, all of them in 0.1 cc → 0 Gy (not the structure's minimum or maximum)
    assert dvh_points(doses[:3], mask[:3], "oar", 0.05)["D0.1cc"] == pytest.approx(1 + 2 / 3)
    assert dvh_points(doses[:2], mask[:2], "oar", 0.05)["D0.1cc"] == 0.0


def test_dvh_score_pools_every_point_of_every_patient():
    one = {"A": {"D99": {"diff_gy": 1.0}, "D95": {"diff_gy": -3.0}}}
    two = {"B": {"mean": {"diff_gy": 8.0}}}
    assert dvh_score([one, two]) == pytest.approx((1 + 3 + 8) / 3)  # not the mean of 2 and 8
    assert np.isnan(dvh_score([{}]))


def test_scores_of_a_made_up_patient_by_hand(small_patient):
    case = load_case(small_patient)
    pred = case.dose + np.where(case.structures["PTV70"].mask, 2.0, 0.0).astype(np.float32)
    scores = openkbp_scores(pred, case.dose, case)
    assert scores["dose_score_gy"] == pytest.approx(2.0 * 4**3 / 20**3, rel=1e-6)
    assert scores["support"] == DOSE_SUPPORT
    # every PTV voxel got +2 Gy: each target point moves by 2; the OARs (outside the PTV) not at all
    assert {k: v["diff_gy"] for k, v in scores["dvh_points"]["PTV70"].items()} == pytest.approx(
        {"D99": 2.0, "D95": 2.0, "D1": 2.0}, abs=1e-4)
    assert scores["dvh_points"]["SpinalCord"]["mean"]["diff_gy"] == pytest.approx(0.0, abs=1e-6)
    assert scores["dvh_score_gy"] == pytest.approx(2.0 * 3 / (3 + 2 * 2), abs=1e-4)


def test_submission_file_zero_outside_the_support(small_patient, tmp_path):
    case = load_case(small_patient)
    dose = np.full(case.grid.shape, 5.0, np.float32)
    path = write_openkbp_dose_csv(dose, case, tmp_path / "pt_9.csv")
    assert path.read_text().startswith(",data\n")
    indices, values = read_sparse_csv(path, True)
    assert np.array_equal(indices, np.sort(_block(54, 74))) and np.all(values == 5.0)
    assert np.array_equal(read_openkbp_dose_csv(path, case), np.where(case.dose_support(), dose, 0))


@needs_openkbp
def test_csv_folder_and_compact_file_of_one_patient_are_one_case():
    folder, compact = load_case(OPENKBP / "csv" / "pt_1"), load_case(OPENKBP / "train" / "pt_1.npz")
    assert folder.grid.same_as(compact.grid)
    assert np.array_equal(folder.ct, compact.ct)
    assert np.abs(folder.dose - compact.dose).max() <= 0.005 + 1e-5  # the compact file keeps cGy (rounded)
    assert sorted(folder.structures) == sorted(compact.structures)
    for name, s in folder.structures.items():
        assert np.array_equal(s.mask, compact.structures[name].mask), name
        assert (s.role, s.prescription_gy) == (compact.structures[name].role, compact.structures[name].prescription_gy)
    assert folder.beams == compact.beams
    # real anatomy: air around the patient, soft tissue at the PTV, bone somewhere
    hu = folder.ct
    assert np.median(hu[~folder.body.mask]) < -900
    assert -100 < np.median(hu[folder.structures["PTV70"].mask]) < 100
    assert hu.max() > 700


@needs_openkbp
def test_reference_dose_csv_written_back_gives_the_same_indices_and_values(tmp_path):
    source = OPENKBP / "csv" / "pt_1" / "dose.csv"
    case = load_case(source.parent)
    written = write_openkbp_dose_csv(read_openkbp_dose_csv(source, case), case, tmp_path / "pt_1.csv")
    (i0, v0), (i1, v1) = read_sparse_csv(source, True), read_sparse_csv(written, True)
    keep = v0 > 0  # the submission lists voxels with dose; the reference lists a few zeros too
    assert np.array_equal(i0[keep], i1) and np.array_equal(v0[keep], v1)


@needs_openkbp
def test_evaluate_scores_the_reference_against_itself_as_zero_on_both_forms(tmp_path, capsys):
    reference = OPENKBP / "csv" / "pt_1" / "dose.csv"
    for case in (OPENKBP / "csv" / "pt_1", OPENKBP / "train" / "pt_1.npz"):
        assert main(["evaluate", "--pred", str(reference), "--case", str(case), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["dose_score_gy"] < 0.003 and result["dvh_score_gy"] < 0.003  # cGy storage of the npz


@needs_openkbp
def test_evaluate_on_a_scaled_reference(tmp_path, capsys):
    case = load_case(OPENKBP / "csv" / "pt_1")
    write_openkbp_dose_csv(case.dose * 1.1, case, tmp_path / "pt_1.csv")
    assert main(["evaluate", "--pred", str(tmp_path / "pt_1.csv"), "--case", str(OPENKBP / "csv" / "pt_1"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = 0.1 * case.dose.astype(np.float64).sum() / case.dose_support().sum()
    assert result["dose_score_gy"] == pytest.approx(expected, rel=1e-4)
    assert result["dvh_points"]["Parotid_L"]["mean"]["diff_gy"] == pytest.approx(
        0.1 * case.dose[case.structures["Parotid_L"].mask].mean(), rel=1e-4)


@needs_openkbp
def test_predict_on_both_forms_writes_the_submission_file(tmp_path, capsys):
    model = tiny_pipeline(seed=3).save_pretrained(tmp_path / "model")
    shutil.copytree(OPENKBP / "csv" / "pt_1", tmp_path / "in" / "pt_1")
    shutil.copy(OPENKBP / "validation" / "pt_201.npz", tmp_path / "in" / "pt_201.npz")
    assert main(["predict", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "out"),
                 "--steps", "1", "--no-report"]) == 0
    for name in ("pt_1", "pt_201"):
        case = load_case(tmp_path / "in" / (name if name == "pt_1" else f"{name}.npz"))
        submission = tmp_path / "out" / name / f"{name}.csv"
        indices, values = read_sparse_csv(submission, True)
        support = from_case_order(case.dose_support()).ravel()
        assert support[indices].all() and np.all(values > 0)  # nothing outside possible_dose_mask
        dose = read_openkbp_dose_csv(submission, case)
        assert dose.max() > 0 and np.all(dose[~case.dose_support()] == 0)


@needs_openkbp
def test_the_trivial_baseline_predicts_nothing_outside_the_possible_dose_mask():
    from dosediffusion_training.baselines.distance_falloff import DistanceFalloff

    case = load_case(OPENKBP / "csv" / "pt_1")
    outside = case.body.mask & ~case.dose_support()
    assert outside.sum() > 1000  # the body from the CT reaches beyond the challenge's support
    dose = DistanceFalloff.fit([case]).predict(case)
    assert np.all(dose[outside] == 0) and dose[case.structures["PTV70"].mask].min() > 50
