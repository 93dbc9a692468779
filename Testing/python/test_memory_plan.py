"""The memory planner: its parameter counts are the models' own, its activations what autograd
really saves (within 20 %), the shipped paper configurations fit an 80 GB GPU, and a configuration
that does not fit is refused with its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from dosediffusion.conditioning.prepare import MODALITIES
from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion_training.cli import main as train_main
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.lora import add_lora
from dosediffusion_training.training.memory_plan import check_fits, latent_grid, model_settings, plan, saved_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "DoseDiffusionTraining" / "configs"


def _config(tmp_path, width=64, layers=3, **train) -> RunConfig:
    raw = {"data": {"folder": "unused"}, "preprocessing": {"crop_shape": [9, 64, 64], "spacing_mm": [5, 5, 5]},
           "codec": {"type": "patch", "factors": [1, 4, 4]},
           "model": {"size": "tiny", "num_attention_heads": 2, "attention_head_dim": width // 2, "ffn_dim": 4 * width,
                     "num_layers": layers},
           "train": {"steps": 1, **train}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return RunConfig.from_yaml(path)


@pytest.mark.parametrize("width, layers", [(64, 3), (128, 2)])
def test_planned_activations_are_what_autograd_saves(tmp_path, width, layers):
    config = _config(tmp_path, width, layers)
    planned = plan(config)
    torch.manual_seed(0)
    model = Any2AnyDiT(**model_settings(config)).train()
    grid = latent_grid(config)
    latents = {m: torch.randn(1, model.config.in_channels, *grid) for m in MODALITIES}  # a stage A/B sample
    measured = saved_bytes(model, latents, bf16=False)
    assert planned.tokens_per_sample == len(MODALITIES) * grid[0] * (grid[1] // 2) * (grid[2] // 2)
    assert abs(planned.activations / measured - 1) < 0.2


def test_parameter_counts_are_the_models_own(tmp_path):
    config = _config(tmp_path)
    model = Any2AnyDiT(**model_settings(config))
    assert plan(config).parameters == sum(p.numel() for p in model.parameters())
    stage_c = _config(tmp_path, stage="C", scorecard="lung_60", num_candidates=2, lora_rank=4)
    add_lora(model, 4)
    found = plan(stage_c)
    assert found.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert found.samples_per_micro_batch == 3  # the ground truth and two candidates


def test_checkpointing_keeps_only_the_block_inputs(tmp_path):
    plain = plan(_config(tmp_path, 64, 4))
    saved = plan(_config(tmp_path, 64, 4, gradient_checkpointing=True))
    assert saved.activations < 0.5 * plain.activations
    assert (saved.weights, saved.gradients, saved.optimizer) == (plain.weights, plain.gradients, plain.optimizer)


@pytest.mark.parametrize("name", ["paper-A", "paper-B", "paper-C"])
def test_the_paper_configurations_fit_an_80_gb_gpu(name):
    config = RunConfig.from_yaml(CONFIGS / f"{name}.yaml")
    found = plan(config, 80)
    assert found.fits and found.parameters > 1.1e9 and found.tokens_per_sample == 7 * 25 * 8 * 9
    config.train.gradient_checkpointing = False
    assert plan(config, 80).activations > 3 * found.activations  # what the checkpointing buys


def test_stage_c_candidates_in_micro_batches_need_one_sample_of_activations():
    config = RunConfig.from_yaml(CONFIGS / "paper-C.yaml")
    whole = plan(config, 80)
    config.train.candidate_micro_batch = 1
    config.train.gradient_accumulation_steps = 4
    chunked = plan(config, 80)
    assert (whole.samples_per_micro_batch, chunked.samples_per_micro_batch) == (5, 1)
    assert chunked.activations == pytest.approx(whole.activations / 5)
    assert chunked.weights == whole.weights


def test_a_configuration_that_does_not_fit_is_refused_with_its_numbers(tmp_path, capsys):
    config = _config(tmp_path)
    with pytest.raises(InputError, match=r"needs [0-9.]+ GiB per GPU \(activations .* the GPU has 1e-05 GiB"):
        check_fits(config, 1e-5)
    assert train_main(["plan", "--config", str(tmp_path / "run.yaml"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["fits"] and document["total"] == pytest.approx(
        document["activations"] + document["weights"] + document["gradients"] + document["optimizer"])
    assert train_main(["plan", "--config", str(tmp_path / "run.yaml"), "--gpu-gib", "0.00001"]) == 1
    assert "NO" in capsys.readouterr().out


def test_the_gpu_check_runs_on_the_cpu_with_tiny_configurations(tmp_path):
    """``Testing/benchmarks/gpu_check.sh --tiny``: the steps a lent GPU will run, on the CPU, so the script
    cannot rot between the sessions that get a GPU."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script), "--tiny"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    train = json.loads((tmp_path / "gpu_check_train_tiny_cpu.json").read_text())
    assert [(r["stage"], r["candidate_micro_batch"]) for r in train["rows"]] == [("A", 0), ("C", 0), ("C", 1)] and all(r["planned_gib"] > 0 for r in train["rows"])
    model = json.loads((tmp_path / "gpu_check_model_tiny_cpu.json").read_text())
    assert model["crop"] == [17, 64, 64] and model["tokens"] == 7 * 5 * 4 * 4  # latents 5 × 8 × 8, (1, 2, 2) patches
    assert 1.1e9 < model["full_size_dit_parameters"] < 1.5e9  # Wan 2.1 1.3B's DiT, counted on the meta device
    assert all(row[f"{stage}_s"] > 0 for row in model["rows"] for stage in ("prepare", "encode", "sample", "decode"))
    assert json.loads((tmp_path / "gpu_check_gamma_cpu.json").read_text())
