"""Stages A and B: flow matching (and the regression comparator's L1) in :mod:`.stage_loop`'s loop.
Stage B trains the dose as the target with every other modality as a condition; stage A (Any2Any)
draws, per step, the target uniformly from the modalities present and keeps a random number of the
others as conditions, the fewest allowed going from all of them to one over ``curriculum_steps`` (a
curriculum from easy to hard).

One command runs on a CPU, one GPU or many (``accelerate launch``). Everything random is a function of
(seed, step): the case order of each epoch, each process's share of the global batch, the noise, the
diffusion times and the left-right flips. So a run resumed from a checkpoint continues exactly as if
never stopped. The finished model (its exponential moving average when ``ema_decay`` is set) is written
as a pipeline folder ``OUT/pipeline`` that ``dosediffusion predict`` loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import FlowMatchEulerDiscreteScheduler

from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.codecs import PatchCodec, WanVAECodec
from dosediffusion.model.configs import CONFIGS
from dosediffusion.model.flow_matching import add_noise, flow_matching_loss, shift_sigma
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.regression import MedNeXtRegressor, RegressionPipeline
from dosediffusion.model.wan_loading import any2any_from_wan
from dosediffusion_training.data import sources
from dosediffusion_training.data.dataset import RAM_CACHE_GIB, PreparedCases, collate
from dosediffusion_training.data.latent_cache import LatentBatch, LatentCases, check_latent_model, open_latent_cache
from dosediffusion_training.training.config import RunConfig, TrainSettings
from dosediffusion_training.training.memory_plan import check_fits
from dosediffusion_training.training.prior_correction_fit import with_prior_correction
from dosediffusion_training.training.stage_loop import Piece, make_accelerator, make_trainee, run


def build_codec(config: RunConfig) -> PatchCodec | WanVAECodec:
    """The run's frozen codec (``config.codec``), without the model."""
    spec = dict(config.codec)
    kind = spec.pop("type", "patch")
    if kind == "patch":
        return PatchCodec(tuple(spec.get("factors", (1, 1, 1))))
    if kind == "wan_vae":
        return WanVAECodec.from_pretrained(spec["path"])
    raise InputError(f"unknown codec type {kind!r}: use 'patch' or 'wan_vae'")


def training_cases(config: RunConfig) -> list[Path]:
    """The run's training case paths (:func:`dosediffusion_training.data.sources.training_cases`)."""
    return sources.training_cases(config.data)


def build_pipeline(config: RunConfig) -> DoseDiffusionPipeline | RegressionPipeline:
    """A new pipeline as ``config`` describes it: the Any2Any DiT (random, Wan-initialised or from an
    earlier stage's pipeline) or, with ``model.type: mednext``, the regression comparator."""
    codec = build_codec(config)
    spec = dict(config.model)
    if spec.pop("type", "any2any") == "mednext":
        conditions = [m for m in config.preprocessing.modalities if m != config.train.target]
        return RegressionPipeline(MedNeXtRegressor(conditions, **spec), config.preprocessing, config.train.target)
    size, wan, previous = spec.pop("size", None), spec.pop("init_from_wan", None), spec.pop("init_from_pipeline", None)
    if previous:
        model = Any2AnyDiT.from_pretrained(Path(previous) / "model")
        differing = {k: (model.config.get(k), v) for k, v in spec.items() if _as_list(model.config.get(k)) != _as_list(v)}
        if differing:
            raise InputError(f"model settings differ from the pipeline started from (has, asked): {differing}", previous)
    elif wan:
        model, report = any2any_from_wan(wan, **spec)
        print(report.summary())
    else:
        if size is not None and size not in CONFIGS:
            raise InputError(f"unknown model size {size!r}; known: {', '.join(CONFIGS)}")
        model = Any2AnyDiT(**{**CONFIGS.get(size, {}), "in_channels": codec.latent_channels, **spec})
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=model.config.num_train_timesteps,
                                                shift=float(config.scheduler.get("shift", 3.0)))
    return DoseDiffusionPipeline(codec, model, scheduler, config.preprocessing, config.train.target)


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def batch_indices(step: int, n_cases: int, global_batch: int, seed: int) -> np.ndarray:
    """Case indices of the global batch of ``step``: epochs are seeded permutations of the cases."""
    positions = np.arange(step * global_batch, (step + 1) * global_batch)
    epochs = positions // n_cases
    return np.array([np.random.default_rng([seed, int(e)]).permutation(n_cases)[p % n_cases]
                     for e, p in zip(epochs, positions, strict=True)])


def _noise(step: int, rank: int, seed: int, x0: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise like ``x0`` and diffusion times (B,) for ``step`` on process ``rank``."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
    noise = torch.randn(x0.shape, generator=generator)
    s = shift_sigma(torch.rand(x0.shape[0], generator=generator), shift)
    return noise.to(x0.device), s.to(x0.device)


def sample_noise(step: int, positions: list[int], seed: int, x0: torch.Tensor,
                 shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and times of each sample of ``x0`` from its position in the step's global batch: a batch
    split into micro-batches, or across processes, draws the same numbers as in one piece."""
    parts = [_noise(step, position, seed, x0[i : i + 1], shift) for i, position in enumerate(positions)]
    return torch.cat([noise for noise, _ in parts]), torch.cat([s for _, s in parts])


def micro_batch_positions(micro_batch: int, world: int, rank: int, size: int) -> list[int]:
    """Positions in the step's global batch of micro-batch ``micro_batch`` of process ``rank`` (of
    ``world``), ``size`` samples each: micro-batches are the outer blocks, processes the inner ones."""
    first = (micro_batch * world + rank) * size
    return list(range(first, first + size))


def diffusion_loss(pipeline: DoseDiffusionPipeline, model, batch: dict[str, torch.Tensor], step: int,
                   positions: list[int], settings, accelerator: Accelerator) -> torch.Tensor:
    """Flow-matching loss of ``step`` for the samples at ``positions`` of its global batch: encode (unless
    the batch is a :class:`LatentBatch` from a latent cache), noise the target, predict, compare."""
    target, conditions = choose_roles(step, list(batch), settings)
    if isinstance(batch, LatentBatch):
        latents = {m: batch[m].to(accelerator.device) for m in [*conditions, target]}
    else:
        with torch.no_grad():
            latents = {m: pipeline.codec.encode(batch[m].to(accelerator.device)) for m in [*conditions, target]}
    x0 = latents[target]
    noise, s = sample_noise(step, positions, settings.seed, x0, float(pipeline.scheduler.config.shift))
    latents[target] = add_noise(x0, noise, s)
    with accelerator.autocast():
        # a tuple, not a ModelOutput holding a dict: DDP flattens outputs as pytrees
        prediction = model(latents, s * pipeline.model.config.num_train_timesteps, [target], return_dict=False)[0][target]
    return flow_matching_loss(prediction, x0, noise, pipeline.model.config.prediction_type)


def regression_loss(model, batch: dict[str, torch.Tensor], target: str, accelerator: Accelerator) -> torch.Tensor:
    """L1 loss of the regression comparator's dose channel (the challenge baseline's loss)."""
    conditions = {m: v.to(accelerator.device) for m, v in batch.items() if m != target}
    with accelerator.autocast():
        prediction = model(accelerator.unwrap_model(model).stack(conditions))
    return torch.mean(torch.abs(prediction.float() - batch[target].to(accelerator.device)))


def choose_roles(step: int, present: list[str], settings) -> tuple[str, list[str]]:
    """(target, conditions) of ``step``: stages B and C the configured target and all other modalities;
    stage A a uniform target and a curriculum-sized random subset of the rest (same on every process)."""
    if settings.stage in ("B", "C"):
        return settings.target, [m for m in present if m != settings.target]
    rng = np.random.default_rng([settings.seed, step, 7])
    target = present[int(rng.integers(len(present)))]
    others = [m for m in present if m != target]
    if not others:
        return target, []
    progress = min(1.0, step / settings.curriculum_steps) if settings.curriculum_steps else 1.0
    fewest = max(1, int(round(len(others) - progress * (len(others) - 1))))
    keep = int(rng.integers(fewest, len(others) + 1))
    return target, sorted(rng.choice(others, size=keep, replace=False).tolist(), key=others.index)


def flips(step: int, settings) -> bool:
    """Whether the batch of ``step`` is mirrored left-right (probability ``flip_lr_probability``)."""
    return bool(settings.flip_lr_probability) and (
        np.random.default_rng([settings.seed, step, 11]).random() < settings.flip_lr_probability)


def augment(batch: dict[str, torch.Tensor], step: int, settings) -> dict[str, torch.Tensor]:
    """The batch mirrored left-right (along x, every channel alike) when :func:`flips` says so:
    CT, masks, plates and dose stay consistent with one another."""
    if flips(step, settings):
        return {m: torch.flip(v, dims=[-1]) for m, v in batch.items()}
    return batch


def training_batch(dataset: PreparedCases | LatentCases, cases: list[int], step: int,
                   settings) -> dict[str, torch.Tensor]:
    """The batch of ``cases`` at ``step``: volumes (B, 1, D, H, W) collated and :func:`augment`-ed, or from
    a latent cache a :class:`LatentBatch` (B, C, d, h, w) of the cached latents of the same volumes,
    mirrored or not alike."""
    if isinstance(dataset, LatentCases):
        return dataset.batch(cases, flipped=flips(step, settings))
    return augment(collate([dataset[i] for i in cases]), step, settings)


class SupervisedStage:
    """Stages A and B as a :class:`~.stage_loop.Stage`: per optimizer step, ``gradient_accumulation_steps``
    micro-batches of ``batch_size`` cases per process, each one piece (its loss over the micro-batches):
    the flow-matching loss of the diffusion pipeline, or the regression comparator's L1."""

    label, shown = "training", ("loss",)

    def __init__(self, pipeline: DoseDiffusionPipeline | RegressionPipeline, model, dataset: PreparedCases | LatentCases,
                 settings: TrainSettings, accelerator: Accelerator):
        self.pipeline, self.model, self.dataset = pipeline, model, dataset
        self.settings, self.accelerator = settings, accelerator

    def pieces(self, step: int) -> Iterator[Piece]:
        settings, accelerator = self.settings, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        micro, size = settings.gradient_accumulation_steps, settings.batch_size
        indices = batch_indices(step, len(self.dataset), size * world * micro, settings.seed)
        for k in range(micro):
            positions = micro_batch_positions(k, world, rank, size)
            batch = training_batch(self.dataset, [int(indices[p]) for p in positions], step, settings)
            if settings.stage == "B" and settings.target not in batch:
                raise InputError(f"a training batch has no {settings.target!r} channel")
            if isinstance(self.pipeline, RegressionPipeline):
                loss = regression_loss(self.model, batch, settings.target, accelerator)
            else:
                loss = diffusion_loss(self.pipeline, self.model, batch, step, positions, settings, accelerator)
            yield Piece(loss / micro, {"loss": loss.item() / micro}, k == micro - 1)

    def after_step(self, step: int) -> dict[str, float]:
        return {}


def train(config: RunConfig, out: str | Path, resume: bool = True) -> Path:
    """Train as ``config`` says into ``out``; returns the pipeline folder."""
    out = Path(out)
    settings = config.train
    paths = training_cases(config)  # bad data sources before anything is written or built
    accelerator = make_accelerator(settings, out)
    config = with_prior_correction(config, paths, out)
    if torch.cuda.is_available() and config.model.get("type", "any2any") == "any2any":  # the DiT, on a GPU
        check_fits(config, torch.cuda.get_device_properties(accelerator.device).total_memory / 2**30)
    torch.manual_seed(settings.seed)
    pipeline = build_pipeline(config)
    if config.data.get("latent_cache"):  # the diffusion model on cached latents: nothing prepared or encoded
        check_latent_model(config)  # before pipeline.codec: the regression pipeline has none
        dataset = open_latent_cache(config, pipeline.codec, paths)
    else:
        dataset = PreparedCases(paths, config.preprocessing, config.data.get("cache_dir"),
                                config.data.get("ram_cache_gib", RAM_CACHE_GIB), sources.dose_rules(config.data))
    if settings.gradient_checkpointing and isinstance(pipeline.model, Any2AnyDiT):
        pipeline.model.enable_gradient_checkpointing()
    trainee = make_trainee(accelerator, pipeline.model.train(), list(pipeline.model.parameters()), settings)
    if isinstance(pipeline, DoseDiffusionPipeline):
        pipeline.codec.to(accelerator.device)
    run(SupervisedStage(pipeline, trainee.model, dataset, settings, accelerator), accelerator, trainee, settings, out,
        resume)
    pipeline.model = accelerator.unwrap_model(trainee.model).eval()
    folder = out / "pipeline"
    if accelerator.is_main_process:
        pipeline.save_pretrained(folder)
    return folder
