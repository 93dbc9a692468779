"""The training loop: flow matching with Accelerate. Stage B trains the dose as the target with
every other modality as a condition; stage A (Any2Any) draws, per step, the target uniformly
from the modalities present and keeps a random number of the others as conditions, the fewest
allowed going from all of them to one over ``curriculum_steps`` (a curriculum from easy to hard).

One command runs on a CPU, one GPU or many (``accelerate launch``): Accelerate wraps the model in
DDP and handles bf16 autocast. Everything random is a function of (seed, step): the case order
of each epoch, each process's share of the global batch, the noise and the diffusion times. So a
run resumed from a checkpoint (model, optimizer and LR-schedule state, written every
``checkpoint_every`` steps under ``OUT/checkpoints/``) continues exactly as if never stopped. The
finished model (its exponential moving average when ``ema_decay`` is set) is written as a pipeline
folder ``OUT/pipeline`` that ``dosediffusion predict`` loads; loss and learning rate go to
TensorBoard under ``OUT/logs`` and to ``OUT/loss.jsonl``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

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
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.guards import (
    StallWatchdog,
    check_step,
    mean_over_processes,
    out_of_time,
    resume_hint,
)
from dosediffusion_training.training.memory_plan import check_fits

STATE = "state.json"


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


def _checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints under ``out``, oldest first (a ``step_N.partial`` being written is not one)."""
    found = [p for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit() and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _latest_checkpoint(out: Path) -> Path | None:
    checkpoints = _checkpoints(out)
    return checkpoints[-1] if checkpoints else None


def where_it_stands(out: Path) -> str:
    """For a stopped run's message: the newest complete checkpoint in ``out``, to resume from."""
    return resume_hint(_latest_checkpoint(out))


def train(config: RunConfig, out: str | Path, resume: bool = True) -> Path:
    """Train as ``config`` says into ``out``; returns the pipeline folder."""
    out = Path(out)
    settings = config.train
    paths = training_cases(config)  # bad data sources before anything is written or built
    # modalities absent from a batch (and, in stage A, the dropped conditions) leave parameters unused
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    trackers = "tensorboard" if settings.tensorboard and importlib.util.find_spec("tensorboard") else None
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[unused], log_with=trackers, project_dir=str(out / "logs"))
    if trackers:
        accelerator.init_trackers("dosediffusion")
    if torch.cuda.is_available() and config.model.get("type", "any2any") == "any2any":  # the DiT, on a GPU
        check_fits(config, torch.cuda.get_device_properties(accelerator.device).total_memory / 2**30)
    torch.manual_seed(settings.seed)
    pipeline = build_pipeline(config)
    if config.data.get("latent_cache"):  # the diffusion model on cached latents: nothing prepared or encoded
        check_latent_model(config)  # before pipeline.codec: the regression pipeline has none
        dataset = open_latent_cache(config, pipeline.codec, paths)
    else:
        dataset = PreparedCases(paths, config.preprocessing, config.data.get("cache_dir"),
                                config.data.get("ram_cache_gib", RAM_CACHE_GIB))
    if settings.gradient_checkpointing and isinstance(pipeline.model, Any2AnyDiT):
        pipeline.model.enable_gradient_checkpointing()
    model = pipeline.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / max(settings.warmup_steps, 1)))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    if isinstance(pipeline, DoseDiffusionPipeline):
        pipeline.codec.to(accelerator.device)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=settings.ema_decay) if settings.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    step = 0
    checkpoint = _latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / STATE).read_text())["step"]
    world, rank = accelerator.num_processes, accelerator.process_index
    micro, size = settings.gradient_accumulation_steps, settings.batch_size
    log = []
    bar = tqdm(total=settings.steps, initial=step, desc="training", unit="step", disable=not accelerator.is_main_process)
    where = partial(where_it_stands, out)
    started, last = time.monotonic(), step >= settings.steps
    with StallWatchdog(settings.stall_timeout_s, where) as watchdog:
        while not last:
            indices = batch_indices(step, len(dataset), size * world * micro, settings.seed)
            losses = []
            for k in range(micro):
                positions = micro_batch_positions(k, world, rank, size)
                batch = training_batch(dataset, [int(indices[p]) for p in positions], step, settings)
                if settings.stage == "B" and settings.target not in batch:
                    raise InputError(f"a training batch has no {settings.target!r} channel")
                if isinstance(pipeline, RegressionPipeline):
                    loss = regression_loss(model, batch, settings.target, accelerator)
                else:
                    loss = diffusion_loss(pipeline, model, batch, step, positions, settings, accelerator)
                with accelerator.no_sync(model) if k < micro - 1 else contextlib.nullcontext():  # one all-reduce per step
                    accelerator.backward(loss / micro)
                losses.append(loss.item())
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            check_step(accelerator, losses, float(grad_norm), step, where)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
            step += 1
            log.append({"step": step, **mean_over_processes(accelerator, {"loss": float(np.mean(losses))}),
                        "lr": schedule.get_last_lr()[0]})
            accelerator.log({"loss": log[-1]["loss"], "lr": log[-1]["lr"]}, step=step)
            bar.update(1)
            if step % settings.log_every == 0:
                bar.set_postfix(loss=f"{np.mean([r['loss'] for r in log[-settings.log_every:]]):.4f}")
            last = step >= settings.steps or out_of_time(accelerator, started, settings.max_minutes)
            if step % settings.checkpoint_every == 0 or last:
                _checkpoint(accelerator, out, step, log)
            watchdog.beat()
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    pipeline.model = accelerator.unwrap_model(model).eval()
    if ema is not None:
        ema.copy_to(pipeline.model.parameters())
    folder = out / "pipeline"
    if accelerator.is_main_process:
        pipeline.save_pretrained(folder)
    return folder


def _checkpoint(accelerator: Accelerator, out: Path, step: int, log: list[dict]) -> None:
    """Save model, optimizer and schedule state at ``step``, atomically: written as ``step_N.partial``
    (with its ``state.json``) and renamed when complete, so that a crash never leaves a checkpoint
    resume would take; keep the two newest."""
    folder = out / "checkpoints" / f"step_{step}"
    partial = folder.with_name(f"{folder.name}.partial")
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE).write_text(json.dumps({"step": step, "processes": accelerator.num_processes}))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        with (out / "loss.jsonl").open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in log)
        log.clear()
        for old in _checkpoints(out)[:-2]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
