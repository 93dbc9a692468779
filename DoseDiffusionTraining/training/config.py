"""A training run's configuration, read from YAML (``DoseDiffusionTraining/configs/*.yaml``).

Sections: ``data`` (``folder`` with an optional ``split_file``, or ``sources``, a list of folders each
with an optional split, and ``held_out`` likewise: :mod:`dosediffusion_training.data.sources`; optional
``cache_dir`` for the compact cache of DICOM / GDP-HMM / OpenKBP cases; ``ram_cache_gib``, the
prepared cases kept in memory per process, default 4, 0 for none; ``latent_cache``, a folder written
by ``dosediffusion-train cache-latents`` from which stages A and B of the diffusion model read their
latents instead of preparing and encoding cases, :mod:`dosediffusion_training.data.latent_cache`;
stage C reads prepared cases regardless),
``preprocessing`` (a PrepareConfig), ``codec``
(``{type: patch, factors: [fz, fy, fx]}`` or ``{type: wan_vae, path: DIR}``), ``model`` (an
Any2AnyDiT config; ``size`` names one of :data:`dosediffusion.model.configs.CONFIGS` to start
from; ``init_from_wan`` a local Wan 2.1 diffusers folder, ``init_from_pipeline`` a pipeline folder of an
earlier stage), ``scheduler`` (``shift``) and
``train`` (steps, batch size, learning rate, warm-up, clipping, precision, checkpoints, seed; stage
C's reward, candidates, LoRA and policy settings).
Unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError
from dosediffusion_training.data.sources import read_sources

#: The keys of the ``data`` section.
DATA_KEYS = {"folder", "split_file", "sources", "held_out", "cache_dir", "ram_cache_gib", "latent_cache"}


def read_mapping(path: str | Path, what: str) -> dict:
    """The YAML mapping in ``path`` (``what``: the kind of file, for the messages)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"cannot read the {what} ({error})", path) from None
    if not isinstance(raw, dict):
        raise InputError(f"the {what} must be a mapping", path)
    return raw


def check_data(data, path: str | Path) -> None:
    """Raise unless ``data`` is a ``data`` section: a mapping with a folder or sources
    (:func:`~dosediffusion_training.data.sources.read_sources`) and only :data:`DATA_KEYS`."""
    data = data if isinstance(data, dict) else {}
    if not {"folder", "sources"} & set(data) or set(data) - DATA_KEYS:
        raise InputError(f"data needs a folder or sources; its keys are {sorted(DATA_KEYS)}, unknown: "
                         f"{sorted(set(data) - DATA_KEYS)}", path)
    read_sources(data, path)


@dataclass
class LoopSettings:
    """What the training loop itself reads (:mod:`.stage_loop`): every stage's settings (A, B, C and the
    codec's) have these, with the stage's own defaults."""

    steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int = 500
    grad_clip: float = 0.1
    mixed_precision: str = "no"  # "no" | "bf16"
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the trained weights and ship it
    tensorboard: bool = True  # the logged numbers under OUT/logs (when tensorboard is installed)
    stall_timeout_s: float = 0.0  # > 0: stop the run (exit 3) when no step completes for this long
    max_minutes: float = 0.0  # > 0: end the run (checkpoint and outputs) after this much wall time (equal budgets)

    def check(self, path: str | Path) -> None:
        """Raise unless the loop's settings can run (``path``: the configuration, for the message)."""
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise InputError("train.steps, train.checkpoint_every and train.log_every must be at least 1", path)
        if self.stall_timeout_s < 0 or self.max_minutes < 0 or not 0 <= self.ema_decay < 1:
            raise InputError("train.stall_timeout_s and train.max_minutes must be at least 0, train.ema_decay in [0, 1)",
                             path)
        if self.mixed_precision not in ("no", "bf16"):
            raise InputError(f"train.mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}", path)


@dataclass
class TrainSettings(LoopSettings):
    batch_size: int = 1
    target: str = "dose"  # stage B (and the pipeline's target); stage A draws the target per step
    stage: str = "B"  # "A": Any2Any pre-training, "B": dose-only fine-tuning, "C": ScardNFT post-training
    curriculum_steps: int = 0  # stage A: steps over which the fewest kept conditions goes from all to one
    # stage C (ScardNFT, dosediffusion_training.training.scardnft)
    scorecard: str = ""  # the reward's scorecard: shipped name, file, or "auto" (per case, by prescription)
    num_candidates: int = 4  # K candidates per case
    candidate_steps: int = 10  # Euler steps of the deterministic sampler that makes them
    nft_beta: float = 1.0  # β of the implicit policies v± = v_old ± β (v_θ − v_old)
    nft_weight: float = 1.0  # λ: L = L_diffusion + λ L_NFT
    lambda_hinge: float = 1.0  # reward penalty per unit of hard-limit violation (entry units)
    lambda_mae: float = 0.1  # reward penalty per Gy of MAE to the reference dose (body)
    reward_scale_decay: float = 0.9  # EMA decay of the running per-case reward standard deviation
    lora_rank: int = 64
    # stage C: old policy ← d · old + (1 − d) · current after every step, d = min(max(step − flat, 0) · rate,
    # max) (DiffusionNFT's schedule; the defaults are its "decay type 1")
    old_policy_decay_flat: int = 0
    old_policy_decay_rate: float = 0.001
    old_policy_decay_max: float = 0.5
    candidate_micro_batch: int = 0  # stage C: > 0 runs the candidates through the model this many at a time
    reference_weight: float = 1e-4  # penalty on ‖v_θ − v_reference‖² (adapters off)
    flip_lr_probability: float = 0.0  # mirror every channel of a batch left-right (geometry stays consistent)
    gradient_checkpointing: bool = False  # recompute each transformer block in the backward pass (less memory)
    gradient_accumulation_steps: int = 1  # micro-batches of batch_size per optimizer step
    prior_correction_cases: int = 0  # > 0: fit the prior's correction on this many training cases first


@dataclass
class RunConfig:
    data: dict
    preprocessing: PrepareConfig
    codec: dict = field(default_factory=lambda: {"type": "patch", "factors": [1, 1, 1]})
    model: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=lambda: {"shift": 3.0})
    train: TrainSettings = field(default_factory=TrainSettings)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        raw = read_mapping(path, "run configuration")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown or "data" not in raw or "preprocessing" not in raw:
            raise InputError(f"sections must be {sorted(known)} with data and preprocessing; unknown: {sorted(unknown)}", path)
        check_data(raw["data"], path)
        train_keys = {f.name for f in fields(TrainSettings)}
        bad = set(raw.get("train") or {}) - train_keys
        if bad:
            raise InputError(f"unknown train settings {sorted(bad)}; known: {sorted(train_keys)}", path)
        train = TrainSettings(**(raw.get("train") or {}))
        if train.stage not in ("A", "B", "C"):
            raise InputError(f"train.stage must be 'A', 'B' or 'C', got {train.stage!r}", path)
        if train.stage == "C" and (not train.scorecard or train.num_candidates < 2):
            raise InputError("stage C needs train.scorecard and num_candidates of at least 2", path)
        train.check(path)
        if train.gradient_accumulation_steps < 1 or train.candidate_micro_batch < 0 or not 0 <= train.flip_lr_probability <= 1:
            raise InputError("train.gradient_accumulation_steps must be at least 1, train.candidate_micro_batch at "
                             "least 0, train.flip_lr_probability in [0, 1]", path)
        preprocessing = PrepareConfig.from_dict(raw["preprocessing"])
        if train.prior_correction_cases and ("prior_dose" not in preprocessing.modalities
                                             or preprocessing.prior_correction is not None):
            raise InputError("train.prior_correction_cases fits the prior dose's correction: it needs 'prior_dose' "
                             "among the modalities and no preprocessing.prior_correction already", path)
        if train.prior_correction_cases < 0:
            raise InputError("train.prior_correction_cases must be 0 (none) or a number of cases", path)
        return cls(data=raw["data"], preprocessing=preprocessing,
                   codec=raw.get("codec") or cls.__dataclass_fields__["codec"].default_factory(),
                   model=raw.get("model") or {}, scheduler=raw.get("scheduler") or {"shift": 3.0},
                   train=train)
