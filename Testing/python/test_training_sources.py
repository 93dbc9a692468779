"""Training and held-out data from several sources: OpenKBP folders (the challenge's own train / validation
split, compact ``pt_N.npz`` or ``pt_N/`` CSV folders) beside synthetic compact folders with a split file.

The OpenKBP patients are read from ``../shared/data/openkbp`` (never copied into the repository); the
tests that need them skip, saying so, where that folder is absent."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from model_builders import tiny_pipeline
from openkbp_data import OPENKBP, needs_openkbp
from training_data import write_training_cases

from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.cli import main
from dosediffusion_training.data.dataset import PreparedCases, case_name, load_any, with_dose_rule
from dosediffusion_training.data.sources import held_out_cases, training_cases
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.loop import train

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLE = REPOSITORY / "DoseDiffusionTraining" / "configs" / "openkbp-synth-cpu.yaml"
PREPROCESSING = {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Four synthetic compact cases and a split file: train synth_00000/1, val synth_00002, test synth_00003."""
    folder = write_training_cases(tmp_path_factory.mktemp("synth") / "compact", range(4), (20, 40, 48))
    split = folder.parent / "split.json"
    split.write_text(json.dumps({"train": ["synth_00000", "synth_00001"], "val": ["synth_00002"],
                                 "test": ["synth_00003"]}))
    return folder, split


def _run_config(tmp_path: Path, data: dict, **train_settings) -> Path:
    raw = {"data": data, "preprocessing": PREPROCESSING, "codec": {"type": "patch", "factors": [1, 4, 4]},
           "model": {"size": "tiny", "patch_size": [1, 2, 2]},
           "train": {"steps": 2, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 1, "checkpoint_every": 2,
                     "tensorboard": False, **train_settings}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _names(paths) -> list[str]:
    return [case_name(p) for p in paths]


def test_sources_and_held_out_name_the_cases_of_each_part(tmp_path, synth):
    folder, split = synth
    other = write_training_cases(tmp_path / "other", [7], (20, 40, 48))  # a second folder, all of it
    data = {"sources": [{"folder": str(folder), "split_file": str(split)}, {"folder": str(other)}],
            "held_out": [{"folder": str(folder), "split_file": str(split)},  # split: test by default here
                         {"folder": str(folder), "split_file": str(split), "split": "val"}]}
    config = RunConfig.from_yaml(_run_config(tmp_path, data))
    assert _names(training_cases(config.data)) == ["synth_00000", "synth_00001", "synth_00007"]
    assert _names(held_out_cases(config.data)) == ["synth_00003", "synth_00002"]


def test_the_older_folder_and_split_file_keep_their_meaning(tmp_path, synth):
    folder, split = synth
    config = RunConfig.from_yaml(_run_config(tmp_path, {"folder": str(folder), "split_file": str(split)}))
    assert _names(training_cases(config.data)) == ["synth_00000", "synth_00001"]
    assert _names(held_out_cases(config.data)) == ["synth_00002", "synth_00003"]  # val, then test
    whole = RunConfig.from_yaml(_run_config(tmp_path, {"folder": str(folder)}))
    assert len(training_cases(whole.data)) == 4 and held_out_cases(whole.data) == []


@pytest.mark.parametrize(("data", "message"), [
    ({"sources": [{"fodler": "x"}]}, r"data.sources\[0\] needs a folder.*unknown: \['fodler'\]"),
    ({"sources": [{"folder": "x", "split": "train"}]}, "has a split but no split_file"),
    ({"sources": [{"folder": "x"}], "held_out": [{"folder": "y", "spilt": "test"}]}, r"unknown: \['spilt'\]"),
    ({"sources": [{"folder": "x"}], "split_file": "s.json"}, "give each source its own split_file"),
    ({"sources": [], "folder": "x"}, "either a folder .* or sources, not both"),
    ({"sources": []}, "must be a non-empty list"),
    ({"sources": "x"}, "must be a non-empty list"),
    ({"source": [{"folder": "x"}]}, r"needs a folder or sources.*unknown: \['source'\]"),
])
def test_a_misspelt_or_contradictory_data_section_is_refused(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        RunConfig.from_yaml(_run_config(tmp_path, data))


def _refused_by_fit(tmp_path, data, monkeypatch, capsys) -> str:
    """The one-line error ``fit`` prints for ``data`` (exit 2), refused before any model is built or
    anything is written."""
    import dosediffusion_training.training.loop as loop

    def no_model(config):
        raise AssertionError("the model was built before the data sources were checked")

    monkeypatch.setattr(loop, "build_pipeline", no_model)
    capsys.readouterr()
    assert main(["fit", "--config", str(_run_config(tmp_path, data, tensorboard=True)),
                 "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "error:" in error
    assert not (tmp_path / "run").exists()
    return error


def test_fit_refuses_a_case_in_two_sources_or_in_training_and_held_out(tmp_path, synth, monkeypatch, capsys):
    folder, split = synth
    twice = {"sources": [{"folder": str(folder), "split_file": str(split)}, {"folder": str(folder)}]}
    error = _refused_by_fit(tmp_path, twice, monkeypatch, capsys)
    assert "training case 'synth_00000'" in error and "unique" in error
    leaked = {"sources": [{"folder": str(folder), "split_file": str(split)}],
              "held_out": [{"folder": str(folder), "split_file": str(split), "split": "val"},
                           {"folder": str(folder), "split_file": str(split), "split": "train"}]}
    error = _refused_by_fit(tmp_path, leaked, monkeypatch, capsys)
    assert "also training cases: synth_00000, synth_00001;" in error
    with pytest.raises(InputError, match="also training cases"):
        held_out_cases(leaked)


def test_fit_refuses_a_missing_folder_split_file_or_part_and_an_empty_source(tmp_path, synth, monkeypatch, capsys):
    folder, split = synth
    good = {"folder": str(folder), "split_file": str(split)}
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.json").write_text("{train: ")
    refused = {
        "data.sources[1]: no such data folder": {"sources": [good, {"folder": str(tmp_path / "nowhere")}]},
        "data.held_out[0]: no such data folder": {"sources": [good], "held_out": [{"folder": str(tmp_path / "no")}]},
        "data.sources[0]: no such split file": {"sources": [{"folder": str(folder), "split_file": "no.json"}]},
        "data.sources[0]: cannot read the split file": {
            "sources": [{"folder": str(folder), "split_file": str(tmp_path / "broken.json")}]},
        "data.held_out[0]: split 'validation' not in the split file": {
            "sources": [good], "held_out": [{**good, "split": "validation"}]},
        "data.sources[1]: no cases in": {"sources": [good, {"folder": str(tmp_path / "empty")}]},
        "unknown: ['spilt']": {"sources": [good], "held_out": [{"folder": str(folder), "spilt": "test"}]},
    }
    for message, data in refused.items():
        assert message in _refused_by_fit(tmp_path, data, monkeypatch, capsys), message


def test_an_older_split_file_without_val_still_trains_and_holds_out_its_test_part(tmp_path, synth):
    folder, _ = synth
    (tmp_path / "split.json").write_text(json.dumps({"train": ["synth_00000", "synth_00001"], "test": ["synth_00002"]}))
    data = {"folder": str(folder), "split_file": str(tmp_path / "split.json")}
    assert _names(training_cases(data)) == ["synth_00000", "synth_00001"]
    assert _names(held_out_cases(data)) == ["synth_00002"]


def test_the_example_config_reads():
    config = RunConfig.from_yaml(EXAMPLE)
    assert [s["folder"] for s in config.data["sources"]] == [
        "../shared/data/openkbp/train", "DoseDiffusionTraining/datasets/synth-v2/compact"]
    assert [s.get("split") for s in config.data["held_out"]] == [None, "test"]


@needs_openkbp
def test_the_example_config_takes_the_challenge_split_and_the_synthetic_one(monkeypatch):
    monkeypatch.chdir(REPOSITORY)  # its folders are relative to the repository, as every shipped config's
    data = RunConfig.from_yaml(EXAMPLE).data
    train, held_out = training_cases(data), held_out_cases(data)
    synth_split = json.loads((REPOSITORY / "DoseDiffusionTraining/datasets/synth-v2/split.json").read_text())
    patients = sorted(p.stem for p in (OPENKBP / "train").glob("pt_*.npz"))
    assert sorted(n for n in _names(train) if n.startswith("pt_")) == patients
    assert [n for n in _names(train) if not n.startswith("pt_")] == synth_split["train"]
    validation = sorted(p.stem for p in (OPENKBP / "validation").glob("pt_*.npz"))
    assert _names(held_out) == validation + synth_split["test"]
    assert not set(_names(train)) & set(_names(held_out))


@needs_openkbp
def test_openkbp_cases_are_named_like_their_file_or_folder_and_kept_in_the_compact_cache(tmp_path):
    npz, folder = OPENKBP / "train" / "pt_1.npz", OPENKBP / "csv" / "pt_2"
    assert (case_name(npz), case_name(folder)) == ("pt_1", "pt_2")
    for path in (npz, folder):
        direct = load_any(path, tmp_path)  # read by dosediffusion.io.load and written to the cache
        assert (tmp_path / f"{case_name(path)}.case.npz").is_file()
        again = load_any(path, tmp_path)  # the second read is the cached file
        assert again.case_id == direct.case_id == case_name(path)
        assert np.array_equal(again.ct, direct.ct) and np.array_equal(again.dose, direct.dose)
        assert [(s.name, s.role, s.prescription_gy) for s in again.structures.values()] == [
            (s.name, s.role, s.prescription_gy) for s in direct.structures.values()]
        assert all(np.array_equal(again.structures[n].mask, s.mask) for n, s in direct.structures.items())
        assert again.beams == direct.beams and again.meta["SourceFormat"] == "openkbp"
    with pytest.raises(InputError, match="training case 'pt_1' is in .*train and in .*csv"):
        training_cases({"sources": [{"folder": str(OPENKBP / "train")}, {"folder": str(OPENKBP / "csv")}]})


@needs_openkbp
def test_two_openkbp_patients_and_two_synthetic_cases_train_together(tmp_path, synth):
    folder, split = synth
    (tmp_path / "openkbp.json").write_text(json.dumps({"train": ["pt_1", "pt_2"]}))
    data = {"sources": [{"folder": str(OPENKBP / "train"), "split_file": str(tmp_path / "openkbp.json")},
                        {"folder": str(folder), "split_file": str(split)}],
            "cache_dir": str(tmp_path / "cache")}
    config = RunConfig.from_yaml(_run_config(tmp_path, data))
    paths = training_cases(config.data)
    assert _names(paths) == ["pt_1", "pt_2", "synth_00000", "synth_00001"]
    items = PreparedCases(paths, config.preprocessing, config.data["cache_dir"])
    kept = [set(items[i]) for i in range(len(paths))]
    assert kept[0] == kept[2] and "dose" in kept[0] and "beam_plate" in kept[0]  # no modality dropped in a batch
    assert float(items[0]["dose"].max()) > float(items[0]["dose"].min())  # the patient's dose is in the crop
    out = tmp_path / "run"
    pipeline = train(config, out)
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (pipeline / "model_index.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["pt_1.case.npz", "pt_2.case.npz"]


@needs_openkbp
def test_evaluate_scores_the_run_s_held_out_openkbp_and_synthetic_cases(tmp_path, synth, capsys):
    folder, split = synth
    (tmp_path / "validation.json").write_text(json.dumps({"validation": ["pt_201"]}))
    data = {"sources": [{"folder": str(folder), "split_file": str(split)}],
            "held_out": [{"folder": str(OPENKBP / "validation"), "split_file": str(tmp_path / "validation.json"),
                          "split": "validation"},
                         {"folder": str(folder), "split_file": str(split)}]}
    config = _run_config(tmp_path, data)
    model = tiny_pipeline(seed=1).save_pretrained(tmp_path / "m1")
    out = tmp_path / "eval"
    assert main(["evaluate", "--config", str(config), "--model", str(model), "--out", str(out), "--steps", "1"]) == 0
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert [r["case"] for r in rows] == ["pt_201", "synth_00003"]
    case = load_any(OPENKBP / "validation" / "pt_201.npz")
    prediction = DoseDiffusionPipeline.from_pretrained(model)(case, steps=1, seed=0, device="cpu").dose_gy
    expected = np.abs(prediction - case.dose)[case.body.mask].mean()
    assert float(rows[0]["mae_body_gy"]) == pytest.approx(expected, abs=1e-4)
    capsys.readouterr()
    assert main(["evaluate", "--config", str(config), "--split", "val", "--model", str(model),
                 "--out", str(tmp_path / "again")]) == 2
    assert "go with --data" in capsys.readouterr().err and not (tmp_path / "again").exists()
    assert main(["evaluate", "--data", str(folder), "--split", "val", "--model", str(model),
                 "--out", str(tmp_path / "again")]) == 2
    assert "give the split file" in capsys.readouterr().err and not (tmp_path / "again").exists()
    assert main(["evaluate", "--data", str(folder), "--split-file", str(tmp_path / "no.json"), "--model", str(model),
                 "--out", str(tmp_path / "again")]) == 2
    assert "no.json: cannot read the split file" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_evaluate_scores_a_held_out_source_against_its_dose_rule(tmp_path, synth):
    """A held-out source with ``dose: d97_rx`` is scored against its doses scaled as the run trained on them."""
    folder, split = synth
    data = {"sources": [{"folder": str(folder), "split_file": str(split)}],
            "held_out": [{"folder": str(folder), "split_file": str(split), "dose": "d97_rx"}]}
    model = tiny_pipeline(seed=1).save_pretrained(tmp_path / "m1")
    out = tmp_path / "eval"
    assert main(["evaluate", "--config", str(_run_config(tmp_path, data)), "--model", str(model), "--out", str(out),
                 "--steps", "1", "--scorecard", "lung_60"]) == 0
    (row,) = csv.DictReader((out / "cases.csv").open())
    given = load_any(folder / f"{row['case']}.case.npz")
    scaled = with_dose_rule(given, "d97_rx")
    prediction = DoseDiffusionPipeline.from_pretrained(model)(given, steps=1, seed=0, device="cpu").dose_gy
    body = given.body.mask
    assert float(row["mae_body_gy"]) == pytest.approx(np.abs(prediction - scaled.dose)[body].mean(), abs=1e-4)
    assert abs(np.abs(prediction - given.dose)[body].mean() - float(row["mae_body_gy"])) > 1e-3


def test_a_source_may_train_on_doses_scaled_as_its_metric_scores_them(tmp_path, synth):
    """``dose: d97_rx``: the GDP-HMM MAE scales the reference to D97(high PTV) = Rx, so such a source's doses are
    trained on that way; the other sources' as given."""
    from dosediffusion.roles import high_ptv
    from dosediffusion_training.data.sources import dose_rules

    folder, split = synth
    other = write_training_cases(tmp_path / "other", [7], (20, 40, 48))
    data = {"sources": [{"folder": str(folder), "split_file": str(split), "dose": "d97_rx"}, {"folder": str(other)}]}
    rules = dose_rules(data)
    assert rules == {"synth_00000": "d97_rx", "synth_00001": "d97_rx"}
    cases = PreparedCases(training_cases(data), PrepareConfig.from_dict(PREPROCESSING), dose_rules=rules)
    for index, path in enumerate(cases.paths):
        given, trained = load_any(path), cases.case(index)
        high = high_ptv(given)
        d97 = float(np.percentile(trained.dose[high.mask], 3))
        if case_name(path) in rules:
            assert d97 == pytest.approx(high.prescription_gy, rel=1e-4)
            assert not np.isclose(float(np.percentile(given.dose[high.mask], 3)), high.prescription_gy, rtol=1e-3)
        else:
            np.testing.assert_array_equal(trained.dose, given.dose)
    scaled = cases[0]["dose"]  # the prepared target is the scaled dose's channel
    plain = PreparedCases(cases.paths, cases.config)[0]["dose"]
    assert not torch.equal(scaled, plain)
    path = _run_config(tmp_path, {"sources": [{"folder": str(folder), "dose": "relative"}]})
    with pytest.raises(InputError, match=r"dose must be one of as_given, d97_rx, got 'relative'"):
        RunConfig.from_yaml(path)
