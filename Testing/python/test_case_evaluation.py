"""One evaluation (metrics.case_evaluation.evaluate_dose) behind ``dosediffusion evaluate`` and
``dosediffusion-train evaluate``: the same figures from both, and the role MAEs computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_data import write_training_cases

from dosediffusion.cli.main import main
from dosediffusion.io.volume_sidecar import write_volume
from dosediffusion.metrics.case_evaluation import evaluate_dose
from dosediffusion.metrics.scorecard import load_template
from dosediffusion_training.data.dataset import load_any
from dosediffusion_training.evaluation import case_metrics


@pytest.fixture(scope="module")
def case_and_pred(tmp_path_factory):
    folder = write_training_cases(tmp_path_factory.mktemp("cases"), range(1), (20, 40, 48))
    case = load_any(next(folder.glob("*.case.npz")))
    rng = np.random.default_rng(3)
    pred = (case.dose * rng.uniform(0.8, 1.1, case.grid.shape)).astype(np.float32)
    return case, pred, next(folder.glob("*.case.npz"))


def test_role_maes_are_the_mean_over_the_union_of_each_role(case_and_pred):
    case, pred, _ = case_and_pred
    result = evaluate_dose(pred, case.dose, case, gamma=False)
    for role in ("ptv", "oar"):
        union = np.zeros(case.grid.shape, bool)
        for s in case.with_role(role):
            union |= s.mask
        assert result[f"{role}_mae_gy"] == pytest.approx(np.abs(pred - case.dose)[union].mean(dtype=np.float64))
    body = case.body.mask
    assert result["mae_body_gy"] == pytest.approx(np.abs(pred - case.dose)[body].mean(dtype=np.float64))
    assert "gamma_pass_percent" not in result and "scorecard" not in result


def test_the_cli_and_training_report_the_same_figures(case_and_pred, tmp_path, capsys):
    case, pred, path = case_and_pred
    write_volume(pred, case.grid, tmp_path / "pred.nrrd", units="Gy")
    assert main(["evaluate", "--pred", str(tmp_path / "pred.nrrd"), "--case", str(path), "--scorecard", "lung_60",
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    training = case_metrics(case, pred, load_template("lung_60"))
    pairs = {"mae_body_gy": "mae_body_gy", "gdp_hmm_mae_gy": "gdp_hmm_mae_gy", "psnr_db": "psnr_db", "ssim": "ssim"}
    for ours, theirs in pairs.items():
        assert training[theirs] == pytest.approx(cli[ours], rel=1e-6), ours
    assert (training["score_pred"], training["score_ref"]) == pytest.approx((cli["scorecard"]["pred"],
                                                                             cli["scorecard"]["ref"]))
    assert set(cli["gamma_pass_percent"]) == {"3%/3mm", "2%/2mm"}
