"""The one training loop: every stage (A and B in :mod:`.loop`, C in :mod:`.scardnft`, the codec in
:mod:`.codec_training`) is a plug-in that says what a step's loss is; the loop does the rest once.

A :class:`Stage` yields the loss of optimizer step ``step`` in :class:`Piece` s whose sum is the step's
loss (micro-batches, or one forward's share of them); the loop calls ``backward`` on each before the
stage makes the next, so only one forward's activations are alive, and all-reduces the gradients on
the piece marked ``last`` (one all-reduce per step across processes). Then, written here only:

- set-up (:func:`make_accelerator`: Accelerate on a CPU, one GPU or many, bf16 autocast, TensorBoard
  under ``OUT/logs`` when ``tensorboard`` is set and installed; :func:`make_trainee`: Adam with a
  linear warm-up, and an exponential moving average of the trained parameters when ``ema_decay`` > 0,
  checkpointed with the rest and copied into them at the end: what is shipped);
- resume from the newest complete checkpoint under ``OUT/checkpoints`` (model, optimizer, schedule, the
  EMA and whatever the stage registered with Accelerate), so a resumed run continues exactly;
- the guards (:mod:`.guards`): a non-finite loss or gradient stops every process before the weights
  change, a stalled step ends the run, ``max_minutes`` ends it after the same step on every process;
- gradient clipping, the log (means over processes, to ``OUT/loss.jsonl`` at each checkpoint and to
  TensorBoard every step), the progress bar, and atomic checkpoints every ``checkpoint_every`` steps
  and at the last one (two kept).

What stays a stage's own: its model, data and loss, its random draws (functions of seed and step:
:func:`.loop.batch_indices`, :func:`.loop.flips`), and what it writes when the loop returns.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from dosediffusion_training.training.config import LoopSettings
from dosediffusion_training.training.guards import (
    StallWatchdog,
    check_step,
    mean_over_processes,
    out_of_time,
    resume_hint,
)

#: The file in each checkpoint folder that makes it complete: ``{"step": N, "processes": P}``.
STATE = "state.json"


@dataclass
class Piece:
    """A share of a step's loss: ``loss`` a scalar with gradients, ``parts`` its share of each logged
    number (summed over the step's pieces), ``last`` whether it is the step's last (its backward
    all-reduces the gradients across processes)."""

    loss: torch.Tensor
    parts: dict[str, float]
    last: bool


class Stage(Protocol):
    """What a stage plugs into :func:`run`."""

    #: The progress bar's label, and the logged numbers it shows (means over ``log_every`` steps).
    label: str
    shown: tuple[str, ...]

    def pieces(self, step: int) -> Iterator[Piece]:
        """The loss of optimizer step ``step`` (0-based) in pieces; exactly one is marked ``last``."""

    def after_step(self, step: int) -> dict[str, float]:
        """After the optimizer step that made ``step`` steps done: more numbers to log (already agreed
        over processes)."""


@dataclass
class Trainee:
    """What the loop updates: the (prepared) ``model``, its trained ``parameters``, the ``optimizer``
    and LR ``schedule`` over them, and their moving average (None without ``ema_decay``)."""

    model: torch.nn.Module
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    ema: EMAModel | None


def make_accelerator(settings: LoopSettings, out: Path) -> Accelerator:
    """Accelerate for ``settings`` (CPU without CUDA; DDP keeps unused parameters: modalities absent from
    a batch, stage A's dropped conditions) with TensorBoard under ``out/logs`` when asked and installed."""
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    trackers = "tensorboard" if settings.tensorboard and importlib.util.find_spec("tensorboard") else None
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[unused], log_with=trackers, project_dir=str(out / "logs"))
    if trackers:
        accelerator.init_trackers("dosediffusion")
    return accelerator


def make_trainee(accelerator: Accelerator, model: torch.nn.Module, parameters: list[torch.nn.Parameter],
                 settings: LoopSettings) -> Trainee:
    """Adam (β 0.9, 0.999, no weight decay) over ``parameters`` of ``model`` with a linear warm-up over
    ``warmup_steps``, prepared by Accelerate, and the parameters' EMA when ``ema_decay`` > 0."""
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / max(settings.warmup_steps, 1)))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    ema = EMAModel(parameters, decay=settings.ema_decay) if settings.ema_decay else None  # on the device now
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return Trainee(model, list(parameters), optimizer, schedule, ema)


def run(stage: Stage, accelerator: Accelerator, trainee: Trainee, settings: LoopSettings, out: Path,
        resume: bool = True) -> int:
    """Train ``trainee`` with ``stage``'s loss until ``settings.steps`` or ``max_minutes``, resuming from the
    newest checkpoint under ``out`` when ``resume``; returns the steps done. The EMA, if any, is in the
    trained parameters afterwards."""
    step = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / STATE).read_text())["step"]
    log: list[dict] = []
    bar = tqdm(total=settings.steps, initial=step, desc=stage.label, unit="step", disable=not accelerator.is_main_process)
    where = partial(where_it_stands, out)
    started, last = time.monotonic(), step >= settings.steps
    with StallWatchdog(settings.stall_timeout_s, where) as watchdog:
        while not last:
            values, totals = [], {}
            for piece in stage.pieces(step):
                with nullcontext() if piece.last else accelerator.no_sync(trainee.model):
                    accelerator.backward(piece.loss)
                values.append(piece.loss.item())
                for name, value in piece.parts.items():
                    totals[name] = totals.get(name, 0.0) + value
            grad_norm = accelerator.clip_grad_norm_(trainee.parameters, settings.grad_clip)
            check_step(accelerator, values, float(grad_norm), step, where)
            trainee.optimizer.step()
            trainee.schedule.step()
            trainee.optimizer.zero_grad()
            if trainee.ema is not None:
                trainee.ema.step(trainee.parameters)
            step += 1
            log.append({"step": step, **mean_over_processes(accelerator, totals), **stage.after_step(step),
                        "lr": trainee.schedule.get_last_lr()[0]})
            accelerator.log({k: v for k, v in log[-1].items() if k != "step"}, step=step)
            bar.update(1)
            if step % settings.log_every == 0:
                recent = log[-settings.log_every:]
                bar.set_postfix({k: f"{np.mean([r[k] for r in recent]):.4f}" for k in stage.shown})
            last = step >= settings.steps or out_of_time(accelerator, started, settings.max_minutes)
            if step % settings.checkpoint_every == 0 or last:
                save_checkpoint(accelerator, out, step, log)
            watchdog.beat()
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if trainee.ema is not None:
        trainee.ema.copy_to(trainee.parameters)
    return step


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints under ``out``, oldest first (a ``step_N.partial`` being written is not one)."""
    found = [p for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit() and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint under ``out``, or None."""
    found = checkpoints(out)
    return found[-1] if found else None


def where_it_stands(out: Path) -> str:
    """For a stopped run's message: the newest complete checkpoint in ``out``, to resume from."""
    return resume_hint(latest_checkpoint(out))


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, log: list[dict]) -> None:
    """Save the training state at ``step``, atomically: written as ``step_N.partial`` (with its
    ``state.json``) and renamed when complete, so that a crash never leaves a checkpoint resume would
    take; append ``log`` to ``out/loss.jsonl`` (and empty it); keep the two newest."""
    folder = out / "checkpoints" / f"step_{step}"
    staging = folder.with_name(f"{folder.name}.partial")
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE).write_text(json.dumps({"step": step, "processes": accelerator.num_processes}))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        with (out / "loss.jsonl").open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in log)
        log.clear()
        for old in checkpoints(out)[:-2]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
