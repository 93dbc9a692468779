"""What stops a training run cleanly, and what every process logs.

- :func:`check_step`: after a step's backward passes and before its optimizer step, every process
  says whether its losses and the gradient norm are finite; if one is not, on any process, all of
  them stop together (:class:`TrainingStopped`, exit 2) before the weights change, so the newest
  checkpoint is the last good state and ``fit`` resumes from it.
- :class:`StallWatchdog`: a thread that ends the process (exit 3) when no step has completed for
  ``train.stall_timeout_s`` seconds, e.g. a collective waiting for a process that died or hangs.
  Checkpoints are written atomically, so ending at any moment never leaves one half-written.
- :func:`out_of_time`: ``train.max_minutes`` ends a run after that much wall time, on every process after
  the same step (a checkpoint and the pipeline are written as at the last step): comparisons at equal budget.
- :func:`mean_over_processes`: the logged numbers are means over all processes, not process 0's.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from dosediffusion.errors import InputError

#: Exit status of a run the watchdog stopped.
EXIT_STALLED = 3


class TrainingStopped(InputError):
    """The run stopped on purpose (a non-finite loss or gradient); the message names the checkpoint to resume."""


def resume_hint(checkpoint: Path | None) -> str:
    """Where a stopped run stands: its newest complete checkpoint, or none."""
    if checkpoint is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {checkpoint}; 'fit' resumes from it"


def check_step(accelerator: Accelerator, losses: list[float], grad_norm: float, step: int,
               describe: Callable[[], str]) -> None:
    """Raise :class:`TrainingStopped` on every process when any process's ``losses`` or ``grad_norm``
    of step ``step`` (0-based) is not finite; ``describe`` says where the run stands."""
    finite = all(math.isfinite(x) for x in [*losses, grad_norm])
    agreed = accelerator.reduce(torch.tensor(float(finite), device=accelerator.device), reduction="sum")
    if agreed.item() < accelerator.num_processes:
        raise TrainingStopped(f"step {step + 1}: the loss or the gradient became infinite or NaN on "
                              f"{accelerator.num_processes - int(agreed.item())} of {accelerator.num_processes} "
                              f"processes; the weights were not updated. Lower train.learning_rate or look at the data; "
                              f"{describe()}")


def mean_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    """``values`` averaged over all processes (the same dict comes back on each)."""
    if accelerator.num_processes == 1:
        return dict(values)
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(values, accelerator.reduce(stacked, reduction="mean").tolist(), strict=True))


def out_of_time(accelerator: Accelerator, started: float, max_minutes: float) -> bool:
    """Whether ``max_minutes`` (0: no limit) of wall time have passed since ``started`` (``time.monotonic()``)
    on any process: every process gets the same answer, so that all stop after the same step."""
    if max_minutes <= 0:
        return False
    late = float(time.monotonic() - started > 60.0 * max_minutes)
    if accelerator.num_processes > 1:
        late = accelerator.reduce(torch.tensor([late], device=accelerator.device), reduction="sum").item()
    return late > 0


class StallWatchdog:
    """Calls ``on_stall`` (default: say so on stderr and end the process with :data:`EXIT_STALLED`)
    when :meth:`beat` has not been called for ``timeout_s`` seconds. A ``timeout_s`` of 0 disables it.
    Use as a context manager around the loop; ``describe`` says where the run stands when it fires."""

    def __init__(self, timeout_s: float, describe: Callable[[], str] = str,
                 on_stall: Callable[[str], None] | None = None):
        self.timeout_s = float(timeout_s)
        self.describe = describe
        self.on_stall = on_stall or _exit_stalled
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def __enter__(self) -> StallWatchdog:
        if self.timeout_s > 0:
            self._last = time.monotonic()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def beat(self) -> None:
        """A step completed."""
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self.on_stall(f"no training step completed for {idle:.0f} s (train.stall_timeout_s "
                              f"{self.timeout_s:g}); {self.describe()}")
                return


def _exit_stalled(message: str) -> None:
    print(f"dosediffusion-train: stopped: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_STALLED)
