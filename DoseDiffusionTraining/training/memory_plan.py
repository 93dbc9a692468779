"""How much accelerator memory a training configuration needs per process, before it runs.

The DiT's parameters are counted on the meta device (no weights are loaded). The activations a
transformer block keeps for the backward pass are measured, not guessed: one block of the
configured width runs forward on a few tokens on the CPU under the run's precision, and the tensors
autograd saves are summed (``torch.autograd.graph.saved_tensors_hooks``); that is linear in the
number of tokens with a memory-efficient attention, which the plan assumes. Then, per process:

- activations = bytes per token per block × tokens × blocks (with gradient checkpointing: each
  block's input only, plus one block's activations while it is recomputed);
- weights (fp32: every parameter, stage C's ``default`` and ``old`` adapters included, and the EMA's
  copy when there is one; under bf16, the bf16 copies autocast makes), gradients and Adam's two moments (fp32) of the trainable parameters;
- tokens per sample: the crop's latent grid (the codec's) over the DiT's patch, for every modality of
  the sample; samples per forward: ``batch_size`` (stage C: the ground truth and its K candidates,
  B·(1 + K), or max(B, ``candidate_micro_batch``) when the candidates go through in micro-batches).
  ``gradient_accumulation_steps`` does not change the memory, only the effective batch.

The frozen codec, CUDA's own context and allocator slack are not in it: the plan says so and keeps
a margin (:data:`MARGIN`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dosediffusion.conditioning.prepare import MODALITIES
from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.configs import CONFIGS, WAN21_1_3B
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.lora import add_lora

#: Share of the accelerator's memory the plan leaves free (CUDA context, allocator, codec, buffers).
MARGIN = 0.15
GIB = 2**30
#: Token grids (side × side) of the one-block measurement.
PROBE_SIDES = (8, 12)


@dataclass
class MemoryPlan:
    """Bytes per process of one training step of a configuration, and whether it fits ``gpu_gib``."""

    stage: str
    parameters: int
    trainable_parameters: int
    tokens_per_sample: int
    samples_per_micro_batch: int
    activation_bytes_per_token_per_block: float
    gradient_checkpointing: bool
    activations: float
    weights: float
    gradients: float
    optimizer: float
    gpu_gib: float

    @property
    def total(self) -> float:
        return self.activations + self.weights + self.gradients + self.optimizer

    @property
    def fits(self) -> bool:
        return self.total <= (1 - MARGIN) * self.gpu_gib * GIB

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "fits": self.fits, "margin": MARGIN}

    def table(self) -> str:
        rows = [("stage", self.stage), ("parameters", f"{self.parameters / 1e6:.1f} M"),
                ("trainable", f"{self.trainable_parameters / 1e6:.1f} M"),
                ("tokens per sample", f"{self.tokens_per_sample:,}"),
                ("samples per micro-batch", str(self.samples_per_micro_batch)),
                ("activations per token per block", f"{self.activation_bytes_per_token_per_block / 2**10:.1f} KiB"),
                ("gradient checkpointing", "on" if self.gradient_checkpointing else "off"),
                ("activations", _gib(self.activations)), ("weights", _gib(self.weights)),
                ("gradients", _gib(self.gradients)), ("optimizer (Adam)", _gib(self.optimizer)),
                ("total", _gib(self.total)),
                (f"fits {self.gpu_gib:g} GiB (with {MARGIN:.0%} free)", "yes" if self.fits else "NO")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def model_settings(config: RunConfig) -> dict:
    """The Any2AnyDiT settings the configuration builds, without loading any weight."""
    spec = dict(config.model)
    wan = spec.pop("init_from_wan", None)
    previous = spec.pop("init_from_pipeline", None)
    size = spec.pop("size", None)
    if previous and (Path(previous) / "model" / "config.json").is_file():
        saved = json.loads((Path(previous) / "model" / "config.json").read_text())
        return {k: v for k, v in saved.items() if not k.startswith("_")}
    if previous and size is None:
        raise InputError(f"cannot plan before {previous} exists: give model.size, the shape of that model")
    base = dict(WAN21_1_3B) if wan else dict(CONFIGS.get(size, {}))
    codec = config.codec
    if codec.get("type", "patch") == "patch":  # as build_pipeline: the DiT reads the codec's channels
        fz, fy, fx = codec.get("factors", (1, 1, 1))
        base["in_channels"] = fz * fy * fx
    if wan and (Path(wan) / "transformer" / "config.json").is_file():
        saved = json.loads((Path(wan) / "transformer" / "config.json").read_text())
        base.update({k: saved[k] for k in ("num_attention_heads", "attention_head_dim", "ffn_dim", "num_layers",
                                           "patch_size", "freq_dim", "in_channels") if k in saved})
    return {**base, **spec}


def latent_grid(config: RunConfig) -> tuple[int, int, int]:
    """The codec's latent grid of the configured crop (without building the codec)."""
    d, h, w = config.preprocessing.crop_shape
    codec = config.codec
    if codec.get("type", "patch") == "wan_vae":
        return (d - 1) // 4 + 1, h // 8, w // 8
    fz, fy, fx = codec.get("factors", (1, 1, 1))
    return d // fz, h // fy, w // fx


def block_activation_bytes(settings: dict, bf16: bool) -> float:
    """Bytes one block of ``settings`` saves for the backward pass per token, measured on the CPU as the
    difference between two token counts (what does not grow with the tokens, such as the weights' bf16
    copies, drops out)."""
    torch.manual_seed(0)
    model = Any2AnyDiT(**{**settings, "num_layers": 1}).train()
    pf, ph, pw = model.config.patch_size
    measured = []
    for side in PROBE_SIDES:
        latents = {"dose": torch.randn(1, model.config.in_channels, pf, ph * side, pw * side)}
        measured.append(saved_bytes(model, latents, bf16, within=model.blocks[0]))
    return (measured[1] - measured[0]) / (PROBE_SIDES[1] ** 2 - PROBE_SIDES[0] ** 2)


def saved_bytes(model: Any2AnyDiT, latents: dict, bf16: bool, within: torch.nn.Module | None = None) -> float:
    """Bytes of activations autograd saves for the backward pass in one forward of ``model`` (each storage
    once, the parameters themselves not counted), or only inside the module ``within``."""
    storages: dict[int, int] = {}
    inside = {"on": within is None}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved, but not activations

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if inside["on"] and pointer not in weights:
            storages[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    hooks = [] if within is None else [
        within.register_forward_pre_hook(lambda *_: inside.update(on=True)),
        within.register_forward_hook(lambda *_: inside.update(on=False))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(latents, torch.tensor([500.0]), [next(iter(latents))])
    finally:
        for hook in hooks:
            hook.remove()
    return float(sum(storages.values()))


def counted_parameters(settings: dict, stage: str, lora_rank: int) -> tuple[int, int]:
    """(all, trainable) parameters of the DiT ``settings`` builds, counted on the meta device; stage C
    counts with its LoRA adapters (``default`` and ``old``) added as it adds them."""
    with torch.device("meta"):
        model = Any2AnyDiT(**settings)
        if stage == "C":
            add_lora(model, lora_rank)
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def plan(config: RunConfig, gpu_gib: float = 80.0) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``config``'s training step on a ``gpu_gib`` accelerator."""
    settings = model_settings(config)
    train = config.train
    parameters, trainable = counted_parameters(settings, train.stage, train.lora_rank)
    f, h, w = latent_grid(config)
    pf, ph, pw = settings.get("patch_size", (1, 2, 2))
    modalities = len(config.preprocessing.modalities or MODALITIES)
    tokens = (f // pf) * (h // ph) * (w // pw) * modalities
    samples = train.batch_size
    if train.stage == "C":
        chunk = train.candidate_micro_batch
        samples = max(train.batch_size, chunk) if chunk else train.batch_size * (1 + train.num_candidates)
    bf16 = train.mixed_precision == "bf16"
    per_token = block_activation_bytes(settings, bf16)
    layers, d = settings["num_layers"], settings["num_attention_heads"] * settings["attention_head_dim"]
    if train.gradient_checkpointing:  # block inputs kept; one block's activations at a time
        activations = samples * tokens * (layers * d * (2 if bf16 else 4) + per_token)
    else:
        activations = samples * tokens * layers * per_token
    # fp32 weights (and the EMA's copy); under bf16 autocast, the forward's bf16 copy of every weight
    weights = 4.0 * (parameters + (trainable if train.ema_decay else 0)) + (2.0 * parameters if bf16 else 0.0)
    return MemoryPlan(train.stage, parameters, trainable, tokens, samples, per_token, train.gradient_checkpointing,
                      float(activations), weights, 4.0 * trainable, 8.0 * trainable, gpu_gib)


def check_fits(config: RunConfig, gpu_gib: float) -> MemoryPlan:
    """The plan of ``config`` on a ``gpu_gib`` accelerator; an :class:`InputError` with its numbers when
    it does not fit (``fit`` calls this before it starts on a GPU)."""
    found = plan(config, gpu_gib)
    if not found.fits:
        raise InputError(f"this configuration needs {_gib(found.total)} per GPU (activations {_gib(found.activations)}, "
                         f"weights {_gib(found.weights)}, gradients {_gib(found.gradients)}, optimizer "
                         f"{_gib(found.optimizer)}); the GPU has {gpu_gib:g} GiB and {MARGIN:.0%} is kept free. Turn on "
                         "train.gradient_checkpointing, lower batch_size (use gradient_accumulation_steps), set "
                         "train.candidate_micro_batch (stage C) or lower the crop")
    return found
