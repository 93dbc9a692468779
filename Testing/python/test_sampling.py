"""Flow-matching algebra, the Euler sampler on Wan's shifted grid, and its determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from model_builders import tiny_model

from dosediffusion.errors import Cancelled, InputError
from dosediffusion.model.flow_matching import add_noise, shift_sigma, to_sample, to_velocity, training_target
from dosediffusion.model.sampling import euler_sample, initial_noise, sigma_grid

SCHEDULER = FlowMatchEulerDiscreteScheduler(shift=3.0)


class ExactModel(torch.nn.Module):
    """A model that knows the clean target x0: it returns the exact v, ε or x0 for the x_s it gets."""

    def __init__(self, x0: torch.Tensor, prediction_type: str):
        super().__init__()
        self.x0 = x0
        self.config = type("Config", (), {"prediction_type": prediction_type})()

    def forward(self, latents, timestep, targets):
        x_s = latents[targets[0]]
        s = (timestep / 1000).view(-1, 1, 1, 1, 1)
        noise = (x_s - (1 - s) * self.x0) / s
        return type("Out", (), {"sample": {targets[0]: training_target(self.x0, noise, self.config.prediction_type)}})()


def test_grid_is_wan_shift_of_uniform_steps():
    for steps in (1, 4, 10):
        grid = sigma_grid(SCHEDULER, steps)
        uniform = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
        assert torch.allclose(grid.sigmas[:-1].double(), shift_sigma(uniform, 3.0), atol=1e-6)
        assert grid.sigmas[-1] == 0 and grid.sigmas[0] == 1
        assert torch.allclose(grid.timesteps.double(), grid.sigmas[:-1].double() * 1000, atol=1e-3)
    with pytest.raises(InputError, match="between 1 and 50"):
        sigma_grid(SCHEDULER, 0)


def test_conversions_are_consistent():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    s = torch.tensor([0.3, 0.8])
    x_s = add_noise(x0, noise, s)
    v = training_target(x0, noise, "v_prediction")
    assert torch.allclose(to_sample(v, x_s, s), x0, atol=1e-6)
    for kind in ("epsilon", "sample"):
        assert torch.allclose(to_velocity(training_target(x0, noise, kind), x_s, s, kind), v, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample", "epsilon"])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_euler_recovers_the_sample_of_an_exact_model(prediction_type, steps):
    x0 = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    noise = initial_noise((2, 4, 2, 2, 2), seed=3, device="cpu")
    out = euler_sample(ExactModel(x0, prediction_type), {}, "dose", noise, SCHEDULER, steps)
    if prediction_type == "epsilon" and steps == 1:
        # at s = 1 an ε-model only returns the noise it sees: one step cannot move (why v is the default)
        assert torch.allclose(out, noise, atol=1e-5)
    else:
        assert torch.allclose(out, x0.expand_as(out), atol=1e-4)


def test_fixed_seed_is_bit_for_bit_reproducible():
    model = tiny_model()
    conditions = {"ct": torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(5))}
    runs = [euler_sample(model, conditions, "dose", initial_noise((2, 4, 3, 4, 4), 7, "cpu"), SCHEDULER, 4)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = euler_sample(model, conditions, "dose", initial_noise((2, 4, 3, 4, 4), 8, "cpu"), SCHEDULER, 4)
    assert not torch.equal(runs[0], other)
    assert not torch.equal(runs[0][0], runs[0][1])  # candidates differ from each other


def test_progress_and_cancel():
    model = tiny_model()
    conditions = {"ct": torch.zeros(1, 4, 1, 2, 2)}
    seen = []
    euler_sample(model, conditions, "dose", initial_noise((1, 4, 1, 2, 2), 0, "cpu"), SCHEDULER, 3,
                 callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    calls = iter([False, False, True])
    with pytest.raises(Cancelled, match="step 3 of 5"):
        euler_sample(model, conditions, "dose", initial_noise((1, 4, 1, 2, 2), 0, "cpu"), SCHEDULER, 5,
                     cancel=lambda: next(calls))


def test_initial_noise_does_not_depend_on_the_device_path():
    a = initial_noise((3, 2), 11, "cpu")
    b = torch.randn((3, 2), generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and np.isfinite(a.numpy()).all()
