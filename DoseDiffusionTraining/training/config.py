"""A training run's configuration, read from YAML (``DoseDiffusionTraining/configs/*.yaml``).

Sections: ``data`` (folder, optional split file, optional ``cache_dir`` for the compact cache of
DICOM / GDP-HMM cases), ``preprocessing`` (a PrepareConfig), ``codec``
(``{type: patch, factors: [fz, fy, fx]}`` or ``{type: wan_vae, path: DIR}``), ``model`` (an
Any2AnyDiT config; ``size`` names one of :data:`dosediffusion.model.configs.CONFIGS` to start
from; ``init_from_wan`` a local Wan 2.1 diffusers folder, ``init_from_pipeline`` a pipeline folder of an
earlier stage), ``scheduler`` (``shift``) and
``train`` (steps, batch size, learning rate, warm-up, clipping, precision, checkpoints, seed).
Unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 500
    grad_clip: float = 0.1
    mixed_precision: str = "no"  # "no" | "bf16"
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    target: str = "dose"  # stage B (and the pipeline's target); stage A draws the target per step
    stage: str = "B"  # "A": Any2Any pre-training, "B": dose-only fine-tuning
    curriculum_steps: int = 0  # stage A: steps over which the fewest kept conditions goes from all to one
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights and ship it
    tensorboard: bool = True  # loss and learning rate under OUT/logs (when tensorboard is installed)
    flip_lr_probability: float = 0.0  # mirror every channel of a batch left-right (geometry stays consistent)


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
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"cannot read the run configuration ({error})", path) from None
        if not isinstance(raw, dict):
            raise InputError("the run configuration must be a mapping", path)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown or "data" not in raw or "preprocessing" not in raw:
            raise InputError(f"sections must be {sorted(known)} with data and preprocessing; unknown: {sorted(unknown)}", path)
        train_keys = {f.name for f in fields(TrainSettings)}
        bad = set(raw.get("train") or {}) - train_keys
        if bad:
            raise InputError(f"unknown train settings {sorted(bad)}; known: {sorted(train_keys)}", path)
        train = TrainSettings(**(raw.get("train") or {}))
        if train.stage not in ("A", "B"):
            raise InputError(f"train.stage must be 'A' or 'B', got {train.stage!r}", path)
        return cls(data=raw["data"], preprocessing=PrepareConfig.from_dict(raw["preprocessing"]),
                   codec=raw.get("codec") or cls.__dataclass_fields__["codec"].default_factory(),
                   model=raw.get("model") or {}, scheduler=raw.get("scheduler") or {"shift": 3.0},
                   train=train)
