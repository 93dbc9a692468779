"""Wan 2.1 weights (a local diffusers-format folder) into an :class:`Any2AnyDiT`.

Copied by name: every block's self-attention, feed-forward, norms and modulation table, the
timestep embedder and ``time_proj``, the output norm/head and its modulation table. Wan's patch
embedding is copied into every modality's patch embedding. Dropped: cross-attention (``attn2``,
``norm2``), the text and image embedders, and blocks beyond the model's depth. New (left at their
initialisation): the role embedding, and whatever else Wan does not have. The report lists all
three; shape mismatches are errors, never silently skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT

_DROPPED = re.compile(r"^(blocks\.\d+\.(attn2|norm2)\.|condition_embedder\.(text_embedder|image_embedder)\.)")
_WEIGHTS = "diffusion_pytorch_model.safetensors"

#: Any2AnyDiT config entries taken from a Wan transformer config.
_SHARED_CONFIG = ("in_channels", "patch_size", "num_attention_heads", "attention_head_dim", "ffn_dim", "num_layers",
                  "freq_dim", "eps", "rope_max_seq_len")


@dataclass
class WanLoadReport:
    """Which Wan tensors went where (``copied``: Wan key → model keys), which were dropped, which
    model tensors are new."""

    copied: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n_copied = sum(len(v) for v in self.copied.values())
        return (f"copied {n_copied} tensors from {len(self.copied)} Wan tensors; dropped {len(self.dropped)} "
                f"(cross-attention, text/image embedders, extra blocks); new {len(self.new)}: {', '.join(self.new)}")


def read_wan_state_dict(transformer_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a diffusers ``transformer/`` folder (single or sharded safetensors)."""
    folder = Path(transformer_dir)
    single, index = folder / _WEIGHTS, folder / f"{_WEIGHTS}.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    raise InputError(f"no {_WEIGHTS} (or its .index.json) in this folder", str(folder))


def any2any_config_from_wan(transformer_dir: str | Path, **overrides) -> dict:
    """An Any2AnyDiT config with Wan's sizes (from ``transformer/config.json``) and ``overrides``."""
    path = Path(transformer_dir) / "config.json"
    if not path.is_file():
        raise InputError("no config.json: expected a diffusers-format Wan transformer folder", str(path.parent))
    wan = json.loads(path.read_text())
    if wan.get("_class_name") != "WanTransformer3DModel":
        raise InputError(f"config is a {wan.get('_class_name')!r}, not a WanTransformer3DModel", str(path))
    return {**{k: wan[k] for k in _SHARED_CONFIG if k in wan}, **overrides}


def _targets(key: str, model_keys: set[str], modalities: list[str], num_layers: int) -> list[str] | None:
    """Model keys a Wan key copies to; None when it is dropped."""
    if _DROPPED.match(key):
        return None
    block = re.match(r"^blocks\.(\d+)\.", key)
    if block and int(block.group(1)) >= num_layers:
        return None
    if key.startswith("patch_embedding."):
        return [f"patch_embeddings.{m}.{key.split('.', 1)[1]}" for m in modalities]
    return [key] if key in model_keys else None


@torch.no_grad()
def load_wan_transformer(model: Any2AnyDiT, transformer_dir: str | Path) -> WanLoadReport:
    """Copy Wan 2.1 transformer weights into ``model`` (in place) and report what went where."""
    wan = read_wan_state_dict(transformer_dir)
    own = model.state_dict()
    report = WanLoadReport()
    mismatched = []
    for key, tensor in wan.items():
        targets = _targets(key, set(own), list(model.config.modalities), model.config.num_layers)
        if targets is None:
            report.dropped.append(key)
            continue
        for target in targets:
            if own[target].shape != tensor.shape:
                mismatched.append(f"{key} {tuple(tensor.shape)} → {target} {tuple(own[target].shape)}")
            else:
                own[target].copy_(tensor.to(own[target].dtype))
        report.copied[key] = targets
    if mismatched:
        raise InputError("Wan weights do not fit the model: " + "; ".join(mismatched), str(transformer_dir))
    filled = {t for targets in report.copied.values() for t in targets}
    report.new = sorted(set(own) - filled)
    return report


def any2any_from_wan(wan_dir: str | Path, **overrides) -> tuple[Any2AnyDiT, WanLoadReport]:
    """A new Any2AnyDiT sized like the Wan model in ``wan_dir/transformer`` and initialised from it."""
    transformer_dir = Path(wan_dir) / "transformer"
    model = Any2AnyDiT(**any2any_config_from_wan(transformer_dir, **overrides))
    return model, load_wan_transformer(model, transformer_dir)


def pipeline_from_wan(wan_dir: str | Path, preprocessing, shift: float = 3.0, **overrides):
    """A :class:`~dosediffusion.model.pipeline.DoseDiffusionPipeline` initialised from a local Wan 2.1
    diffusers folder (``transformer/`` and ``vae/``), with the load report."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from dosediffusion.model.codecs import WanVAECodec
    from dosediffusion.model.pipeline import DoseDiffusionPipeline

    model, report = any2any_from_wan(wan_dir, **overrides)
    codec = WanVAECodec.from_pretrained(Path(wan_dir) / "vae")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=model.config.num_train_timesteps, shift=shift)
    return DoseDiffusionPipeline(codec, model, scheduler, preprocessing), report
