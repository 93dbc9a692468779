"""Flow matching in Wan's convention (DESIGN.md, "Objective and sampling").

x_s = (1 − s)·x0 + s·ε with s ∈ [0, 1] (s = 1 is pure noise) and Wan's shift
s' = k·s / (1 + (k − 1)·s). The model's timestep is s · ``num_train_timesteps``. Its output is,
by ``prediction_type``: ``v_prediction`` v = ε − x0 (the default), ``epsilon`` ε, or ``sample`` x0.
All conversions below are exact algebra on these definitions.
"""

from __future__ import annotations

import torch


def shift_sigma(s: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's time shift of s ∈ [0, 1] (k = ``shift``; k = 1 is the identity)."""
    return shift * s / (1 + (shift - 1) * s)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 − s)·x0 + s·ε; ``s`` (B,) broadcast over the remaining dimensions."""
    s = s.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def training_target(x0: torch.Tensor, noise: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the model regresses: v = ε − x0, ε, or x0."""
    if prediction_type == "v_prediction":
        return noise - x0
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def to_velocity(prediction: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor, prediction_type: str,
                min_gap: float = 1e-3) -> torch.Tensor:
    """The velocity v = ε − x0 implied by the model output at x_s.

    From x0: v = (x_s − x0) / s; from ε: v = (ε − x_s) / (1 − s). The divisor is kept above
    ``min_gap`` (at s = 1 an ε-model says nothing about x0, at s = 0 an x0-model nothing about ε).
    """
    s = s.view(-1, *([1] * (x_s.ndim - 1))).to(x_s.dtype)
    if prediction_type == "v_prediction":
        return prediction
    if prediction_type == "sample":
        return (x_s - prediction) / s.clamp(min=min_gap)
    if prediction_type == "epsilon":
        return (prediction - x_s) / (1 - s).clamp(min=min_gap)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def to_sample(velocity: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0 = x_s − s·v."""
    return x_s - s.view(-1, *([1] * (x_s.ndim - 1))).to(x_s.dtype) * velocity


def sample_training_sigmas(batch: int, shift: float, generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Training times: u ~ U(0, 1), then shifted; (B,) on ``device``."""
    u = torch.rand(batch, generator=generator)
    return shift_sigma(u, shift).to(device)


def flow_matching_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """Mean squared error between the model output and its target over all target-latent elements."""
    target = training_target(x0, noise, prediction_type)
    return torch.mean((prediction.float() - target.float()) ** 2)
