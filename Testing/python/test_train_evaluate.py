"""``dosediffusion-train evaluate``: per-case rows, aggregated table and paired tests for two models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from model_builders import tiny_pipeline
from training_data import write_training_cases

from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.cli import main, model_label
from dosediffusion_training.data.dataset import load_any
from dosediffusion_training.evaluation import paired_tests


def test_two_models_per_case_and_paired(tmp_path):
    data = write_training_cases(tmp_path / "cases", range(3), (20, 40, 48))
    models = [tiny_pipeline(seed=s).save_pretrained(tmp_path / f"m{s}") for s in (1, 2)]
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(data), "--out", str(out), "--steps", "1", "--scorecard", "lung_60"]
    assert main(args + ["--model", str(models[0]), "--model", str(models[1])]) == 0
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert [r["model"] for r in rows] == ["m1"] * 3 + ["m2"] * 3
    assert "std_mean_body_gy" not in rows[0]  # one candidate: no uncertainty columns
    case = load_any(data / "synth_00001.case.npz")
    pred = DoseDiffusionPipeline.from_pretrained(models[0])(case, steps=1, seed=0, device="cpu").dose_gy
    assert float(rows[1]["mae_body_gy"]) == pytest.approx(np.abs(pred - case.dose)[case.body.mask].mean(), abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"m1", "m2"} and summary["cases"] == 3
    assert "m1 vs m2" in summary["paired_tests"] and "LPIPS" not in (out / "table.md").read_text()
    assert (out / "table.md").read_text().count("\n") == 4


def test_candidates_add_the_uncertainty_columns(tmp_path, capsys):
    """Best of two by the case's scorecard (as ``predict --candidates 2``), and the std of the two."""
    data = write_training_cases(tmp_path / "cases", range(1), (20, 40, 48))
    model = tiny_pipeline(seed=1).save_pretrained(tmp_path / "m1")
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--steps", "1", "--scorecard", "lung_60",
                 "--candidates", "2", "--model", str(model)]) == 0
    rows = list(csv.DictReader((out / "cases.csv").open()))
    (path,) = data.iterdir()
    case = load_any(path)
    prediction = DoseDiffusionPipeline.from_pretrained(model)(case, steps=1, seed=0, num_candidates=2,
                                                              scorecard="lung_60", device="cpu")
    body = case.body.mask
    (row,) = rows
    assert float(row["mae_body_gy"]) == pytest.approx(np.abs(prediction.dose_gy - case.dose)[body].mean(), abs=1e-4)
    std = np.abs(prediction.candidates_gy[0] - prediction.candidates_gy[1]) / np.sqrt(2)
    assert float(row["std_mean_body_gy"]) == pytest.approx(std[body].mean(), abs=1e-4)
    error = np.abs(prediction.dose_gy - case.dose)[body]
    assert float(row["std_error_pearson"]) == pytest.approx(np.corrcoef(std[body], error)[0, 1], abs=1e-4)
    assert -1 <= float(row["std_error_spearman"]) <= 1
    summary = json.loads((out / "summary.json").read_text())["models"]["m1"]
    assert {"std_mean_body_gy", "std_error_pearson", "std_error_spearman"} <= set(summary)
    assert "std_error_pearson" in (out / "table.md").read_text()
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--candidates", "17", "--model", str(model)]) == 2
    assert "between 1 and 16" in capsys.readouterr().err


def test_paired_tests_detect_a_consistent_shift():
    a = [{"mae_body_gy": v, "score_pred": 10.0 + v} for v in np.linspace(1, 2, 12)]
    b = [{"mae_body_gy": r["mae_body_gy"] - 0.3 + 0.01 * i, "score_pred": r["score_pred"] + 1.0 + 0.1 * np.sin(i)} for i, r in enumerate(a)]
    tests = paired_tests(a, b)
    assert tests["mae_body_gy"]["mean_difference"] < 0 and tests["mae_body_gy"]["t_p"] < 1e-3
    assert tests["score_pred"]["wilcoxon_p"] < 1e-2


def test_models_are_named_after_their_runs_or_as_given(tmp_path, capsys):
    assert model_label("runs/demo-v1/pipeline") == ("demo-v1", "runs/demo-v1/pipeline")
    assert model_label("models/mednext") == ("mednext", "models/mednext")
    assert model_label("ScardNFT=runs/c/pipeline") == ("ScardNFT", "runs/c/pipeline")
    data = write_training_cases(tmp_path / "cases", range(1), (20, 40, 48))
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "eval"),
                 "--model", "a/pipeline", "--model", "b/a/pipeline"]) == 2
    assert "same name" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
