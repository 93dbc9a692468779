"""The one prediction path (``dosediffusion.prediction``): cases that cannot be predicted are refused
before the model (or torch) is touched, roles given on the command line, the output folder's rules,
and the same folder from every caller."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from case_builders import box_case
from model_builders import tiny_pipeline
from phantoms import make_phantom_case

from dosediffusion.case import Case, Structure
from dosediffusion.cli.main import main
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import read_volume
from dosediffusion.prediction.checks import DERIVED_BODY, check_predictable
from dosediffusion.prediction.outputs import write_prediction
from dosediffusion.prediction.predictors import LocalPredictor
from dosediffusion.prediction.run import predict_to_folder
from dosediffusion.prediction.scorecard import choose_scorecard
from dosediffusion.roles import RoleChoice, parse_role

# A CLI run in a fresh interpreter, as a user starts it; it reports whether torch was imported.
_CLI = """
import sys
from dosediffusion.cli.main import main
code = main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(seed=5).save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def _copy(phantom_dicom, tmp_path, rename: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the phantom's DICOM folder without the files ``drop``, its ROIs renamed by ``rename``."""
    folder = tmp_path / "case"
    shutil.copytree(phantom_dicom[0], folder)
    for name in drop:
        (folder / name).unlink()
    if rename:
        ds = pydicom.dcmread(folder / "RTSTRUCT.dcm")
        for roi in ds.StructureSetROISequence:
            roi.ROIName = rename.get(roi.ROIName, roi.ROIName)
        ds.save_as(folder / "RTSTRUCT.dcm")
    return folder


def _cli(*args: str) -> tuple[int, str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CLI, *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, time.perf_counter() - start


# ---- refused before the model -------------------------------------------------------------------


@pytest.mark.parametrize("damage, message", [
    ({"drop": ("RTSTRUCT.dcm",)}, "no structures"),
    ({"rename": {"PTV_60": "OuterTarget"}}, "no target: none of the structures"),
])
def test_a_case_that_cannot_be_predicted_exits_2_before_the_model(phantom_dicom, model_dir, tmp_path, damage,
                                                                  message):
    folder = _copy(phantom_dicom, tmp_path, **damage)
    out = tmp_path / "out"
    code, err, seconds = _cli("predict", str(folder), "--model", str(model_dir), "--out", str(out))
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{folder}: {message}" in errors[0] and "Traceback" not in err
    assert "loading the model" not in err and "torch imported: False" in err
    assert not out.exists()  # nothing written, not even an empty folder
    assert seconds < 10


def test_a_file_that_is_not_dicom_exits_2_at_once(model_dir, tmp_path):
    (tmp_path / "notes.dcm").write_text("not DICOM")
    code, err, seconds = _cli("predict", str(tmp_path / "notes.dcm"), "--model", str(model_dir), "--out",
                              str(tmp_path / "out"))
    assert code == 2 and "notes.dcm: not a DICOM file" in err and "torch imported: False" in err
    assert seconds < 10


def _case(**structures) -> Case:
    """The box phantom with only ``structures`` (name → (role, prescription))."""
    case = box_case()
    kept = {}
    for name, (role, dose) in structures.items():
        source = next(s for s in case.structures.values() if s.role == role)
        kept[name] = Structure(name, source.mask, role, dose)
    case.structures = kept
    return case


@pytest.mark.parametrize("structures, message", [
    ({}, "no structures"),
    ({"Cord": ("oar", None), "BODY": ("body", None)}, "no target"),
    ({"PTV": ("ptv", None), "BODY": ("body", None)}, "target without a prescription: PTV; give each its dose"),
])
def test_refusals_say_how_to_fix_them(structures, message):
    with pytest.raises(InputError, match=message) as error:
        check_predictable(_case(**structures))
    assert "--role" in str(error.value) or "structure set" in str(error.value)


def test_an_empty_target_is_refused():
    case = _case(PTV=("ptv", 60.0), BODY=("body", None))
    case.structures["PTV"].mask[:] = False
    with pytest.raises(InputError, match="target with no voxel on the CT grid: PTV"):
        check_predictable(case)


def test_a_missing_body_is_derived_from_the_ct_and_said():
    case = _case(PTV=("ptv", 60.0), Cord=("oar", None), Helper=("ptv", 60.0))
    case.structures["Helper"].role, case.structures["Helper"].prescription_gy = "other", None
    original = box_case()
    check_predictable(case)
    body = case.structures[DERIVED_BODY]
    assert body.role == "body" and case.body is body
    truth = original.body.mask
    assert np.count_nonzero(body.mask ^ truth) <= 0.02 * np.count_nonzero(truth)  # the phantom's own body
    assert any("derived from the CT" in w for w in case.warnings)
    assert any("does not use" in w and "Helper" in w for w in case.warnings)
    said = list(case.warnings)
    check_predictable(case)  # checked again (the Slicer module, then its process): nothing said twice
    assert case.warnings == said


def test_no_body_and_nothing_to_derive_it_from_is_refused():
    case = _case(PTV=("ptv", 60.0))
    case.ct[:] = -1000.0
    with pytest.raises(InputError, match="no body structure, and none can be derived from the CT"):
        check_predictable(case)


# ---- roles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("OuterTarget=ptv:50", ("OuterTarget", RoleChoice("ptv", 50.0))),
    ("Core=OAR", ("Core", RoleChoice("oar"))),
    ("a=b=body", ("a=b", RoleChoice("body"))),
    ("Ring=ignore", ("Ring", RoleChoice("ignore"))),
])
def test_parse_role(text, expected):
    assert parse_role(text) == expected


@pytest.mark.parametrize("text, message", [
    ("Core", "write NAME=ROLE"), ("Core=organ", "role must be one of"), ("T=ptv:abc", "must be a number"),
    ("Core=oar:20", "goes with role ptv only"), ("T=ptv:0", "0-150 Gy"),
])
def test_bad_roles_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_role(text)


def test_tg119_names_with_roles_give_the_dose_of_the_renamed_copy(phantom_dicom, model_dir, tmp_path):
    """TG-119's own names (OuterTarget, Core) with --role give exactly the prediction of the same plan with
    names the alias table knows."""
    common = ["--model", str(model_dir), "--steps", "2", "--scorecard", "none", "--no-report"]
    assert main(["predict", str(phantom_dicom[0]), "--out", str(tmp_path / "named"), *common]) == 0
    tg119 = _copy(phantom_dicom, tmp_path, rename={"PTV_60": "OuterTarget", "SpinalCord": "Core"})
    assert main(["predict", str(tg119), "--out", str(tmp_path / "tg119"), *common]) == 2  # no target without roles
    assert main(["predict", str(tg119), "--out", str(tmp_path / "tg119"), *common,
                 "--role", "OuterTarget=ptv:60", "--role", "Core=oar"]) == 0
    named, _ = read_volume(tmp_path / "named" / phantom_dicom[0].name / "dose.nrrd")
    renamed, _ = read_volume(tmp_path / "tg119" / "case" / "dose.nrrd")
    np.testing.assert_array_equal(renamed, named)


def test_role_flags_and_an_own_alias_table_reach_inspect(phantom_dicom, tmp_path, capsys):
    tg119 = _copy(phantom_dicom, tmp_path, rename={"PTV_60": "OuterTarget", "SpinalCord": "Core"})
    assert main(["inspect", str(tg119), "--json", "--role", "OuterTarget=ptv:50", "--role", "core=oar",
                 "--role", "Esophagus=ignore"]) == 0
    structures = json.loads(capsys.readouterr().out)["structures"]
    assert structures["OuterTarget"]["role"] == "ptv" and structures["OuterTarget"]["prescription_gy"] == 50.0
    assert structures["Core"]["role"] == "oar" and structures["Esophagus"]["role"] == "other"
    table = json.loads((Path(__file__).parents[2] / "DoseDiffusion/Resources/structure_aliases.json").read_text())
    table["oar"]["SpinalCord"].append("core")
    table["ptv"].append("target$")
    (tmp_path / "ours.json").write_text(json.dumps(table))
    assert main(["inspect", str(tg119), "--json", "--aliases", str(tmp_path / "ours.json")]) == 0
    structures = json.loads(capsys.readouterr().out)["structures"]
    assert structures["Core"]["role"] == "oar" and structures["Core"]["canonical"] == "SpinalCord"
    assert structures["OuterTarget"]["role"] == "ptv" and structures["OuterTarget"]["prescription_gy"] == 60.0
    assert main(["dvh", str(tg119), "--role", "Nothing=oar"]) == 2
    assert "does not have; its structures: BODY, Core" in capsys.readouterr().err


# ---- the output folder ---------------------------------------------------------------------------


def test_an_existing_prediction_is_replaced_only_with_overwrite(phantom_dicom, model_dir, tmp_path, capsys):
    args = ["predict", str(phantom_dicom[0]), "--model", str(model_dir), "--out", str(tmp_path), "--steps", "1",
            "--no-report"]
    assert main(args) == 0
    summary = tmp_path / phantom_dicom[0].name / "summary.json"
    first = summary.read_text()
    assert main([*args, "--seed", "7"]) == 2
    assert "exists already; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert summary.read_text() == first
    assert main([*args, "--seed", "7", "--overwrite"]) == 0
    assert json.loads(summary.read_text())["seed"] == 7


def test_outputs_have_ordinary_permissions(phantom_dicom, model_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        assert main(["predict", str(phantom_dicom[0]), "--model", str(model_dir), "--out", str(tmp_path),
                     "--steps", "1"]) == 0
    finally:
        os.umask(previous)
    folder = tmp_path / phantom_dicom[0].name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert set(modes) >= {"RTDOSE.dcm", "dose.nrrd", "report.png", "summary.json", "dvh.csv"}
    assert set(modes.values()) == {0o644}, modes


def test_predict_says_which_model_and_scorecard_and_why(phantom_dicom, model_dir, tmp_path, capsys):
    assert main(["predict", str(phantom_dicom[0]), "--model", str(model_dir), "--out", str(tmp_path),
                 "--steps", "1", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert f"model: DoseDiffusionPipeline, written by dosediffusion 0.1.0, at {model_dir}" in err
    assert ("scorecard: Lung 60 Gy in 30 fractions ('lung_60' is the closest to the case's organs and prescription; "
            "template 60 Gy in 30 fractions, case 60 Gy in 30 fractions: fits)") in err
    assert err.index("reading the case") < err.index("scorecard:") < err.index("loading the model")
    summary = json.loads((tmp_path / phantom_dicom[0].name / "summary.json").read_text())
    assert summary["model"] == {"folder": str(model_dir), "kind": "DoseDiffusionPipeline", "version": "0.1.0",
                                "demo": False}
    assert summary["scorecard_choice"]["template"].startswith("Lung 60")
    assert summary["prescription"] == {"levels_gy": [60.0], "fractions": 30}


def test_every_caller_writes_the_same_folder(phantom_dicom, model_dir, tmp_path):
    """The CLI and the layer's own entry (what the Slicer logic and batch script call) give the same files
    for the same case, seed and model."""
    assert main(["predict", str(phantom_dicom[0]), "--model", str(model_dir), "--out", str(tmp_path / "cli"),
                 "--steps", "2", "--seed", "3", "--no-report"]) == 0
    case = load_case(phantom_dicom[0])
    summary = predict_to_folder(case, LocalPredictor(model_dir, "cpu"), tmp_path / "layer" / "x", steps=2, seed=3,
                                report=False)
    cli = tmp_path / "cli" / phantom_dicom[0].name
    layer = tmp_path / "layer" / "x"
    assert sorted(p.name for p in cli.iterdir()) == sorted(p.name for p in layer.iterdir())
    np.testing.assert_array_equal(read_volume(cli / "dose.nrrd")[0], read_volume(layer / "dose.nrrd")[0])
    assert (cli / "dvh.csv").read_text() == (layer / "dvh.csv").read_text()
    assert (cli / "scorecard.json").read_text() == (layer / "scorecard.json").read_text()
    assert json.loads((cli / "summary.json").read_text())["structures"] == summary["structures"]


# ---- one rule each ------------------------------------------------------------------------------


def test_the_auto_scorecard_follows_the_case_and_says_why():
    from dosediffusion.metrics.scorecard import load_template
    from dosediffusion.metrics.scorecard_choice import suggest_template

    case = box_case()
    auto = choose_scorecard("auto", case)
    assert auto.template == load_template(suggest_template(case)) and "closest to the case's organs" in auto.reason
    assert choose_scorecard("prostate_78", case).name.startswith("Prostate")
    assert choose_scorecard("none", case).template is None
    case.prescription.levels_gy = [20.0]
    for structure in case.with_role("ptv"):
        structure.prescription_gy = 20.0
    nothing = choose_scorecard(None, case)
    assert nothing.template is None and "--scorecard" in nothing.reason


def test_training_never_imports_the_command_line():
    """The training package uses the core and the prediction layer, never ``dosediffusion.cli``."""
    import ast

    root = Path(__file__).parents[2] / "DoseDiffusionTraining"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("dosediffusion.cli")]
    assert not offenders


def test_a_prediction_exposes_and_writes_the_std_of_its_candidates(tmp_path):
    """``DosePrediction.dose_std_gy`` is the std of its candidates; ``write_prediction`` writes it and its
    summary with several candidates, neither with one."""
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    pipeline = tiny_pipeline(seed=2)
    prediction = pipeline(case, steps=1, seed=0, num_candidates=3, device="cpu", selection="mae")
    std = prediction.dose_std_gy
    np.testing.assert_allclose(std, np.std(np.stack(prediction.candidates_gy), axis=0, ddof=1), rtol=1e-5, atol=1e-5)
    assert std.max() > 0 and (std[~case.body.mask] == 0).all()
    summary = write_prediction(case, prediction, tmp_path / "three", report=False)
    assert (tmp_path / "three" / "dose_std.nrrd").is_file()
    assert summary["uncertainty"]["regions"]["body"]["max_gy"] == pytest.approx(float(std[case.body.mask].max()), abs=1e-4)
    assert summary["uncertainty"]["error_correlation"]["voxels"] == case.body.mask.sum()
    single = pipeline(case, steps=1, seed=0, device="cpu")
    assert single.dose_std_gy is None
    assert "uncertainty" not in write_prediction(case, single, tmp_path / "one", report=False)
    assert not (tmp_path / "one" / "dose_std.nrrd").exists()
