"""Wan 2.1 weights from a local diffusers folder into the Any2Any model, and the Wan VAE codec."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from model_builders import TINY_PREPROCESSING, save_tiny_wan
from phantoms import make_phantom_case
from safetensors.torch import load_file, save_file

from dosediffusion.conditioning.prepare import MODALITIES
from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.codecs import WanVAECodec
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.wan_loading import any2any_config_from_wan, any2any_from_wan, pipeline_from_wan


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan")
    save_tiny_wan(folder)
    return folder


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (RoPE tables included) by name."""
    return dict(chain(model.named_parameters(), model.named_buffers()))


def _eager_from_wan(wan_dir: Path, seed: int, **overrides) -> tuple[Any2AnyDiT, dict[str, torch.Tensor]]:
    """The loading procedure before streaming, as the reference: the model constructed normally
    after ``torch.manual_seed(seed)``, and all Wan tensors (of every shard) in memory."""
    torch.manual_seed(seed)
    model = Any2AnyDiT(**any2any_config_from_wan(wan_dir / "transformer", **overrides))
    wan = {}
    for file in sorted((wan_dir / "transformer").glob("*.safetensors")):
        wan.update(load_file(file))
    return model, wan


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
    (folder / "config.json").write_text((wan_dir / "transformer" / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, report = any2any_from_wan(tmp_path)
    single_model, single_report = any2any_from_wan(wan_dir)
    assert report.copied == single_report.copied and sorted(report.dropped) == sorted(single_report.dropped)
    own, single = model.state_dict(), single_model.state_dict()
    assert all(torch.equal(own[t], single[t]) for targets in report.copied.values() for t in targets)


@pytest.mark.parametrize("shard_size", [None, "40KB"], ids=["single_file", "sharded"])
def test_streamed_model_equals_the_eager_one(wan_dir, tmp_path, shard_size):
    """Tensor for tensor what constructing the model normally and copying Wan over it gives, with the
    same seed: Wan's tensors copied exactly, the role embedding and RoPE tables as initialised."""
    if shard_size is not None:
        WanTransformer3DModel.from_pretrained(wan_dir / "transformer").save_pretrained(
            tmp_path / "transformer", max_shard_size=shard_size)
        assert len(list((tmp_path / "transformer").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 2
        wan_dir = tmp_path
    eager, wan = _eager_from_wan(wan_dir, seed=3)
    torch.manual_seed(3)
    streamed, report = any2any_from_wan(wan_dir)
    assert set(report.copied) | set(report.dropped) == set(wan)
    assert report.new == ["condition_embedder.role_embedding.weight"]
    eager_tensors, streamed_tensors = _tensors(eager), _tensors(streamed)
    for wan_key, targets in report.copied.items():
        for target in targets:
            eager_tensors[target].data.copy_(wan[wan_key])
    assert set(streamed_tensors) == set(eager_tensors)
    assert not [name for name, tensor in streamed_tensors.items() if tensor.is_meta]
    for name, tensor in streamed_tensors.items():
        assert tensor.dtype == eager_tensors[name].dtype and torch.equal(tensor, eager_tensors[name]), name
    patches = [streamed.patch_embeddings[m].weight for m in MODALITIES]  # copies, not one shared tensor
    assert len({p.data_ptr() for p in patches}) == len(MODALITIES)
    assert all(p.requires_grad for p in streamed.parameters())
    assert not any(b.requires_grad for b in streamed.buffers())


def test_deeper_model_initialises_the_extra_blocks(wan_dir):
    """Blocks Wan does not have are constructed as in a model of their own (same seed, blocks first)."""
    config = any2any_config_from_wan(wan_dir / "transformer", num_layers=3)
    torch.manual_seed(5)
    model, report = any2any_from_wan(wan_dir, num_layers=3)
    torch.manual_seed(5)
    reference = Any2AnyDiT(**{**config, "num_layers": 1})
    extra = {f"blocks.2.{name}": tensor for name, tensor in _tensors(reference.blocks[0]).items()}
    assert report.new == sorted([*extra, "condition_embedder.role_embedding.weight"])
    tensors = _tensors(model)
    assert not [name for name, tensor in tensors.items() if tensor.is_meta]
    assert all(torch.equal(tensors[name], tensor) for name, tensor in extra.items())
    assert torch.equal(model.condition_embedder.role_embedding.weight, reference.condition_embedder.role_embedding.weight)
    assert not torch.equal(model.blocks[2].attn1.to_q.weight, model.blocks[1].attn1.to_q.weight)


#: Run in a fresh interpreter: peak resident memory growth (bytes) while loading the Wan folder argv[1].
_MEASURE_LOAD = """
import contextlib
import gc
import json
import sys

import diffusers  # noqa: F401 (imported before the baseline is taken)
import torch  # noqa: F401

from dosediffusion.model.wan_loading import any2any_from_wan


def status(field):
    return 1024 * int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":")))

gc.collect()
with contextlib.suppress(OSError):
    open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
model, _ = any2any_from_wan(sys.argv[1])
print(json.dumps({"growth": status("VmHWM") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak resident set from /proc")
def test_loading_peak_memory_is_about_the_model(tmp_path):
    """Peak memory growth while loading a ~180 MB (fp32) model from a sharded Wan folder stays well
    under twice the model, what holding the whole Wan state dict beside the model would take."""
    torch.manual_seed(0)
    wan = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=128, in_channels=16,
                                out_channels=16, text_dim=64, freq_dim=256, ffn_dim=4096, num_layers=3,
                                rope_max_seq_len=64, cross_attn_norm=True)
    wan.save_pretrained(tmp_path / "transformer", max_shard_size="100MB")
    del wan
    assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1
    with torch.device("meta"):
        empty = Any2AnyDiT(**any2any_config_from_wan(tmp_path / "transformer"))
    model_bytes = sum(t.numel() * t.element_size() for t in _tensors(empty).values())
    assert 150e6 < model_bytes < 300e6
    result = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(tmp_path)], capture_output=True, text=True,
                            check=True)
    growth = json.loads(result.stdout.strip().splitlines()[-1])["growth"]
    assert 0.9 * model_bytes < growth < 1.5 * model_bytes, (growth / 2**20, model_bytes / 2**20)


def test_wrong_folders_and_shapes_are_clear(wan_dir, tmp_path):
    with pytest.raises(InputError, match="config.json"):
        any2any_from_wan(tmp_path)
    with pytest.raises(InputError, match="do not fit"):
        any2any_from_wan(wan_dir, ffn_dim=32)
    (tmp_path / "no_weights" / "transformer").mkdir(parents=True)
    (tmp_path / "no_weights" / "transformer" / "config.json").write_text(
        (wan_dir / "transformer" / "config.json").read_text())
    with pytest.raises(InputError, match="no diffusion_pytorch_model.safetensors"):
        any2any_from_wan(tmp_path / "no_weights")
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
