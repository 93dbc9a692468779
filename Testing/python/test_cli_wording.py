"""What the commands print says what each number is, and why one is missing: the dvh table's D0.03cc,
evaluate's figures that cannot be computed and its gamma criteria, inspect's prescription and whether
the case can be predicted, predict's progress count and help, the units in dose.nrrd."""

import argparse
import json

import SimpleITK as sitk

from dosediffusion.case import Prescription
from dosediffusion.cli.main import build_parser, main
from dosediffusion.cli.predict import _ProgressBar
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_sidecar_case
from dosediffusion.resources import resource_path

DEMO = resource_path("DemoCase")


def _body_only(tmp_path):
    case = load_case(DEMO)
    case.structures = {"BODY": case.structures["BODY"]}
    case.prescription = Prescription([], None)
    return write_sidecar_case(case, tmp_path / "body_only")


def test_dvh_table_has_d0_03cc(capsys):
    assert main(["dvh", str(DEMO)]) == 0
    header, body = capsys.readouterr().out.splitlines()[:2]
    assert "D0.03cc" in header and len(body.split()) == len(header.split()) - 1  # "(Gy)" heads no column


def test_inspect_says_a_body_only_case_cannot_be_predicted(tmp_path, capsys):
    assert main(["inspect", str(_body_only(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "prescription none" in out and "None Gy" not in out and "? fractions" not in out
    assert "warning: cannot be predicted: no target" in out
    assert main(["inspect", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "prescription 66, 59, 53 Gy in 33 fractions" in out and "cannot be predicted" not in out


def test_evaluate_says_why_a_figure_is_missing_and_what_the_gamma_is(tmp_path, capsys):
    sidecar = _body_only(tmp_path)
    assert main(["evaluate", "--case", str(sidecar), "--pred", str(DEMO / "RTDOSE.dcm")]) == 0
    lines = capsys.readouterr().out.splitlines()
    gdp = next(line for line in lines if line.startswith("gdp_hmm_mae_gy"))
    dvh = next(line for line in lines if line.startswith("dvh_score_gy"))
    assert "not computed: no target with a prescription" in gdp and "nan" not in dvh and "not computed" in dvh
    assert all("global" in line and "10 % low-dose cut-off" in line for line in lines if line.startswith("gamma"))


def test_the_progress_count_matches_its_step_label():
    bar = _ProgressBar(argparse.Namespace(steps=10, progress_json=False), "case")
    try:
        for i in range(11):
            bar(0.1 + 0.8 * i / 10, f"step {i} of 10")  # as the pipeline reports a step
            assert bar.bar.n == i
    finally:
        bar.close()


def test_no_progress_line_shows_a_step_label_with_the_previous_count(capsys):
    bar = _ProgressBar(argparse.Namespace(steps=2, progress_json=False), "case")
    try:
        bar(0.0, "preparing inputs")
        bar(0.5, "step 1 of 2")
    finally:
        bar.close()
    renders = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("1/2" in line and "step 1 of 2" in line for line in renders)
    assert not any("0/2" in line and "step 1 of 2" in line for line in renders)


def test_progress_json_gives_only_its_lines_and_no_bar(capsys):
    bar = _ProgressBar(argparse.Namespace(steps=2, progress_json=True), "case")
    bar(0.5, "step 1 of 2")
    bar.close()
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == [
        {"event": "progress", "case": "case", "fraction": 0.5, "message": "step 1 of 2"}]
    assert bar.bar is None and captured.err == ""


def test_predict_help_says_the_model_defaults_to_the_demo():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    model = next(a for a in predict._actions if a.dest == "model")
    assert model.default == "demo" and "the default" in model.help


def test_dose_nrrd_names_its_units(tmp_path):
    sidecar = write_sidecar_case(load_case(DEMO), tmp_path / "case")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sidecar.parent / "dose.nrrd"))
    reader.ReadImageInformation()
    assert reader.GetMetaData("DoseUnits") == "Gy"
