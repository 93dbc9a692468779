"""Wan 2.1 weights from a local diffusers folder into the Any2Any model, and the Wan VAE codec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_builders import TINY_PREPROCESSING, save_tiny_wan
from phantoms import make_phantom_case
from safetensors.torch import load_file, save_file

from dosediffusion.conditioning.prepare import MODALITIES
from dosediffusion.errors import InputError
from dosediffusion.model.codecs import WanVAECodec
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.wan_loading import any2any_from_wan, pipeline_from_wan, read_wan_state_dict


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan")
    save_tiny_wan(folder)
    return folder


def test_every_copied_tensor_arrives_unchanged(wan_dir):
    saved = load_file(wan_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    model, report = any2any_from_wan(wan_dir)
    own = model.state_dict()
    assert set(report.copied) | set(report.dropped) == set(saved)  # every Wan tensor accounted for
    for wan_key, targets in report.copied.items():
        for target in targets:
            assert torch.equal(own[target], saved[wan_key]), target
    assert report.copied["patch_embedding.weight"] == [f"patch_embeddings.{m}.weight" for m in MODALITIES]
    assert all(".attn2." in k or ".norm2." in k or "text_embedder" in k for k in report.dropped)
    assert any(".attn2.to_q.weight" in k for k in report.dropped)
    assert report.new == ["condition_embedder.role_embedding.weight"]
    assert "role_embedding" in report.summary()


@torch.no_grad()
def test_one_dose_slot_reproduces_wan_without_cross_attention(wan_dir):
    """With the slot axis off, a zero role embedding and Wan's cross-attention silenced, the
    Any2Any model on a single target slot computes exactly what Wan computes."""
    from diffusers import WanTransformer3DModel

    wan = WanTransformer3DModel.from_pretrained(wan_dir / "transformer")
    for block in wan.blocks:
        block.attn2.to_out[0].weight.zero_()
        block.attn2.to_out[0].bias.zero_()
    model, _ = any2any_from_wan(wan_dir, rope_slot_dim=0)
    model.condition_embedder.role_embedding.weight.zero_()
    x = torch.randn(2, 4, 3, 8, 10)
    t = torch.tensor([700.0, 30.0])
    expected = wan(x, t, torch.randn(2, 5, 16)).sample
    assert torch.allclose(model({"dose": x}, t, ["dose"]).sample["dose"], expected, atol=1e-5)


def test_fewer_layers_drop_the_extra_blocks(wan_dir):
    model, report = any2any_from_wan(wan_dir, num_layers=1)
    assert len(model.blocks) == 1
    assert any(k.startswith("blocks.1.attn1") for k in report.dropped)


def test_sharded_weights_load(wan_dir, tmp_path):
    state = load_file(wan_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    folder = tmp_path / "transformer"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = read_wan_state_dict(folder)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in keys)


def test_wrong_folders_and_shapes_are_clear(wan_dir, tmp_path):
    with pytest.raises(InputError, match="config.json"):
        any2any_from_wan(tmp_path)
    with pytest.raises(InputError, match="do not fit"):
        any2any_from_wan(wan_dir, ffn_dim=32)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(InputError, match="not a WanTransformer3DModel"):
        any2any_from_wan(tmp_path)


def test_vae_codec_round_trip_and_normalisation(wan_dir):
    codec = WanVAECodec.from_pretrained(wan_dir / "vae")
    volume = torch.rand(2, 1, 9, 16, 24) * 2 - 1
    latents = codec.encode(volume)
    assert latents.shape == (2, 4, 3, 2, 3) == (2, codec.latent_channels, *codec.latent_shape((9, 16, 24)))
    raw = codec.vae.encode(volume.repeat(1, 3, 1, 1, 1)).latent_dist.mode()
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, -1, 1, 1, 1)
    std = torch.tensor([1.5, 0.5, 2.0, 1.0]).view(1, -1, 1, 1, 1)
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-6)
    decoded = codec.decode(latents)
    assert decoded.shape == volume.shape
    expected = codec.vae.decode(raw).sample.mean(dim=1, keepdim=True)
    assert torch.allclose(decoded, expected, atol=1e-5)
    for bad in ((8, 16, 24), (9, 12, 24)):
        with pytest.raises(InputError, match="1 \\+ 4k"):
            codec.check_shape(bad)


def test_pipeline_from_wan_predicts_and_round_trips(wan_dir, tmp_path):
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    pipe, report = pipeline_from_wan(wan_dir, TINY_PREPROCESSING)
    assert report.new == ["condition_embedder.role_embedding.weight"]
    prediction = pipe(case, steps=2, seed=0)
    assert prediction.dose_gy.shape == case.grid.shape
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DoseDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.codec, WanVAECodec)
    assert np.array_equal(loaded(case, steps=2, seed=0).dose_gy, prediction.dose_gy)
