"""The DiT's voxel head: patch-codec latents back to voxels, a new head that changes nothing, a trained head that
reads its conditions voxel by voxel (locally, as convolutions do), the settings it needs, and a pipeline with
one that trains, saves, loads and predicts through the prediction path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from model_builders import TINY_PREPROCESSING, tiny_model
from training_data import write_training_cases

from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.model.codecs import PatchCodec
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.space_to_depth import depth_to_space, space_to_depth
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.loop import train

HEAD = {"voxel_head_factors": (1, 2, 2), "voxel_head_conditions": ("ptv", "body"), "prediction_type": "sample"}


def _latents(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(1, 4, 4, 8, 8, generator=g) for m in ("ct", "ptv", "body", "dose")}


def test_blocks_and_voxels_are_one_exact_pair():
    volume = torch.randn(2, 1, 6, 8, 12)
    blocks = space_to_depth(volume, (2, 4, 3))
    assert blocks.shape == (2, 24, 3, 2, 4) and torch.equal(depth_to_space(blocks, (2, 4, 3)), volume)
    assert torch.equal(blocks, PatchCodec((2, 4, 3)).encode(volume))  # the patch codec's own latents
    assert torch.equal(blocks[0, :, 0, 0, 0], volume[0, 0, :2, :4, :3].reshape(-1))  # a latent voxel is its block


def test_a_new_head_passes_the_dit_through_and_a_trained_one_reads_its_conditions_voxel_by_voxel():
    plain, headed = tiny_model(3, prediction_type="sample"), tiny_model(3, **HEAD)  # the same DiT weights
    latents, t = _latents(), torch.tensor([300.0])
    with torch.no_grad():
        torch.testing.assert_close(headed(latents, t).sample["dose"], plain(latents, t).sample["dose"])
        for p in headed.voxel_head.parameters():  # as if trained: every weight non-zero
            p.copy_(torch.randn_like(p) * 0.2)
        assert not torch.allclose(headed(latents, t).sample["dose"], plain(latents, t).sample["dose"])
        # one PTV voxel changed: the head's output changes at that voxel and within its convolutions' reach
        # (five 3³ convolutions: 5 voxels), not in whole tokens and not beyond
        head, target = headed.voxel_head, latents["dose"]
        before = depth_to_space(head(target, latents), (1, 2, 2))[0, 0]
        ptv = depth_to_space(latents["ptv"], (1, 2, 2))
        ptv[0, 0, 2, 7, 9] += 1.0
        after = depth_to_space(head(target, {**latents, "ptv": space_to_depth(ptv, (1, 2, 2))}), (1, 2, 2))[0, 0]
    changed = (after - before).abs() > 1e-7
    z, y, x = np.nonzero(changed.numpy())
    assert changed[2, 7, 9] and max(abs(z - 2).max(), abs(y - 7).max(), abs(x - 9).max()) <= 5
    assert changed.sum() < changed.numel()


def test_a_voxel_head_needs_a_sample_and_the_patch_codecs_blocks():
    with pytest.raises(InputError, match="prediction_type 'sample'"):
        tiny_model(0, voxel_head_factors=(1, 2, 2))
    with pytest.raises(InputError, match="whose product is in_channels"):
        tiny_model(0, **{**HEAD, "voxel_head_factors": (1, 4, 4)})
    with pytest.raises(InputError, match="not among the modalities"):
        tiny_model(0, **{**HEAD, "voxel_head_conditions": ("mri",)})
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(InputError, match="needs a patch codec with those factors"):
        DoseDiffusionPipeline(PatchCodec((1, 1, 4)), tiny_model(0, **HEAD), FlowMatchEulerDiscreteScheduler(),
                              TINY_PREPROCESSING)


def test_a_pipeline_with_a_voxel_head_trains_loads_and_predicts(tmp_path, phantom_dicom):
    data = write_training_cases(tmp_path / "cases", range(2), (12, 32, 40))
    raw = {"data": {"folder": str(data)}, "preprocessing": {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]},
           "codec": {"type": "patch", "factors": [1, 2, 2]},
           "model": {"size": "tiny", "patch_size": [1, 2, 2], "prediction_type": "sample",
                     "voxel_head_factors": [1, 2, 2], "voxel_head_conditions": ["ptv", "body", "ct"],
                     "voxel_head_kernel": 1},
           "train": {"steps": 3, "batch_size": 1, "learning_rate": 1e-2, "warmup_steps": 1, "checkpoint_every": 3,
                     "tensorboard": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    folder = train(RunConfig.from_yaml(tmp_path / "run.yaml"), tmp_path / "run")
    pipeline = DoseDiffusionPipeline.from_pretrained(folder)
    head = pipeline.model.voxel_head
    assert head is not None and head.conditions == ("ptv", "body", "ct") and head.conv_in.kernel_size == (1, 1, 1)
    assert float(head.conv_out.weight.detach().abs().sum()) > 0  # trained: no longer the zero it started at
    case = load_case(phantom_dicom[0])
    dose = pipeline(case, steps=1).dose_gy
    assert dose.shape == case.grid.shape and np.isfinite(dose).all()
