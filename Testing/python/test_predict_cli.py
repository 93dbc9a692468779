"""``dosediffusion predict``: the files it writes, batch folders, failures, and the tiny model end to end."""

from __future__ import annotations

import csv
import json
import shutil

import nrrd
import numpy as np
import pydicom
import pytest
from model_builders import tiny_pipeline

from dosediffusion.cli.main import main
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import read_volume
from dosediffusion.metrics.dose_metrics import case_dvhs
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.resources import resource_path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(seed=5).save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def test_predict_writes_every_file(phantom_dicom, model_dir, tmp_path, capsys):
    folder, _, _, paths = phantom_dicom
    assert main(["predict", str(folder), "--model", str(model_dir), "--out", str(tmp_path), "--steps", "2"]) == 0
    out = tmp_path / folder.name
    assert sorted(p.name for p in out.iterdir()) == ["RTDOSE.dcm", "dose.nrrd", "dvh.csv", "report.png",
                                                     "scorecard.json", "summary.json"]
    case = load_case(folder)
    dose, grid = read_volume(out / "dose.nrrd")
    assert grid.same_as(case.grid) and dose.max() > 0 and (dose[~case.body.mask] == 0).all()
    assert "DoseUnits: Gy" in "\n".join(f"{k}: {v}" for k, v in nrrd.read_header(str(out / "dose.nrrd")).items())

    rtdose = pydicom.dcmread(out / "RTDOSE.dcm")
    plan = pydicom.dcmread(paths["rtplan"], stop_before_pixels=True)
    assert rtdose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
    assert rtdose.FrameOfReferenceUID == plan.FrameOfReferenceUID
    stored = rtdose.pixel_array * float(rtdose.DoseGridScaling)
    assert np.abs(stored - dose).max() <= float(rtdose.DoseGridScaling)

    rows = list(csv.DictReader((out / "dvh.csv").open()))
    assert {r["source"] for r in rows} == {"predicted", "case"}
    ptv = [r for r in rows if r["structure"] == "PTV_60" and r["source"] == "predicted"]
    expected_dose, expected_volume = case_dvhs(case, dose)["PTV_60"].cumulative(0.1)
    assert len(ptv) == len(expected_dose)
    assert np.allclose([float(r["volume_percent"]) for r in ptv], expected_volume, atol=2e-3)

    score = json.loads((out / "scorecard.json").read_text())
    assert score["predicted"]["template"].startswith("Lung 60") and "case" in score
    summary = json.loads((out / "summary.json").read_text())
    body = case.body.mask
    assert summary["mae_body_gy"] == pytest.approx(np.abs(dose[body] - case.dose[body]).mean(), abs=1e-3)
    assert summary["structures"]["PTV_60"]["max_gy"] == pytest.approx(float(dose[case.structures["PTV_60"].mask].max()), abs=0.5)
    assert "uncertainty" not in summary  # one candidate: no std map (and no dose_std.nrrd above)
    printed = capsys.readouterr().out
    assert "MAE against the case's own dose" in printed and "scorecard Lung 60" in printed
    # every reader of a dose file gives the same DVH for the RTDOSE and the NRRD it wrote
    assert main(["dvh", str(folder), "--dose", str(out / "RTDOSE.dcm"), "--json"]) == 0
    from_rtdose = json.loads(capsys.readouterr().out)["structures"]
    assert main(["dvh", str(folder), "--dose", str(out / "dose.nrrd"), "--json"]) == 0
    from_nrrd = json.loads(capsys.readouterr().out)["structures"]
    for name, metrics in from_nrrd.items():
        assert from_rtdose[name]["mean_gy"] == pytest.approx(metrics["mean_gy"], abs=0.01)
        assert from_rtdose[name]["d95_gy"] == pytest.approx(metrics["d95_gy"], abs=0.05)


def test_predict_with_candidates_writes_their_std(phantom_dicom, model_dir, tmp_path, capsys):
    """CLI → prediction layer → outputs: ``dose_std.nrrd`` on the CT grid is the std of the candidates
    that the same model, seed and case give."""
    folder = phantom_dicom[0]
    assert main(["predict", str(folder), "--model", str(model_dir), "--out", str(tmp_path), "--steps", "1",
                 "--candidates", "3", "--no-report"]) == 0
    out = tmp_path / folder.name
    case = load_case(folder)
    std, grid = read_volume(out / "dose_std.nrrd")
    assert grid.same_as(case.grid) and std.dtype == np.float32
    candidates = DoseDiffusionPipeline.from_pretrained(model_dir)(case, steps=1, seed=0, num_candidates=3,
                                                                  scorecard="lung_60", device="cpu").candidates_gy
    np.testing.assert_allclose(std, np.std(np.stack(candidates), axis=0, ddof=1), atol=1e-4)
    assert std[case.body.mask].max() > 0
    summary = json.loads((out / "summary.json").read_text())
    uncertainty = summary["uncertainty"]
    assert summary["candidates"] == uncertainty["candidates"] == 3 and uncertainty["ddof"] == 1
    assert uncertainty["regions"]["body"]["mean_gy"] == pytest.approx(float(std[case.body.mask].mean()), abs=1e-4)
    assert uncertainty["error_correlation"]["voxels"] == case.body.mask.sum()
    assert "uncertainty (std over 3 candidates) → dose_std.nrrd" in capsys.readouterr().out


def test_batch_folder_with_a_bad_case(phantom_dicom, model_dir, tmp_path, capsys):
    folder = phantom_dicom[0]
    batch = tmp_path / "batch"
    shutil.copytree(folder, batch / "good")
    (batch / "broken").mkdir()
    (batch / "broken" / "ct.dcm").write_bytes(b"not dicom")
    out = tmp_path / "out"
    code = main(["predict", str(batch), "--model", str(model_dir), "--out", str(out), "--steps", "1",
                 "--scorecard", "none", "--no-report"])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # nothing half-written for the broken case
    assert not (out / "good" / "scorecard.json").exists() and not (out / "good" / "report.png").exists()
    err = capsys.readouterr().err
    assert err.index("broken") < err.index("loading the model")  # every case checked before the model loads
    assert "batch: 2 cases: 1 done, 1 refused" in err and "  good    done" in err


def test_bad_arguments_are_clear(phantom_dicom, tmp_path, capsys):
    folder = phantom_dicom[0]
    assert main(["predict", str(folder), "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a DoseDiffusion pipeline folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing"), "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_demo_predicts_the_demo_case_with_the_bundled_model(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    out = tmp_path / "DemoCase"
    assert {"RTDOSE.dcm", "dose.nrrd", "dvh.csv", "scorecard.json", "summary.json", "report.png"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    case = load_case(resource_path("DemoCase"))
    ptv = max(case.with_role("ptv"), key=lambda s: s.prescription_gy)
    predicted = summary["structures"][ptv.name]["mean_gy"]
    assert 0.8 * ptv.prescription_gy < predicted < 1.15 * ptv.prescription_gy  # the prescription on the target
    assert summary["structures"][case.body.name]["mean_gy"] < predicted / 2
    body_mean = float(case.dose[case.body.mask].mean())
    assert summary["mae_body_gy"] < body_mean  # closer to the planned dose than no dose at all
