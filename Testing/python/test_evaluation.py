"""Evaluation metrics on doses with answers known by construction."""

import numpy as np
import pytest

from dosediffusion.errors import InputError
from dosediffusion.metrics.evaluation import gdp_hmm_mae, masked_mae, normalise_to_d97, psnr, ssim3d

SHAPE = (10, 12, 14)


def _ref():
    z, y, x = np.indices(SHAPE)
    ref = (x * 5.0).astype(np.float64)  # 0 .. 65 Gy along x
    body = np.ones(SHAPE, bool)
    body[:, :, 0] = False
    ptv = (x >= 10) & (x <= 12)
    return ref, body, ptv


def test_d97_normalisation_sets_the_ptv_percentile():
    ref, _, ptv = _ref()
    scaled = normalise_to_d97(ref, ptv, 70.0)
    assert np.percentile(scaled[ptv], 3) == pytest.approx(70.0, abs=1e-3)


def test_gdp_hmm_mae_counts_where_either_dose_exceeds_5_gy_over_the_reference_count():
    ref, body, ptv = _ref()
    prescription = float(np.percentile(ref[ptv], 3))  # so the normalisation is the identity
    pred = ref + 2.0
    # ref > 5 Gy in body: x >= 2 (x = 1 is exactly 5 Gy: not above); pred > 5 Gy also at x = 1
    numerator = 2.0 * body[:, :, 1:].sum()  # x >= 1 counted, each off by 2 Gy
    denominator = body[:, :, 2:].sum()
    assert gdp_hmm_mae(pred, ref, body, ptv, prescription) == pytest.approx(numerator / denominator, rel=1e-4)
    assert gdp_hmm_mae(ref, ref, body, ptv, prescription) == pytest.approx(0.0, abs=1e-3)


def test_masked_mae_psnr_and_ssim():
    ref, body, _ = _ref()
    pred = ref.copy()
    pred[body] += 1.0
    assert masked_mae(pred, ref, body) == pytest.approx(1.0)
    assert psnr(pred, ref, body) == pytest.approx(20 * np.log10(65.0 / 1.0))
    assert psnr(ref, ref) == float("inf")
    assert ssim3d(ref, ref) == pytest.approx(1.0)
    noisy = ref + np.random.default_rng(0).normal(0, 5, SHAPE)
    assert ssim3d(noisy, ref) < ssim3d(pred, ref) < 1.0


def test_grids_must_match():
    with pytest.raises(InputError, match="different grids"):
        masked_mae(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), np.ones((2, 2, 2), bool))


def test_openkbp_scores_of_a_scaled_dose_are_known(phantom_dicom):
    from dosediffusion.io.load import load_case
    from dosediffusion.metrics.openkbp import openkbp_scores

    case = load_case(phantom_dicom[0])
    ref = case.dose.astype(np.float64)
    scores = openkbp_scores(ref * 1.02, ref, case)
    # no possible-dose mask in a DICOM case: the dose score counts per body voxel (the dose is zero outside)
    assert scores["support"] == "body"
    assert scores["dose_score_gy"] == pytest.approx(0.02 * ref.sum() / case.body.mask.sum(), rel=1e-6)
    # every DVH point scales with the dose: its difference is 2 % of the reference point
    cord = ref[case.structures["SpinalCord"].mask]
    assert scores["dvh_points"]["SpinalCord"]["mean"]["diff_gy"] == pytest.approx(0.02 * cord.mean(), rel=1e-6)
    assert set(scores["dvh_points"]["PTV_60"]) == {"D99", "D95", "D1"}


def test_evaluate_cli_on_identical_doses(phantom_dicom, tmp_path, capsys):
    import json

    from dosediffusion.cli.main import main
    from dosediffusion.io.load import load_case
    from dosediffusion.io.volume_sidecar import write_volume

    demo = phantom_dicom[0]
    case = load_case(demo)
    write_volume(case.dose, case.grid, tmp_path / "dose.nrrd")
    assert main(["evaluate", "--pred", str(tmp_path / "dose.nrrd"), "--ref", str(demo / "RTDOSE.dcm"),
                 "--case", str(demo), "--scorecard", "lung_60", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dose_score_gy"] < 0.01 and result["dvh_score_gy"] < 0.01  # RTDOSE storage precision only
    assert result["gamma_pass_percent"] == {"3%/3mm": 100.0, "2%/2mm": 100.0}
    assert result["scorecard"]["diff"] == pytest.approx(0.0, abs=1e-3)
    assert result["ssim"] == pytest.approx(1.0, abs=1e-4)


def test_evaluate_text_gives_each_structure_and_what_each_figure_means(phantom_dicom, tmp_path, capsys):
    from dosediffusion.cli.main import main
    from dosediffusion.io.load import load_case
    from dosediffusion.io.volume_sidecar import write_volume

    folder = phantom_dicom[0]
    case = load_case(folder)
    shifted = case.dose + 2.0 * case.structures["PTV_60"].mask  # 2 Gy more inside the PTV only
    write_volume(shifted, case.grid, tmp_path / "dose.nrrd")
    assert main(["evaluate", "--pred", str(tmp_path / "dose.nrrd"), "--ref", str(folder / "RTDOSE.dcm"),
                 "--case", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("gdp_hmm_mae_gy") and "D97 of the high PTV" in line for line in lines)
    assert any(line.startswith("dose_score_gy") and "per voxel of the body" in line for line in lines)
    start = lines.index("MAE inside each structure (Gy; mean |predicted - reference| over its voxels, no normalisation):")
    rows = dict(line.split() for line in lines[start + 1:start + 1 + len(case.structures)])
    assert set(rows) == set(case.structures)
    assert float(rows["PTV_60"]) == pytest.approx(2.0, abs=0.01)  # RTDOSE storage precision only
    assert float(rows["SpinalCord"]) < 0.01
