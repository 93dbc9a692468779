"""Deterministic Euler sampling of the target latent on Wan's shifted time grid, and best-of-N.

The grid is s_i = shift(1 − i/N), i = 0 … N − 1, then 0 (N model evaluations from pure noise at
s = 1 to the clean sample at s = 0), applied through diffusers' ``FlowMatchEulerDiscreteScheduler``
(its ``shift`` is Wan's k). Each step is x ← x + (s_next − s)·v. Condition latents are encoded
once by the caller and reused at every step; candidates are sampled as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dosediffusion.errors import Cancelled
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.flow_matching import to_velocity
from dosediffusion.model.limits import check_sampling_options


def sigma_grid(scheduler: FlowMatchEulerDiscreteScheduler, steps: int,
               device: torch.device | str = "cpu") -> FlowMatchEulerDiscreteScheduler:
    """A fresh copy of ``scheduler`` set to ``steps`` Euler steps on the shifted grid from s = 1."""
    check_sampling_options(steps, 1)
    fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    fresh.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist(), device=device)
    return fresh


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from ``seed`` (the same numbers on every device)."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


@torch.no_grad()
def euler_sample(
    model: Any2AnyDiT,
    conditions: Mapping[str, torch.Tensor],
    target: str,
    noise: torch.Tensor,
    scheduler: FlowMatchEulerDiscreteScheduler,
    steps: int,
    callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Sample the ``target`` latent.

    Args:
        conditions: modality → clean latent (1 or B, C, f, h, w), expanded to the noise's batch.
        noise: (B, C, f, h, w) starting latents (B candidates).
        callback: called with (step, steps) after each step.
        cancel: polled before each step; when it returns True, :class:`Cancelled` is raised.
    Returns the clean latents (B, C, f, h, w), float32.
    """
    grid = sigma_grid(scheduler, steps, noise.device)
    batch = noise.shape[0]
    conds = {m: c.expand(batch, *c.shape[1:]) for m, c in conditions.items()}
    x = noise.float()
    prediction_type = model.config.prediction_type
    for i, t in enumerate(grid.timesteps):
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled at step {i + 1} of {steps}")
        timestep = t.expand(batch)
        out = model({**conds, target: x}, timestep, [target]).sample[target]
        s = grid.sigmas[i].expand(batch).to(x.device)
        velocity = to_velocity(out.float(), x, s, prediction_type)
        x = grid.step(velocity, t, x, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, steps)
    return x
