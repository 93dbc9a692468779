"""The training loop: it learns, it resumes exactly, and its pipeline folder predicts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from training_data import write_training_cases

from dosediffusion.errors import InputError
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.data.dataset import list_cases, make_split
from dosediffusion_training.synth.phantom import make_phantom
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.loop import batch_indices, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_training_cases(tmp_path_factory.mktemp("compact"), range(3), (20, 40, 48))


def _config(tmp_path, data, **train) -> RunConfig:
    raw = {"data": {"folder": str(data)}, "preprocessing": {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]},
           "codec": {"type": "patch", "factors": [1, 4, 4]}, "model": {"size": "tiny", "patch_size": [1, 2, 2]},
           "train": {"steps": 4, "batch_size": 2, "learning_rate": 2e-3, "warmup_steps": 1, "checkpoint_every": 2, **train}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return RunConfig.from_yaml(path)


def _weights(folder):
    return DoseDiffusionPipeline.from_pretrained(folder).model.state_dict()


def test_resume_continues_exactly(tmp_path, data):
    straight = train(_config(tmp_path, data), tmp_path / "a")
    config = _config(tmp_path, data)
    config.train.steps = 2
    train(config, tmp_path / "b")
    resumed = train(_config(tmp_path, data), tmp_path / "b")
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_a_wall_time_budget_ends_the_run_with_a_checkpoint_and_a_pipeline(tmp_path, data):
    out = tmp_path / "run"
    folder = train(_config(tmp_path, data, steps=1000, checkpoint_every=1000, max_minutes=1e-9), out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    assert (folder / "model_index.json").exists()
    resumed = train(_config(tmp_path, data, steps=2, checkpoint_every=1000), out)  # resumes at step 1
    assert [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()] == [1, 2]
    assert resumed == folder


def test_training_lowers_the_loss_and_the_pipeline_predicts(tmp_path, data):
    out = tmp_path / "run"
    folder = train(_config(tmp_path, data, steps=60, learning_rate=3e-3, log_every=5, checkpoint_every=60), out)
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    pipe = DoseDiffusionPipeline.from_pretrained(folder)
    case = make_phantom(0, shape=(20, 40, 48))
    dose = pipe(case, steps=2).dose_gy
    assert dose.shape == case.grid.shape and np.isfinite(dose).all()


def test_gradient_accumulation_is_the_bigger_batch(tmp_path, data):
    """Two micro-batches of one case per step train the model a batch of two does: the same cases, the
    same noise (drawn per sample by its place in the step's batch), the mean of the same losses."""
    whole = train(_config(tmp_path, data, steps=3, batch_size=2), tmp_path / "whole")
    split = train(_config(tmp_path, data, steps=3, batch_size=1, gradient_accumulation_steps=2), tmp_path / "split")
    single = train(_config(tmp_path, data, steps=3, batch_size=1), tmp_path / "single")
    a, b, c = _weights(whole), _weights(split), _weights(single)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], c[k], rtol=1e-4, atol=1e-6) for k in a)  # one case per step differs
    logged = [json.loads(line)["loss"] for line in (tmp_path / "split" / "loss.jsonl").read_text().splitlines()]
    expected = [json.loads(line)["loss"] for line in (tmp_path / "whole" / "loss.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(expected, rel=1e-4)


def test_gradient_checkpointing_trains_the_same_model(tmp_path, data):
    plain = _weights(train(_config(tmp_path, data, steps=2), tmp_path / "plain"))
    saved = _weights(train(_config(tmp_path, data, steps=2, gradient_checkpointing=True), tmp_path / "checkpointed"))
    assert all(torch.allclose(plain[k], saved[k], rtol=1e-4, atol=1e-6) for k in plain)


def test_a_half_written_checkpoint_is_never_resumed(tmp_path, data):
    out = tmp_path / "run"
    train(_config(tmp_path, data, steps=2), out)
    partial = out / "checkpoints" / "step_4.partial"  # a crash while step 4 was being written
    shutil.copytree(out / "checkpoints" / "step_2", partial)
    (partial / "state.json").unlink()
    resumed = train(_config(tmp_path, data, steps=4), out)
    straight = train(_config(tmp_path, data, steps=4), tmp_path / "straight")
    a, b = _weights(resumed), _weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".partial")) == [
        "step_2", "step_4"]


def test_stage_roles_and_curriculum():
    from dosediffusion.conditioning.prepare import MODALITIES
    from dosediffusion_training.training.config import TrainSettings
    from dosediffusion_training.training.loop import choose_roles

    present = list(MODALITIES)
    assert choose_roles(5, present, TrainSettings()) == ("dose", present[:-1])
    settings = TrainSettings(stage="A", curriculum_steps=100)
    early = [choose_roles(step, present, settings) for step in range(0, 5)]
    assert all(len(conditions) == 6 for _, conditions in early)  # the curriculum starts with every condition
    late = [choose_roles(step, present, settings) for step in range(200, 600)]
    assert {t for t, _ in late} == set(present)  # any modality becomes the target
    assert {len(c) for _, c in late} == set(range(1, 7))
    assert all(t not in c and set(c) <= set(present) for t, c in late)
    assert late == [choose_roles(step, present, settings) for step in range(200, 600)]  # a function of the step


def test_stage_a_then_b_from_its_pipeline(tmp_path, data):
    folder = train(_config(tmp_path, data, steps=3, stage="A", curriculum_steps=2), tmp_path / "a")
    config = _config(tmp_path, data, steps=2)
    config.model = {"init_from_pipeline": str(folder)}
    start = _weights(folder)
    tuned = _weights(train(config, tmp_path / "b"))
    assert set(tuned) == set(start) and any(not torch.equal(tuned[k], start[k]) for k in start)
    config.model = {"init_from_pipeline": str(folder), "num_layers": 5}
    with pytest.raises(InputError, match="num_layers"):
        train(config, tmp_path / "c")


def test_epochs_visit_every_case_once():
    seen = np.concatenate([batch_indices(step, 7, 2, seed=3) for step in range(7)])  # 14 = two epochs
    assert sorted(seen[:7]) == list(range(7)) and sorted(seen[7:]) == list(range(7))
    assert not np.array_equal(seen[:7], seen[7:])


def test_shipped_run_configs_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "DoseDiffusionTraining" / "configs"
    configs = sorted(folder.glob("*.yaml"))
    assert configs
    for path in configs:
        config = RunConfig.from_yaml(path)
        assert config.train.steps > 0 and config.preprocessing.crop_shape


def test_split_command(tmp_path, data):
    from dosediffusion_training.cli import main

    assert main(["split", str(data), "--out", str(tmp_path / "s.json"), "--fractions", "0.34", "0.33", "0.33"]) == 0
    split = json.loads((tmp_path / "s.json").read_text())
    assert sum(len(v) for v in split.values()) == 3


def test_splits_and_bad_configs(tmp_path, data):
    split = make_split(list_cases(data), (0.34, 0.33, 0.33), seed=1)
    assert sorted(split["train"] + split["val"] + split["test"]) == ["synth_00000", "synth_00001", "synth_00002"]
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert [p.name for p in list_cases(data, tmp_path / "split.json", "test")] == [f"{split['test'][0]}.case.npz"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {}, "preprocessing": {}, "optimiser": {}}))
    with pytest.raises(InputError, match="optimiser"):
        RunConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"folder": "x"}, "preprocessing": {}, "train": {"lr": 1}}))
    with pytest.raises(InputError, match="unknown train settings"):
        RunConfig.from_yaml(tmp_path / "bad.yaml")


def test_ema_is_shipped_and_resumes_exactly(tmp_path, data):
    straight = train(_config(tmp_path, data, ema_decay=0.5), tmp_path / "a")
    config = _config(tmp_path, data, ema_decay=0.5)
    config.train.steps = 2
    train(config, tmp_path / "b")
    resumed = train(_config(tmp_path, data, ema_decay=0.5), tmp_path / "b")
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = _weights(train(_config(tmp_path, data), tmp_path / "c"))
    assert any(not torch.equal(a[k], plain[k]) for k in a)  # the EMA, not the last weights, was shipped
    assert list((tmp_path / "a" / "logs").rglob("events.out.tfevents*"))


def test_flip_augmentation_mirrors_every_channel_alike():
    from dosediffusion_training.training.config import TrainSettings
    from dosediffusion_training.training.loop import augment

    batch = {"ct": torch.arange(24.0).view(1, 1, 2, 3, 4), "dose": torch.arange(24.0).view(1, 1, 2, 3, 4) * 2}
    settings = TrainSettings(flip_lr_probability=0.5)
    flipped = [step for step in range(40) if not torch.equal(augment(batch, step, settings)["ct"], batch["ct"])]
    assert 8 < len(flipped) < 32
    out = augment(batch, flipped[0], settings)
    assert torch.equal(out["ct"], batch["ct"].flip(-1)) and torch.equal(out["dose"], 2 * out["ct"])
    assert augment(batch, flipped[0], TrainSettings()) is batch


def test_dicom_cases_are_cached_as_compact_files(tmp_path, phantom_dicom):
    from dosediffusion_training.data.dataset import load_any

    folder = phantom_dicom[0]
    first = load_any(folder, tmp_path)
    assert (tmp_path / f"{folder.name}.case.npz").is_file()
    again = load_any(folder, tmp_path)
    assert np.array_equal(again.structures["PTV_60"].mask, first.structures["PTV_60"].mask)
    assert np.array_equal(again.dose, first.dose)


def test_mednext_baseline_trains_and_predicts_through_the_cli(tmp_path, data, capsys):
    from dosediffusion.cli.main import main as cli
    from dosediffusion.io.volume_sidecar import write_sidecar_case
    from dosediffusion.model.loading import load_pipeline
    from dosediffusion.model.regression import RegressionPipeline

    config = _config(tmp_path, data, steps=30, learning_rate=3e-3, checkpoint_every=30, log_every=5)
    config.model = {"type": "mednext", "init_filters": 4}
    folder = train(config, tmp_path / "mednext")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "mednext" / "loss.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    pipe = load_pipeline(folder)
    assert isinstance(pipe, RegressionPipeline)
    case = make_phantom(1, shape=(20, 40, 48))
    a, b = pipe(case, steps=1, seed=0).dose_gy, pipe(case, steps=10, seed=5).dose_gy
    assert np.array_equal(a, b) and a.shape == case.grid.shape and (a[~case.body.mask] == 0).all()
    write_sidecar_case(case, tmp_path / "one")
    assert cli(["predict", str(tmp_path / "one"), "--model", str(folder), "--out", str(tmp_path / "o"),
                "--no-report", "--scorecard", "none"]) == 0
    assert (tmp_path / "o" / "one" / "RTDOSE.dcm").is_file()


def test_two_process_ddp_on_cpu_runs(tmp_path, data):
    """Two CPU processes (torchrun; Accelerate then uses DDP over gloo) train and write one pipeline."""
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"folder": str(data)}, "preprocessing": {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]},
        "codec": {"type": "patch", "factors": [1, 4, 4]}, "model": {"size": "tiny"},
        "train": {"steps": 2, "batch_size": 1, "learning_rate": 1e-3, "warmup_steps": 1, "checkpoint_every": 2,
                  "tensorboard": False}}))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "dosediffusion_training.cli", "fit", "--config", str(config), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((tmp_path / "o" / "checkpoints" / "step_2" / "state.json").read_text())
    assert state == {"step": 2, "processes": 2}
    assert (tmp_path / "o" / "pipeline" / "model_index.json").is_file()


@pytest.mark.parametrize("stage", ["A", "B", "C"])
def test_each_stage_runs_on_the_committed_cases(tmp_path, stage):
    """A few steps of every stage on the committed pyRadPlan cases: finite losses, a pipeline folder."""
    from pathlib import Path

    from dosediffusion_training.training.scardnft import train_scardnft

    committed = Path(__file__).resolve().parents[1] / "data" / "synth" / "compact"
    extra = {"stage": stage, "steps": 2, "checkpoint_every": 2}
    if stage == "C":
        extra.update(scorecard="lung_60", num_candidates=2, candidate_steps=2, lora_rank=4)
    config = _config(tmp_path, committed, **extra)
    folder = (train_scardnft if stage == "C" else train)(config, tmp_path / stage)
    losses = [json.loads(line)["loss"] for line in (tmp_path / stage / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (folder / "model_index.json").is_file()
