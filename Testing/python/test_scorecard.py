"""Scorecard templates: loading, validation messages, scoring, ESAPI layout, the CLI."""

import copy
import json

import numpy as np
import pytest

from dosediffusion.case import Structure
from dosediffusion.cli.main import main
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_sidecar_case
from dosediffusion.metrics.dvh import compute_dvh
from dosediffusion.metrics.dvh_metric import parse_dvh_metric
from dosediffusion.metrics.scorecard import (
    SCORECARD_DIR,
    EntryResult,
    entry_metric,
    find_structure,
    limit_excess,
    load_template,
    output_unit,
    score_case,
    shipped_templates,
)
from dosediffusion.resources import resource_path


@pytest.fixture(scope="module")
def flat_case(phantom_dicom):
    """The analytic phantom with 60 Gy everywhere in the body (its PTV is prescribed 60 Gy)."""
    case = load_case(phantom_dicom[0])
    case.dose = np.where(case.body.mask, 60.0, 0.0).astype(np.float32)
    return case


@pytest.mark.parametrize("name", ["head_neck_sib_70_63_56", "lung_60", "prostate_78"])
def test_shipped_templates_load_and_cite_their_sources(name):
    template = load_template(name)
    assert template["entries"] and all(e.get("source") for e in template["entries"])


def test_scores_follow_the_points_and_missing_structures_are_not_evaluable(flat_case):
    report = score_case(flat_case, load_template("head_neck_sib_70_63_56"))
    by_key = {(e.structure, e.metric, e.unit): e for e in report.entries}
    d95 = report.entries[0]
    assert d95.structure == "PTV_60" and d95.value == pytest.approx(100.0, abs=0.01)
    assert d95.score == pytest.approx(2.0) and d95.passed  # clamped at the best point, weight 2
    cord = by_key[("SpinalCord", "MaxDose", "Gy")]
    assert cord.value == pytest.approx(60.0, abs=0.01) and cord.score == 0.0 and cord.passed is False and cord.hard
    esophagus = by_key[("Esophagus", "MeanDose", "Gy")]
    assert esophagus.score == 0.0  # 60 Gy is beyond 1.15 x 34 Gy
    assert "Brainstem D0.03cc" in report.not_evaluable and "PTV level 2 D95%" in report.not_evaluable
    assert report.total == pytest.approx(sum(e.score for e in report.entries if e.score is not None))
    assert report.max_total == pytest.approx(sum(e.max_score for e in report.entries if e.score is not None))


def test_a_paired_organ_is_the_union_of_its_sides(flat_case):
    """lung_60's ``Lungs`` entries on a case that has only Lung_L and Lung_R (as pyRadPlan phantoms do)."""
    from dosediffusion.metrics.dvh import compute_dvh

    case = flat_case
    grid_x = np.arange(case.grid.shape[2])
    left = np.broadcast_to(grid_x < case.grid.shape[2] // 3, case.grid.shape) & case.body.mask
    right = np.broadcast_to(grid_x > 2 * case.grid.shape[2] // 3, case.grid.shape) & case.body.mask
    dose = np.where(left, 30.0, np.where(right, 5.0, 0.0)).astype(np.float32)
    lungs = {n: Structure(n, m, "oar", canonical=n) for n, m in (("Lung_L", left), ("Lung_R", right))}
    paired = type(case)(**{**case.__dict__, "structures": {**case.structures, **lungs}})
    v20 = next(e for e in score_case(paired, load_template("lung_60"), dose).entries
               if e.structure == "Lungs" and e.metric == "VolumeAtDose")
    union = Structure("Lungs", left | right, "oar")
    assert v20.value == pytest.approx(compute_dvh(dose, case.grid, union).volume_at_dose_percent(20.0), abs=1e-3)  # entries round to 4 digits
    assert v20.value == pytest.approx(100.0 * left.sum() / (left | right).sum(), abs=2.0)  # DVHs weigh edge voxels
    assert "Lungs V20Gy" in score_case(flat_case, load_template("lung_60")).not_evaluable


def test_interpolation_between_points(flat_case, tmp_path):
    template = {"name": "t", "entries": [{"structure": {"name": "Esophagus"}, "metric": "MeanDose",
                                          "points": [[50, 1], [70, 0]], "weight": 3}]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(template))
    entry = score_case(flat_case, load_template(path)).entries[0]
    assert entry.value == pytest.approx(60.0, abs=0.01) and entry.score == pytest.approx(1.5, abs=1e-3)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"structure": {"name": "X"}, "metric": "MeanDose"}, r"entries\[0\]: 'points' is a required property"),
        ({"structure": {"name": "X"}, "metric": "Median", "points": [[0, 1], [1, 0]]}, r"entries\[0\]\.metric"),
        ({"structure": {"name": "X"}, "metric": "DoseAtVolume", "points": [[0, 1], [1, 0]]}, "DoseAtVolume needs 'volume'"),
        ({"structure": {"name": "X"}, "metric": "MeanDose", "points": [[5, 1], [1, 0]]}, "x values must increase"),
        ({"structure": {"name": "X"}, "metric": "MeanDose", "output_unit": "cc", "points": [[0, 1], [1, 0]]},
         "does not fit MeanDose"),
    ],
)
def test_bad_templates_name_entry_and_field(tmp_path, entry, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "entries": [entry]}))
    with pytest.raises(InputError, match=message) as error:
        load_template(path)
    assert "bad.json" in str(error.value)


def test_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(InputError, match="lung_60"):
        load_template("breast")


def test_esapi_layout_scores_like_the_same_template_in_ours(flat_case, tmp_path):
    esapi = {"Name": "clinic", "ScoreTemplates": [
        {"Structure": {"StructureId": "Esophagus"}, "MetricType": "MeanDose", "InputValue": 0, "InputUnit": "Gy",
         "OutputUnit": "cGy", "ScorePoints": [{"PointX": 7000, "Score": 0}, {"PointX": 5000, "Score": 1}]},
        {"Structure": {"StructureId": "SpinalCord"}, "MetricType": "VolumeAtDose", "InputValue": 5500, "InputUnit": "cGy",
         "OutputUnit": "%", "ScorePoints": [{"PointX": 0, "Score": 2}, {"PointX": 100, "Score": 0}]},
    ]}
    ours = {"name": "clinic", "entries": [
        {"structure": {"name": "Esophagus"}, "metric": "MeanDose", "points": [[50, 1], [70, 0]]},
        {"structure": {"name": "SpinalCord"}, "metric": "VolumeAtDose", "dose": 55, "dose_unit": "Gy",
         "output_unit": "%", "points": [[0, 2], [100, 0]]},
    ]}
    (tmp_path / "esapi.json").write_text(json.dumps(esapi))
    (tmp_path / "ours.json").write_text(json.dumps(ours))
    a = score_case(flat_case, load_template(tmp_path / "esapi.json"))
    b = score_case(flat_case, load_template(tmp_path / "ours.json"))
    assert [(e.value, e.score) for e in a.entries] == [(e.value, e.score) for e in b.entries]
    assert a.entries[1].value == pytest.approx(100.0)  # the whole cord gets 60 Gy > 55 Gy


def test_score_cli_json(phantom_dicom, capsys):
    assert main(["score", str(phantom_dicom[0]), "--scorecard", "lung_60", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["template"] == "Lung 60 Gy in 30 fractions" and "Heart Dmean" in report["not_evaluable"]
    assert main(["score", str(phantom_dicom[0]), "--scorecard", "nonexistent"]) == 2


DEMO = resource_path("DemoCase")


def test_each_line_says_what_it_measured_and_the_goal(capsys):
    assert main(["score", str(DEMO), "--scorecard", "lung_60", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [(e["label"], e["goal"]) for e in entries[:3]] == [("D95%", "≥ 95 %Rx"), ("D99%", "≥ 93 %Rx"),
                                                              ("D0.03cc", "≤ 110 %Rx")]
    assert main(["score", str(DEMO), "--scorecard", "lung_60"]) == 0
    out = capsys.readouterr().out
    assert "PTV_66           D95% ≥ 95 %Rx" in out and "SpinalCord       D0.03cc ≤ 50 Gy (hard)" in out
    assert "DoseAtVolume" not in out and "MaxDose" not in out


def test_the_templates_fit_to_the_case_is_printed_and_a_misfit_warned(capsys):
    assert main(["score", str(DEMO), "--scorecard", "lung_60"]) == 0
    captured = capsys.readouterr()
    assert "template 60 Gy in 30 fractions, case 66/59/53 Gy in 33 fractions: does not fit" in captured.out
    assert "warning: the scorecard 'Lung 60 Gy in 30 fractions' does not fit the case" in captured.err
    assert main(["score", str(DEMO), "--scorecard", "lung_60", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["template_fit"]["fits"] is False


def test_a_ptv_without_a_prescription_is_named_not_called_missing(flat_case):
    case = copy.deepcopy(flat_case)
    case.structures["PTV_60"].prescription_gy = None
    report = score_case(case, load_template("lung_60"))
    notes = {e.note for e in report.entries if e.structure == "PTV level 1"}
    assert notes == {"PTV without a prescription (PTV_60): give it with --role NAME=ptv:DOSE_GY; not evaluable"}


@pytest.mark.parametrize("keep", [[], ["BODY"]])
def test_a_case_with_nothing_to_score_is_refused(flat_case, tmp_path, capsys, keep):
    case = copy.deepcopy(flat_case)
    case.structures = {name: s for name, s in case.structures.items() if name in keep}
    sidecar = write_sidecar_case(case, tmp_path / "case")
    assert main(["score", str(sidecar), "--scorecard", "lung_60"]) == 2
    assert "nothing to score" in capsys.readouterr().err


def test_the_automatic_choice_warns_when_the_template_does_not_fit():
    from dosediffusion.prediction.scorecard import choose_scorecard

    reason = choose_scorecard("auto", load_case(DEMO)).reason
    assert "template 60 Gy in 30 fractions, case 66/59/53 Gy in 33 fractions: does not fit (warning:" in reason


def test_the_shipped_templates_are_the_scorecard_files_not_the_schema(capsys):
    files = sorted(p.stem for p in resource_path(SCORECARD_DIR).glob("*.json"))
    assert "scorecard.schema" in files and shipped_templates() == [f for f in files if f != "scorecard.schema"]
    with pytest.raises(InputError, match="no shipped scorecard 'lung_61'; shipped: " + ", ".join(shipped_templates())):
        load_template("lung_61")
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"a shipped template ({', '.join(shipped_templates())})" in help_text


@pytest.mark.parametrize(("limit", "value", "excess"), [
    ({"max": 50}, 52.5, 2.5), ({"max": 50}, 50.0, 0.0), ({"max": 50, "hard": True}, 10.0, 0.0),
    ({"min": 95}, 93.0, 2.0), ({"min": 95}, 95.0, 0.0), ({"min": 95, "max": 107}, 110.0, 3.0),
    ({"min": 95, "max": 107}, 90.0, 5.0), ({"min": 95, "max": 107}, 100.0, 0.0),
])
def test_a_limit_s_excess_is_how_far_the_value_lies_beyond_it(limit, value, excess):
    assert limit_excess(limit, value) == pytest.approx(excess)


def test_an_entry_passes_exactly_when_its_limit_has_no_excess(flat_case):
    template = load_template("lung_60")
    report = score_case(flat_case, template)
    for entry, result in zip(template["entries"], report.entries, strict=True):
        if result.score is None or "limit" not in entry:
            assert result.passed is None
        else:
            assert result.passed == (limit_excess(entry["limit"], result.value) == 0.0)
            assert result.hard == bool(entry["limit"].get("hard"))
    assert {r.passed for r in report.entries if r.score is not None} >= {True, False}


@pytest.mark.parametrize(("score", "passed", "hard", "verdict"), [
    (None, None, True, "not evaluable"), (1.0, None, False, ""), (1.0, True, True, "pass"),
    (0.0, False, False, "fail"), (0.0, False, True, "FAIL (hard)"),
])
def test_the_verdict_of_an_entry(score, passed, hard, verdict):
    assert EntryResult("S", "MaxDose", None if score is None else 1.0, "Gy", score, 1.0, passed, hard).verdict == verdict


@pytest.mark.parametrize("name", ["head_neck_sib_70_63_56", "lung_60", "prostate_78"])
def test_scorecards_measure_and_name_through_the_dvh_metric_parser(flat_case, name):
    template = load_template(name)
    for entry, result in zip(template["entries"], score_case(flat_case, template).entries, strict=True):
        metric = parse_dvh_metric(result.label)
        assert metric == entry_metric(entry)  # the label names exactly what was measured
        structure = find_structure(flat_case, entry["structure"])
        if structure is None:
            continue
        dvh = compute_dvh(flat_case.dose, flat_case.grid, structure)
        unit = output_unit(entry)
        value = metric.value(dvh, structure.prescription_gy, unit if metric.is_dose else "Gy")
        assert result.value == pytest.approx(value, abs=1e-4) and result.unit == unit
    assert entry_metric({"metric": "MaxDose"}).label == "D0.03cc"  # a scorecard's maximum is the near-maximum
