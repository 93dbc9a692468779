"""Stage C (ScardNFT): reward, optimality, the NFT loss, LoRA trainability, exact resume, merging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from training_data import write_training_cases

from dosediffusion.metrics.scorecard import EntryResult, ScoreReport
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.configs import TINY
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion_training.training.config import RunConfig, TrainSettings
from dosediffusion_training.training.lora import (
    LORA_WEIGHTS,
    MODULATION_WEIGHTS,
    PolicyState,
    add_lora,
    ema_update,
    is_modulation,
    load_adapter,
    merge_into_pipeline,
    old_policy_decay,
    policy,
)
from dosediffusion_training.training.reward import (
    hard_violation,
    optimality,
    reward,
    standardized_score,
    structure_scores,
    update_scale,
)
from dosediffusion_training.training.scardnft import nft_loss, scardnft_pieces, train_scardnft

# ---- reward -------------------------------------------------------------------------------------


def _entry(value, hard=True):
    return EntryResult("S", "MaxDose", value, "Gy", 1.0, 1.0, None, hard)


def test_hinge_counts_only_hard_limits_beyond_them():
    template = {"entries": [{"limit": {"max": 50, "hard": True}}, {"limit": {"min": 95, "hard": True}},
                            {"limit": {"max": 10}}, {"limit": {"max": 5, "min": 1, "hard": True}},
                            {"limit": {"max": 1, "hard": True}}]}
    report = ScoreReport("t", [_entry(53.5), _entry(90.0), _entry(99.0, hard=False), _entry(3.0), _entry(None)])
    assert hard_violation(report, template) == pytest.approx(3.5 + 5.0)  # 3.5 Gy over, 5 below, others inside/absent
    with pytest.raises(ValueError):
        hard_violation(ScoreReport("t", report.entries[:2]), template)


def test_reward_weighs_score_hinge_and_mae():
    assert reward(7.0, 2.0, 0.5, lambda_hinge=1.5, lambda_mae=4.0) == pytest.approx(7.0 - 3.0 - 2.0)


def test_optimality_and_running_scale():
    rewards = np.array([[1.0, 3.0], [5.0, 5.0]])  # std 1 and 0: spread 0.5
    scale = update_scale(None, rewards, decay=0.9)
    assert scale == pytest.approx(0.5)
    assert update_scale(scale, [[0.0, 4.0]], decay=0.9) == pytest.approx(0.9 * 0.5 + 0.1 * 2.0)
    r = optimality(rewards, 0.5)
    np.testing.assert_allclose(r, [[0.0, 1.0], [0.5, 0.5]])  # ±1 / 0.5 clipped to ±1
    np.testing.assert_allclose(optimality([[1.0, 1.5]], 1.0), [[0.375, 0.625]])
    np.testing.assert_allclose(optimality([[1.0, 3.0]], 0.0), [[0.5, 0.5]])


def _report(**structures):
    """A report with, per structure, entries (score, max_score); a None score is not evaluable."""
    entries = [EntryResult(name, "MeanDose", 1.0 if score is not None else None, "Gy", score, top, None, False)
               for name, pairs in structures.items() for score, top in pairs]
    return ScoreReport("t", entries)


def test_structure_scores_sum_each_structures_entries():
    reports = [_report(PTV=[(3.0, 5.0), (1.0, 2.0)], Cord=[(2.0, 2.0)], Lung=[(None, 4.0)]),
               _report(PTV=[(4.0, 5.0), (0.0, 2.0)], Cord=[(1.0, 2.0)], Lung=[(None, 4.0)])]
    names, scores, importance = structure_scores(reports)
    assert names == ["PTV", "Cord"]  # Lung is not evaluable for any candidate
    np.testing.assert_allclose(scores, [[4.0, 2.0], [4.0, 1.0]])
    np.testing.assert_allclose(importance, [7.0, 2.0])


def test_per_structure_standardisation_weighs_structures_by_importance_not_by_spread():
    # candidate 0 is better for the PTV by 30 points, candidate 1 better for the cord by 0.3 points
    scores = np.array([[90.0, 5.0], [60.0, 5.3], [75.0, 5.15]])
    z = standardized_score(scores, np.array([1.0, 1.0]))
    np.testing.assert_allclose(z, [0.0, 0.0, 0.0], atol=1e-12)  # equal importance: a tie, whatever the spreads
    assert scores.sum(axis=1).argmax() == 0  # the raw total would have let the PTV's wide range decide
    z = standardized_score(scores, np.array([3.0, 1.0]))
    assert z[0] > z[2] > z[1] and z.mean() == pytest.approx(0.0)
    # a structure on which the candidates agree adds nothing; scaling a structure's points changes nothing
    np.testing.assert_allclose(standardized_score(np.c_[scores, np.full(3, 7.0)], np.array([3.0, 1.0, 5.0])),
                               z * 4.0 / 9.0)
    np.testing.assert_allclose(standardized_score(scores * [10.0, 0.1], np.array([3.0, 1.0])), z)
    np.testing.assert_allclose(standardized_score(np.zeros((3, 0)), np.zeros(0)), np.zeros(3))


def test_old_policy_decay_follows_diffusionnfts_schedule():
    assert [old_policy_decay(k, 0, 0.001, 0.5) for k in (0, 1, 250, 500, 2000)] == [0.0, 0.001, 0.25, 0.5, 0.5]
    assert [old_policy_decay(k, 75, 0.0075, 0.999) for k in (10, 75, 76, 175, 500)] == pytest.approx(
        [0.0, 0.0, 0.0075, 0.75, 0.999])
    model = _tiny_model()
    add_lora(model, rank=4)
    state = PolicyState(model)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            if ".lora_B.default." in name or is_modulation(name):
                p.add_(1.0)
    ema_update(model, state, old_policy_decay(0, 0, 0.001, 0.5))  # decay 0: the old policy becomes the current one
    assert all(torch.equal(p, named[n.replace(".default.", ".old.")]) for n, p in named.items() if ".default." in n)
    assert all(torch.equal(state.old_modulation[n], named[n]) for n in state.old_modulation)


# ---- the NFT loss -------------------------------------------------------------------------------


def test_nft_loss_matches_a_hand_computation():
    v_theta = torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    v_old = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    x0 = torch.tensor([[0.5, -1.0], [1.0, 0.0]])
    eps = torch.tensor([[1.5, 0.0], [1.0, 0.0]])
    s = torch.tensor([0.5, 0.25])
    x_s = (1 - s[:, None]) * x0 + s[:, None] * eps
    r, beta = torch.tensor([0.75, 0.0]), 0.5
    # v+ = 0.5 v_old + 0.5 v_theta, v- = 1.5 v_old - 0.5 v_theta; x̂0 = x_s − s·v
    pos = torch.tensor([[0.5, 2.0], [1.0, 0.0]])
    neg = torch.tensor([[-0.5, 0.0], [3.0, 4.0]])
    x0_pos, x0_neg = x_s - s[:, None] * pos, x_s - s[:, None] * neg
    e_pos, e_neg = ((x0_pos - x0) ** 2).mean(1), ((x0_neg - x0) ** 2).mean(1)
    expected = (r * e_pos + (1 - r) * e_neg) / beta
    torch.testing.assert_close(nft_loss(v_theta, v_old, x_s, x0, s, r, beta, adaptive=False), expected)
    w_pos, w_neg = (x0_pos - x0).abs().mean(1), (x0_neg - x0).abs().mean(1)
    adaptive = (r * e_pos / w_pos + (1 - r) * e_neg / w_neg) / beta
    torch.testing.assert_close(nft_loss(v_theta, v_old, x_s, x0, s, r, beta), adaptive)
    # x̂0 − x0 = −s (v − v*): the x0-space loss is the velocity-space one weighted by s per candidate
    v_star = eps - x0
    e_v = {name: ((v - v_star) ** 2).mean(1) / (v - v_star).abs().mean(1) for name, v in (("+", pos), ("-", neg))}
    torch.testing.assert_close(adaptive, s * (r * e_v["+"] + (1 - r) * e_v["-"]) / beta)


def _tiny_model(seed=0) -> Any2AnyDiT:
    torch.manual_seed(seed)
    return Any2AnyDiT(**TINY)


def _latents(seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, 4, 2, 4, 4, generator=g) for m in ("ct", "ptv", "dose")}


def _nft_step(r_value: float) -> tuple[float, float]:
    """Distance of the current policy's velocity to v* before and after one SGD step on L_NFT alone."""
    model = _tiny_model()
    add_lora(model, rank=4)
    state = PolicyState(model)
    lat = _latents(1)
    x0, eps = lat.pop("dose"), torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    s = torch.tensor([0.6])
    x_s, v_star = (1 - s) * x0 + s * eps, eps - x0

    def velocity():
        return model({**lat, "dose": x_s}, s * 1000, ["dose"]).sample["dose"]

    with torch.no_grad(), policy(model, "old", state):
        v_old = velocity()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-2)
    v = velocity()
    before = torch.mean((v - v_star) ** 2).item()
    nft_loss(v, v_old, x_s, x0, s, torch.tensor([r_value]), beta=1.0).mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = torch.mean((velocity() - v_star) ** 2).item()
    return before, after


def test_optimality_one_pulls_toward_the_candidate_and_zero_pushes_away():
    before, after = _nft_step(1.0)
    assert after < before
    before, after = _nft_step(0.0)
    assert after > before


def test_only_lora_and_modulation_train():
    model = _tiny_model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_lora(model, rank=4)
    state = PolicyState(model)
    settings = TrainSettings(stage="C", scorecard="lung_60", num_candidates=2, reference_weight=0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    lat = _latents(3, batch=2)
    x0 = lat.pop("dose")
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        candidates = torch.randn(4, 4, 2, 4, 4, generator=g)
        (loss, parts), = scardnft_pieces(model, model, state, settings, "dose", lat, x0,
                                         torch.randn(x0.shape, generator=g), torch.rand(2, generator=g), candidates,
                                         torch.randn(candidates.shape, generator=g), torch.rand(4, generator=g),
                                         torch.tensor([0.0, 1.0, 0.3, 0.7]))
        loss.backward()
        for name, p in model.named_parameters():
            trains = ".lora_A.default." in name or ".lora_B.default." in name or is_modulation(name)
            assert p.requires_grad == trains, name
            assert (p.grad is not None) == trains, name
        optimizer.step()
        optimizer.zero_grad()
        ema_update(model, state, 0.5)
        assert np.isfinite(parts["nft"]) and parts["reference"] >= 0
    named = dict(model.named_parameters())
    for name, value in base.items():
        current = named.get(name) if name in named else named[name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]]
        if is_modulation(name):
            assert not torch.equal(current, value), name
        else:
            assert torch.equal(current, value), name
    assert any(not torch.equal(p, named[n.replace(".default.", ".old.")]) for n, p in named.items() if ".lora_B.default." in n)


def _gradients(chunks):
    """Gradients of stage C's loss on fixed inputs, its pieces backpropagated one by one."""
    model = _tiny_model()
    add_lora(model, rank=4)
    state = PolicyState(model)
    with torch.no_grad():  # a current policy that differs from the old and the reference one
        for name, p in model.named_parameters():
            if ".lora_B.default." in name:
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    settings = TrainSettings(stage="C", scorecard="lung_60", num_candidates=3, reference_weight=0.5, nft_weight=2.0)
    lat = _latents(6, batch=2)
    x0 = lat.pop("dose")
    g = torch.Generator().manual_seed(7)
    candidates = torch.randn(6, 4, 2, 4, 4, generator=g)
    total = {}
    for piece, parts in scardnft_pieces(model, model, state, settings, "dose", lat, x0, torch.randn(x0.shape, generator=g),
                                        torch.rand(2, generator=g), candidates, torch.randn(candidates.shape, generator=g),
                                        torch.rand(6, generator=g), torch.linspace(0, 1, 6), chunks=chunks):
        piece.backward()
        total = {k: total.get(k, 0.0) + v for k, v in parts.items()}
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, total


def test_candidates_in_micro_batches_give_the_same_gradients():
    whole, parts = _gradients(None)
    for chunks in ([slice(i, i + 1) for i in range(6)], [slice(0, 4), slice(4, 6)]):
        split, split_parts = _gradients(chunks)
        assert set(split) == set(whole) and len(whole) > 10
        for name in whole:
            torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7)
        assert split_parts == pytest.approx(parts, rel=1e-5)
    assert parts["nft"] > 0 and parts["reference"] > 0 and parts["diffusion"] > 0


# ---- the stage C loop ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_training_cases(tmp_path_factory.mktemp("compact"), range(2), (12, 32, 40))


def _config(tmp_path, data, **train) -> RunConfig:
    raw = {"data": {"folder": str(data)}, "preprocessing": {"crop_shape": [9, 32, 32], "spacing_mm": [5.0, 5.0, 5.0]},
           "codec": {"type": "patch", "factors": [1, 4, 4]}, "model": {"size": "tiny", "patch_size": [1, 2, 2]},
           "train": {"stage": "C", "scorecard": "lung_60", "num_candidates": 2, "candidate_steps": 2, "lora_rank": 4,
                     "steps": 4, "batch_size": 1, "learning_rate": 1e-2, "warmup_steps": 1, "checkpoint_every": 2,
                     "reference_weight": 0.01, **train}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return RunConfig.from_yaml(path)


def test_stage_c_resumes_exactly_and_merges(tmp_path, data):
    straight = train_scardnft(_config(tmp_path, data), tmp_path / "a")
    config = _config(tmp_path, data)
    config.train.steps = 2
    train_scardnft(config, tmp_path / "b")
    resumed = train_scardnft(_config(tmp_path, data), tmp_path / "b")
    a = DoseDiffusionPipeline.from_pretrained(straight).model.state_dict()
    b = DoseDiffusionPipeline.from_pretrained(resumed).model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(line) for line in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs] == [1, 2, 3, 4]
    straight_logs = [json.loads(line) for line in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()]
    assert [x["reward_scale"] for x in logs] == [x["reward_scale"] for x in straight_logs]
    assert all(np.isfinite(x["loss"]) and x["reward_scale"] >= 0 for x in logs)

    # the merged pipeline predicts what the adapter on top of the starting model predicts
    start = tmp_path / "start"
    torch.manual_seed(0)
    from dosediffusion_training.training.loop import build_pipeline

    build_pipeline(_config(tmp_path, data)).save_pretrained(start)  # the same random start (seed 0)
    on_top = load_adapter(DoseDiffusionPipeline.from_pretrained(start), tmp_path / "a" / "adapter")
    merged = DoseDiffusionPipeline.from_pretrained(merge_into_pipeline(start, tmp_path / "a" / "adapter",
                                                                      tmp_path / "merged"))
    lat = {m: torch.randn(1, 16, 9, 8, 8, generator=torch.Generator().manual_seed(5)) for m in ("ct", "ptv", "dose")}
    t = torch.tensor([400.0])
    with torch.no_grad():
        expected = on_top.model(lat, t).sample["dose"]
        got = merged.model(lat, t).sample["dose"]
        trained = DoseDiffusionPipeline.from_pretrained(straight).model(lat, t).sample["dose"]
        plain = DoseDiffusionPipeline.from_pretrained(start).model(lat, t).sample["dose"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained, expected, rtol=1e-4, atol=1e-5)
    assert (plain - expected).abs().mean() > 1e-3 * expected.abs().mean()  # the adapter changed the model


def test_fit_command_runs_stage_c_and_merge_lora(tmp_path, data):
    from dosediffusion_training.cli import main

    config = _config(tmp_path, data, steps=1, checkpoint_every=1)
    raw = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert raw["train"]["stage"] == "C" and config.train.steps == 1
    raw["train"]["steps"] = 1
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["fit", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert main(["merge-lora", "--pipeline", str(tmp_path / "run" / "pipeline"), "--adapter",
                 str(tmp_path / "run" / "adapter"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model_index.json").is_file()


def test_accumulated_and_candidate_micro_batches_train_as_one_batch(tmp_path, data):
    def run(name, **train):
        folder = train_scardnft(_config(tmp_path, data, steps=2, checkpoint_every=2, **train), tmp_path / name)
        logs = [json.loads(line) for line in (tmp_path / name / "loss.jsonl").read_text().splitlines()]
        return DoseDiffusionPipeline.from_pretrained(folder).model.state_dict(), logs

    whole, whole_logs = run("whole", batch_size=2)
    for name, settings in {"accumulated": {"batch_size": 1, "gradient_accumulation_steps": 2},
                           "chunked": {"batch_size": 2, "candidate_micro_batch": 1}}.items():
        weights, logs = run(name, **settings)
        for key in whole:  # Adam moves the weights by ~1e-2 a step: rounding stays far below that
            torch.testing.assert_close(weights[key], whole[key], rtol=1e-4, atol=1e-5)
        for mine, theirs in zip(logs, whole_logs, strict=True):
            assert mine["reward_scale"] == pytest.approx(theirs["reward_scale"], rel=1e-6)
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)


def test_stage_c_honours_the_loops_settings(tmp_path, data):
    # the wall-time budget ends the run after its first step with a checkpoint, the adapter and the pipeline;
    # TensorBoard logs it; mirrored batches run through candidates, rewards and losses
    config = _config(tmp_path, data, max_minutes=1e-9, tensorboard=True, flip_lr_probability=1.0)
    folder = train_scardnft(config, tmp_path / "budget")
    logs = (tmp_path / "budget" / "loss.jsonl").read_text().splitlines()
    assert len(logs) == 1 and (tmp_path / "budget" / "checkpoints" / "step_1" / "state.json").is_file()
    assert (tmp_path / "budget" / "adapter" / "adapter_config.json").is_file()
    assert DoseDiffusionPipeline.from_pretrained(folder).model is not None
    assert list((tmp_path / "budget" / "logs").rglob("events.out.tfevents.*"))

    # ema_decay ships the moving average of the trained parameters over the steps (diffusers' EMAModel, as
    # every stage): the averaged run's adapter is the average of the 1-, 2- and 3-step runs' adapters
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file

    def adapter(steps: int, **train) -> dict[str, torch.Tensor]:
        out = tmp_path / f"steps{steps}-{train}"
        train_scardnft(_config(tmp_path, data, steps=steps, checkpoint_every=steps, **train), out)
        return {f"{name}/{k}": v for name in (LORA_WEIGHTS, MODULATION_WEIGHTS)
                for k, v in load_file(out / "adapter" / name).items()}

    trajectory = [adapter(n) for n in (1, 2, 3)]
    averaged = adapter(3, ema_decay=0.9)
    keys = sorted(averaged)
    expected = [torch.nn.Parameter(trajectory[0][k].clone()) for k in keys]
    ema = EMAModel(expected, decay=0.9)
    for weights in trajectory:
        ema.step([torch.nn.Parameter(weights[k]) for k in keys])
    ema.copy_to(expected)
    assert set(keys) == set(trajectory[-1]) and any("lora" in k for k in keys)
    for key, value in zip(keys, expected, strict=True):
        torch.testing.assert_close(averaged[key], value.data, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(averaged[k], trajectory[-1][k]) for k in keys)  # not simply the last step


def test_mirrored_candidates_are_scored_in_the_cases_orientation(tmp_path, data):
    from dosediffusion_training.training.loop import build_pipeline, training_cases
    from dosediffusion_training.training.scardnft import ScoredCases, candidate_rewards

    config = _config(tmp_path, data)
    pipeline = build_pipeline(config)
    dataset = ScoredCases(training_cases(config), config.preprocessing)
    dose = dataset[0]["dose"][None]  # (1, 1, D, H, W): the case's own dose, as a candidate
    straight = pipeline.codec.encode(dose).repeat(2, 1, 1, 1, 1)
    mirrored = pipeline.codec.encode(dose.flip(-1)).repeat(2, 1, 1, 1, 1)
    perfect = candidate_rewards(pipeline, dataset, [0], straight, config.train)
    np.testing.assert_allclose(candidate_rewards(pipeline, dataset, [0], mirrored, config.train, flipped=True), perfect,
                               atol=1e-9)
    assert (candidate_rewards(pipeline, dataset, [0], mirrored, config.train) < perfect - 0.05).all()
