"""LoRA on the Any2Any DiT for ScardNFT (stage C): adapters, the old and reference policies,
saving, loading and merging.

What trains: a peft LoRA adapter named ``default`` (rank r, alpha = r so its scale is 1, no
dropout) on every block's ``attn1.to_q/to_k/to_v/to_out.0``, ``ffn.net.0.proj`` and
``ffn.net.2``, and the modulation networks in full (``condition_embedder.time_embedder``,
``condition_embedder.time_proj``, ``condition_embedder.role_embedding`` and every
``scale_shift_table``). Everything else is frozen. Any2AnyDiT is a diffusers
``PeftAdapterMixin``, so ``add_adapter`` / ``set_adapter`` / ``disable_adapters`` / ``fuse_lora``
/ ``unload_lora`` work on it directly (checked with diffusers 0.42 and peft 0.21); note that
``set_adapter`` and ``enable_adapters`` make the active adapter trainable, so :func:`mark_trainable`
re-applies the mask after every switch.

Three policies share one model (:func:`policy`):

- ``current`` (v_θ): adapter ``default`` and the live modulation parameters;
- ``old`` (v_old, the frozen copy that samples the candidates): a second adapter ``old`` and a copy
  of the modulation parameters, both an exponential moving average of the current ones
  (:func:`ema_update`) whose decay follows :func:`old_policy_decay`, as the public DiffusionNFT code
  keeps its old policy. The modulation copy
  lives in :class:`PolicyState`, swapped into the model for the duration of an ``old`` forward;
- ``reference`` (the stage B model): adapters disabled and the modulation parameters as they were
  when training began (also in :class:`PolicyState`).

:class:`PolicyState` (old and reference modulation, and the running reward scale) is registered with
Accelerate, so checkpoints hold it and a resumed run continues exactly.

An adapter folder (:func:`save_adapter`) holds ``adapter_config.json`` (the peft LoraConfig),
``lora.safetensors`` (the ``default`` adapter's weights, peft's key format) and
``modulation.safetensors`` (the trained modulation parameters, model key format). It loads on top
of a pipeline (:func:`load_adapter`) or merges into plain weights (:func:`merge_lora`,
:func:`merge_into_pipeline`, ``dosediffusion-train merge-lora``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.pipeline import DoseDiffusionPipeline

LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")
MODULATION_PREFIXES = ("condition_embedder.time_embedder.", "condition_embedder.time_proj.",
                       "condition_embedder.role_embedding.")
CURRENT, OLD = "default", "old"
POLICIES = ("current", "old", "reference")
ADAPTER_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "lora.safetensors"
MODULATION_WEIGHTS = "modulation.safetensors"


def is_modulation(name: str) -> bool:
    """Whether parameter ``name`` (Any2AnyDiT naming) belongs to the modulation networks."""
    return name.startswith(MODULATION_PREFIXES) or name.split(".")[-1] == "scale_shift_table"


def _is_lora(name: str, adapter: str) -> bool:
    return re.search(rf"\.lora_[AB]\.{re.escape(adapter)}\.", name) is not None


def lora_config(rank: int) -> LoraConfig:
    """The peft LoraConfig of stage C: ``rank``, alpha = rank (scale 1), no dropout, :data:`LORA_TARGETS`."""
    if rank < 1:
        raise InputError(f"lora_rank must be at least 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                      init_lora_weights=True)


def add_lora(model: Any2AnyDiT, rank: int, with_old: bool = True) -> None:
    """Freeze ``model``, add the ``default`` adapter (A random, B zero: the model's output is
    unchanged) and, with ``with_old``, the ``old`` adapter as an exact copy of it; leave
    ``default`` active and only it and the modulation parameters trainable."""
    model.requires_grad_(False)
    config = lora_config(rank)
    model.add_adapter(config, adapter_name=CURRENT)
    if with_old:
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            model.add_adapter(lora_config(rank), adapter_name=OLD)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if _is_lora(name, CURRENT):
                    params[_old_name(name)].copy_(p)
    model.set_adapter(CURRENT)
    mark_trainable(model)


def _old_name(name: str) -> str:
    return re.sub(r"\.lora_([AB])\.default\.", r".lora_\1.old.", name)


def trainable_names(model: Any2AnyDiT) -> list[str]:
    """Names of the parameters stage C trains: the ``default`` LoRA weights and the modulation."""
    return [n for n, _ in model.named_parameters() if _is_lora(n, CURRENT) or is_modulation(n)]


def mark_trainable(model: Any2AnyDiT) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` on exactly the :func:`trainable_names` parameters; returns them."""
    wanted = set(trainable_names(model))
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
        if name in wanted:
            trainable.append(p)
    return trainable


def modulation_state(model: Any2AnyDiT) -> dict[str, torch.Tensor]:
    """Detached copies of the modulation parameters (name → tensor)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if is_modulation(n)}


class PolicyState:
    """Training state of stage C beyond model and optimizer: the old policy's modulation
    parameters (EMA), the reference policy's (the starting values), and the running reward scale
    (None until the first batch). Has ``state_dict``/``load_state_dict`` for Accelerate."""

    def __init__(self, model: Any2AnyDiT):
        self.old_modulation = modulation_state(model)
        self.reference_modulation = modulation_state(model)
        self.reward_scale: float | None = None

    def state_dict(self) -> dict:
        return {"old_modulation": self.old_modulation, "reference_modulation": self.reference_modulation,
                "reward_scale": self.reward_scale}

    def load_state_dict(self, state: dict) -> None:
        for key in ("old_modulation", "reference_modulation"):
            mine = getattr(self, key)
            if set(state[key]) != set(mine):
                raise InputError(f"checkpoint {key} does not match the model's modulation parameters")
            for name, value in state[key].items():
                mine[name].copy_(value)
        self.reward_scale = state["reward_scale"]


@contextmanager
def policy(model: Any2AnyDiT, which: str, state: PolicyState) -> Iterator[Any2AnyDiT]:
    """Run ``model`` as the ``current``, ``old`` or ``reference`` policy inside the block (meant for
    no-grad forwards of the unwrapped model); afterwards it is the current policy again with its
    trainable mask restored."""
    if which not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {which!r}")
    swap = {"old": state.old_modulation, "reference": state.reference_modulation}.get(which)
    params = dict(model.named_parameters())
    live = {n: params[n].detach().clone() for n in swap} if swap else {}
    try:
        with torch.no_grad():
            for name, value in (swap or {}).items():
                params[name].copy_(value)
        if which == "old":
            model.set_adapter(OLD)
        elif which == "reference":
            model.disable_adapters()
        yield model
    finally:
        with torch.no_grad():
            for name, value in live.items():
                params[name].copy_(value)
        if which == "reference":
            model.enable_adapters()
        model.set_adapter(CURRENT)
        mark_trainable(model)


def old_policy_decay(step: int, flat: int, rate: float, maximum: float) -> float:
    """The old policy's EMA decay after optimizer step ``step`` (1, 2, ...): 0 for the first ``flat``
    steps (the old policy is the current one), then rising by ``rate`` per step up to ``maximum``,
    DiffusionNFT's schedule: early on the old policy follows the current one closely, later it lags
    and steadies the implicit policies."""
    return min(max(step - flat, 0) * rate, maximum)


@torch.no_grad()
def ema_update(model: Any2AnyDiT, state: PolicyState, decay: float) -> None:
    """old ← decay · old + (1 − decay) · current, for the LoRA weights (adapter ``old``) and the
    modulation parameters (``state.old_modulation``); decay 0 copies the current policy."""
    params = dict(model.named_parameters())
    for name, p in params.items():
        if _is_lora(name, CURRENT):
            params[_old_name(name)].lerp_(p, 1.0 - decay)
    for name, old in state.old_modulation.items():
        old.lerp_(params[name].detach(), 1.0 - decay)


def save_adapter(model: Any2AnyDiT, folder: str | Path) -> Path:
    """Write the ``default`` adapter and the modulation parameters as an adapter folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.peft_config[CURRENT].save_pretrained(str(folder))
    lora = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model, adapter_name=CURRENT).items()}
    save_file(lora, str(folder / LORA_WEIGHTS))
    save_file({k: v.contiguous().cpu() for k, v in modulation_state(model).items()}, str(folder / MODULATION_WEIGHTS))
    return folder


def load_adapter(pipeline: DoseDiffusionPipeline, folder: str | Path) -> DoseDiffusionPipeline:
    """Put the adapter folder on top of ``pipeline``'s model (in place): add the LoRA as adapter
    ``default`` and replace the modulation parameters. Returns ``pipeline``."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / LORA_WEIGHTS).is_file():
        raise InputError(f"not an adapter folder (needs {ADAPTER_CONFIG} and {LORA_WEIGHTS})", folder)
    model = pipeline.model
    model.add_adapter(LoraConfig.from_pretrained(str(folder)), adapter_name=CURRENT)
    result = set_peft_model_state_dict(model, load_file(str(folder / LORA_WEIGHTS)), adapter_name=CURRENT)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise InputError(f"adapter weights do not fit the model: {unexpected[:3]}", folder)
    modulation_path = folder / MODULATION_WEIGHTS
    if modulation_path.is_file():
        modulation = load_file(str(modulation_path))
        known = {n for n, _ in model.named_parameters() if is_modulation(n)}
        if set(modulation) != known:
            raise InputError("the adapter's modulation parameters do not match the model's", modulation_path)
        dtype = next(model.parameters()).dtype
        model.load_state_dict({k: v.to(dtype) for k, v in modulation.items()}, strict=False)
    model.set_adapter(CURRENT)
    return pipeline


def merge_lora(model: Any2AnyDiT) -> Any2AnyDiT:
    """Fold adapter ``default`` into the base weights and remove every adapter (in place): the
    result is a plain Any2AnyDiT with the same state-dict keys as before LoRA was added."""
    if OLD in getattr(model, "peft_config", {}):
        model.delete_adapters(OLD)
    model.enable_adapters()
    model.set_adapter(CURRENT)
    model.fuse_lora(adapter_names=[CURRENT])
    model.unload_lora()
    return model


def merge_into_pipeline(pipeline_dir: str | Path, adapter_dir: str | Path, out: str | Path) -> Path:
    """Load the pipeline folder, put the adapter on top, merge, and save a plain pipeline folder."""
    pipeline = load_adapter(DoseDiffusionPipeline.from_pretrained(pipeline_dir), adapter_dir)
    pipeline.model = merge_lora(pipeline.model).eval()
    return pipeline.save_pretrained(out)
