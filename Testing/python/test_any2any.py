"""Any2AnyDiT: shapes for every subset and target, absent modalities, role embedding, slot RoPE,
gradient checkpointing, and that it can fit one case."""

from __future__ import annotations

import itertools

import pytest
import torch
from model_builders import tiny_model

from dosediffusion.conditioning.prepare import MODALITIES
from dosediffusion.errors import InputError
from dosediffusion.model.blocks import ROLE_CONDITION
from dosediffusion.model.flow_matching import add_noise, flow_matching_loss, sample_training_sigmas

GRID = (3, 4, 6)  # latent (f, h, w)


def _latents(names, batch=1, seed=0, grid=GRID):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, 4, *grid, generator=g) for m in names}


@torch.no_grad()
def test_every_subset_and_target_gives_target_shapes():
    model = tiny_model()
    t = torch.tensor([500.0, 20.0])
    grid = (1, 2, 4)
    for r in range(1, len(MODALITIES) + 1):
        for subset in itertools.combinations(MODALITIES, r):
            latents = _latents(subset, batch=2, grid=grid)
            for target in subset:
                out = model(latents, t, [target]).sample
                assert list(out) == [target]
                assert out[target].shape == (2, 4, *grid)
                assert torch.isfinite(out[target]).all()


def test_several_targets_at_once():
    model = tiny_model()
    out = model(_latents(["ct", "ptv", "dose"]), torch.tensor([300.0]), ["dose", "ct"]).sample
    assert set(out) == {"dose", "ct"}


def _relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return ((after - before).abs().mean() / before.abs().mean()).item()


#: float32 rounding moves the tiny model's output by ~1e-7 relative; a real effect moves it by 1e-3 or more.
CHANGED = 1e-4


@torch.no_grad()
def test_absent_modalities_do_not_matter_present_ones_do():
    model = tiny_model()
    latents = _latents(["ct", "ptv", "dose"])
    t = torch.tensor([400.0])
    before = model(latents, t, ["dose"]).sample["dose"]
    for parameter in model.patch_embeddings["oar"].parameters():  # a modality that is not given
        torch.nn.init.normal_(parameter, std=3.0)
    assert torch.equal(model(latents, t, ["dose"]).sample["dose"], before)
    other_ct = dict(latents, ct=_latents(["ct"], seed=1)["ct"])  # a present modality's input changes
    assert _relative_change(model(other_ct, t, ["dose"]).sample["dose"], before) > CHANGED
    torch.nn.init.normal_(model.patch_embeddings["ct"].weight, std=0.5)  # and its weights, not uniformly
    assert _relative_change(model(latents, t, ["dose"]).sample["dose"], before) > CHANGED


@torch.no_grad()
def test_role_embedding_reaches_the_output():
    model = tiny_model()
    latents = _latents(["ct", "dose"])
    t = torch.tensor([400.0])
    before = model(latents, t, ["dose"]).sample["dose"]
    model.condition_embedder.role_embedding.weight[ROLE_CONDITION].add_(0.5)
    assert _relative_change(model(latents, t, ["dose"]).sample["dose"], before) > CHANGED


@torch.no_grad()
def test_slot_rope_distinguishes_slot_order():
    latents = _latents(["ct", "ptv", "dose"])
    t = torch.tensor([400.0])
    swapped = {"ct": 1, "ptv": 0}
    model = tiny_model()
    base = model(latents, t, ["dose"]).sample["dose"]
    assert _relative_change(model(latents, t, ["dose"], slot_ids=swapped).sample["dose"], base) > CHANGED
    no_slot = tiny_model(rope_slot_dim=0)  # control: without a slot axis the slot order is invisible
    base = no_slot(latents, t, ["dose"]).sample["dose"]
    assert torch.allclose(no_slot(latents, t, ["dose"], slot_ids=swapped).sample["dose"], base, atol=1e-6)


def test_token_order_of_the_input_dict_does_not_matter():
    model = tiny_model()
    latents = _latents(["dose", "ct", "body"])
    t = torch.tensor([100.0])
    reordered = {m: latents[m] for m in ["body", "ct", "dose"]}
    with torch.no_grad():
        assert torch.allclose(model(latents, t, ["dose"]).sample["dose"], model(reordered, t, ["dose"]).sample["dose"], atol=1e-6)


def test_bad_requests_are_clear():
    model = tiny_model()
    t = torch.tensor([1.0])
    with pytest.raises(InputError, match="mri"):
        model(dict(_latents(["ct", "dose"]), mri=torch.zeros(1, 4, *GRID)), t, ["dose"])
    with pytest.raises(InputError, match="targets"):
        model(_latents(["ct"]), t, ["dose"])
    with pytest.raises(InputError, match="one latent shape"):
        model({"ct": torch.zeros(1, 4, 3, 4, 6), "dose": torch.zeros(1, 4, 3, 4, 8)}, t, ["dose"])
    with pytest.raises(InputError, match="divisible by the patch"):
        model(dict(ct=torch.zeros(1, 4, 3, 5, 6), dose=torch.zeros(1, 4, 3, 5, 6)), t, ["dose"])
    with pytest.raises(InputError, match="prediction_type"):
        tiny_model(prediction_type="score")


def test_gradient_checkpointing_gives_the_same_gradients():
    latents = _latents(["ct", "dose"])
    t = torch.tensor([600.0])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(latents, t, ["dose"]).sample["dose"].square().mean().backward()
        grads.append(model.blocks[0].attn1.to_q.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_loss_decreases_when_overfitting_one_case(prediction_type):
    model = tiny_model(prediction_type=prediction_type)
    conditions = _latents(["ct", "ptv"], seed=1, grid=(1, 2, 4))
    x0 = torch.tanh(conditions["ct"] + conditions["ptv"])  # a target that depends on the conditions
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)

    def loss_at(step_seed):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(step_seed))
        s = sample_training_sigmas(1, 3.0, g)
        out = model({**conditions, "dose": add_noise(x0, noise, s)}, s * 1000, ["dose"]).sample["dose"]
        return flow_matching_loss(out, x0, noise, prediction_type)

    with torch.no_grad():
        first = sum(loss_at(1000 + k).item() for k in range(8)) / 8
    for step in range(100):
        optimizer.zero_grad()
        loss_at(step).backward()
        optimizer.step()
    with torch.no_grad():
        last = sum(loss_at(1000 + k).item() for k in range(8)) / 8
    assert last < 0.5 * first
