"""Wan 2.1 weights (a local diffusers-format folder) into an :class:`Any2AnyDiT`.

Copied by name: every block's self-attention, feed-forward, norms and modulation table, the
timestep embedder and ``time_proj``, the output norm/head and its modulation table. Wan's patch
embedding is copied into every modality's patch embedding. Dropped: cross-attention (``attn2``,
``norm2``), the text and image embedders, and blocks beyond the model's depth. New (initialised as
the model initialises them): the role embedding, and whatever else Wan does not have. The report
lists all three; shape mismatches are errors, never silently skipped.

Loading holds little more than the model in memory. The model is created on the meta device (no
memory, no initialisation). The safetensors headers (names and shapes only) give the report and
catch shape mismatches before any weight is read. The tensors Wan does not supply (new parameters,
RoPE tables and other non-persistent buffers) come from a freshly constructed copy of the model
without the Wan-covered blocks, built before the weights are read: with the same torch seed they
equal those of ``Any2AnyDiT(**config)`` outside the blocks (extra blocks, when the model is deeper
than Wan, get the same initialisation scheme but other random values). Then the weights are read
tensor by tensor, each shard opened per tensor so that only one tensor's pages are mapped at a
time, converted to the model's dtype and assigned in place of the meta tensor. Peak memory: the
model plus about twice its largest tensor (its mapped file pages and the converted copy); the fresh
copy comes and goes while the model is still empty. The global torch RNG advances only by what the
fresh copy draws, not by a whole model's initialisation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT

_DROPPED = re.compile(r"^(blocks\.\d+\.(attn2|norm2)\.|condition_embedder\.(text_embedder|image_embedder)\.)")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
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


@dataclass(frozen=True)
class _WanTensor:
    """Where a Wan tensor is stored (``file``) and its shape, from the safetensors header."""

    file: Path
    shape: tuple[int, ...]


def _weight_files(transformer_dir: Path) -> list[Path]:
    """The safetensors files of a diffusers ``transformer/`` folder: the single file, or the shards
    its ``.index.json`` names, in name order."""
    single, index = transformer_dir / _WEIGHTS, transformer_dir / f"{_WEIGHTS}.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        return [transformer_dir / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    raise InputError(f"no {_WEIGHTS} (or its .index.json) in this folder", str(transformer_dir))


def _wan_tensors(transformer_dir: Path) -> dict[str, _WanTensor]:
    """Wan key → file and shape of every tensor in the folder, from the headers alone (no weights read)."""
    tensors = {}
    for file in _weight_files(transformer_dir):
        with safe_open(file, framework="pt") as f:
            tensors.update({key: _WanTensor(file, tuple(f.get_slice(key).get_shape())) for key in f.keys()})
    return tensors


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
    block = _BLOCK.match(key)
    if block and int(block.group(1)) >= num_layers:
        return None
    if key.startswith("patch_embedding."):
        return [f"patch_embeddings.{m}.{key.split('.', 1)[1]}" for m in modalities]
    return [key] if key in model_keys else None


def _plan(model: Any2AnyDiT, wan: dict[str, _WanTensor], source: Path) -> WanLoadReport:
    """The report of loading ``wan`` into ``model``, from shapes only; InputError on shape mismatches."""
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    report = WanLoadReport()
    mismatched = []
    for key, tensor in wan.items():
        targets = _targets(key, set(shapes), list(model.config.modalities), model.config.num_layers)
        if targets is None:
            report.dropped.append(key)
            continue
        mismatched += [f"{key} {tensor.shape} → {t} {shapes[t]}" for t in targets if shapes[t] != tensor.shape]
        report.copied[key] = targets
    if mismatched:
        raise InputError("Wan weights do not fit the model: " + "; ".join(mismatched), str(source))
    report.new = sorted(set(shapes) - _filled(report))
    return report


def _filled(report: WanLoadReport) -> set[str]:
    """The model keys that receive a Wan tensor."""
    return {t for targets in report.copied.values() for t in targets}


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) of ``model`` by name."""
    return dict(chain(model.named_parameters(), model.named_buffers()))


def _put(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``value`` the parameter or buffer ``name`` of ``model`` (a parameter keeps its ``requires_grad``)."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, leaf)
    if isinstance(old, nn.Parameter):
        value = nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(module, leaf, value)


def _fresh_tensors(model: Any2AnyDiT, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Newly initialised CPU tensors for the parameters and buffers ``names`` of ``model``.

    They come from a model of the same config with only the blocks that ``names`` touch (block i →
    the fresh copy's block k, its rank among them), constructed normally: the modules before the
    blocks draw the same random numbers as in ``Any2AnyDiT(**config)``."""
    names = list(names)
    if not names:
        return {}
    blocks = sorted({int(m.group(1)) for m in map(_BLOCK.match, names) if m})
    rank = {str(block): str(k) for k, block in enumerate(blocks)}
    fresh = _named_tensors(Any2AnyDiT.from_config(model.config, num_layers=len(blocks)))
    return {name: fresh[_BLOCK.sub(lambda m: f"blocks.{rank[m.group(1)]}.", name, count=1)].detach()
            for name in names}


def _read(file: Path, key: str, dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """Tensor ``key`` of ``file``, read once and converted to each of ``dtypes`` (independent copies).

    The file is opened for this tensor alone: safetensors maps it, and the mapped pages count as
    resident until the mapping goes, which it does on return."""
    with safe_open(file, framework="pt") as f:
        mapped = f.get_tensor(key)
        return [mapped.to(dtype, copy=True) for dtype in dtypes]


@torch.no_grad()
def load_wan_transformer(model: Any2AnyDiT, transformer_dir: str | Path) -> WanLoadReport:
    """Fill ``model`` (in place) with Wan 2.1 transformer weights and report what went where.

    ``model`` is meant to be on the meta device (see :func:`any2any_from_wan`): every tensor Wan
    supplies is replaced by Wan's, converted to the model tensor's dtype; every tensor still on the
    meta device that Wan does not supply (new parameters, non-persistent buffers) is initialised as
    the model initialises it. InputError for shape mismatches (before any weight is read)."""
    folder = Path(transformer_dir)
    wan = _wan_tensors(folder)
    report = _plan(model, wan, folder)
    own, filled = _named_tensors(model), _filled(report)
    missing = [name for name, tensor in own.items() if tensor.is_meta and name not in filled]
    for name, tensor in _fresh_tensors(model, missing).items():  # first, while the model is still empty
        _put(model, name, tensor.to(own[name].dtype))
    for key, targets in report.copied.items():
        for target, value in zip(targets, _read(wan[key].file, key, [own[t].dtype for t in targets]), strict=True):
            _put(model, target, value)
    left = [name for name, tensor in _named_tensors(model).items() if tensor.is_meta]
    if left:
        raise InputError(f"model tensors left without a value: {', '.join(left)}", str(folder))
    return report


def any2any_from_wan(wan_dir: str | Path, **overrides) -> tuple[Any2AnyDiT, WanLoadReport]:
    """A new Any2AnyDiT sized like the Wan model in ``wan_dir/transformer`` and initialised from it.

    Created on the meta device and filled shard by shard, tensor by tensor: peak memory is about the
    model's own size.
    ``overrides``: Any2AnyDiT config entries that replace or add to Wan's."""
    transformer_dir = Path(wan_dir) / "transformer"
    with torch.device("meta"):
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
