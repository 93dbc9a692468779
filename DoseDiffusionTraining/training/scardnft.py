"""Stage C, ScardNFT: DiffusionNFT post-training with a clinical (scorecard) reward, on LoRA.

Each optimizer step covers ``gradient_accumulation_steps`` micro-batches of ``batch_size`` cases per
process (the dose is the target, every other modality a condition, as in stage B):

1. for every case of every micro-batch, K candidate latents x0ᵏ are sampled by the *old* policy
   (see :mod:`.lora`) with the deterministic Euler sampler (``candidate_steps`` steps) from K noises;
2. each is decoded, restored onto the case's CT grid with the case's ``ModelInputs``
   (:func:`~dosediffusion.conditioning.restore.restore`, exactly as a prediction is) and scored
   there: Rᵏ = standardised score − λ_h · hard-limit violation − λ_mae · MAE to the case's dose in
   the body (:mod:`.reward`: per-structure scores standardised over the K candidates, as the paper
   says). The case is re-read from disk when scored so that large data sets need not fit in memory;
3. the running reward scale (an EMA of the per-case standard deviation of R over all processes'
   cases of the step) is updated once per step, then rᵏ = optimality of Rᵏ against its case's mean;
4. the loss L = L_diffusion + λ · L_NFT + w_ref · L_ref over the ground-truth dose (forward-noised
   as in stage B) and the candidates (forward-noised x_s = (1 − s)·x0ᵏ + s·ε with their own noise
   and times). With ``candidate_micro_batch`` = 0 one forward covers the ground truth and all
   candidates of a micro-batch; with m > 0 the ground truth has its own forward and the candidates
   go through m at a time (sampled that way too), each forward followed by its backward, so the
   activations of at most max(batch_size, m) samples are alive at once. The gradients are the same
   either way (tested);
5. after the optimizer step the old policy moves toward the current one (EMA with DiffusionNFT's
   decay schedule, :func:`.lora.old_policy_decay`).

After the public DiffusionNFT code (NVlabs/DiffusionNFT), where the paper is silent:

- L_NFT is regressed in x0 space: with v⁺ = (1 − β) v_old + β v_θ and v⁻ = (1 + β) v_old − β v_θ,
  x̂0± = x_s − s·v±, e± = mean (x̂0± − x0ᵏ)² / detached mean |x̂0± − x0ᵏ| (floored at 1e-5; each
  its own adaptive weight), L_NFT = mean over candidates of (r·e⁺ + (1 − r)·e⁻) / β. Since
  x̂0 − x0 = −s (v − v*) with v* = ε − x0ᵏ, this is the velocity-space loss with a weight s per
  candidate (tested): low-noise candidates, whose velocity error matters least for the sample,
  weigh least.
- The old policy is a second LoRA adapter (plus an EMA copy of the modulation parameters) that
  samples the candidates and gives v_old.
- A small penalty ``reference_weight`` · mean (v_θ − v_ref)² on the candidates keeps the policy near
  the reference (stage B) model: adapters disabled and the starting modulation parameters.
- Candidates use the pipeline's noise-to-clean deterministic sampler; the times s of the NFT term
  are drawn like stage B's (uniform, shifted).

Everything random is a function of (seed, step) and a sample's position in the step's global batch
(:func:`.loop.sample_noise`, on three derived seeds), so micro-batches, processes and one big batch
draw the same numbers. With ``flip_lr_probability`` a step's cases are mirrored left-right as in stage B
(:func:`.loop.flips`); their candidates are mirrored back before they are restored and scored against
the case. The loop is :mod:`.stage_loop`'s, as every stage's: checkpoints (``checkpoint_every``) hold the
model with both adapters, the optimizer, the LR schedule, the EMA of the trained parameters
(``ema_decay``) and the :class:`~.lora.PolicyState` (old and reference modulation, the running scale),
so a resumed run continues exactly; the guards, ``max_minutes`` and TensorBoard work as in stage B. The
run writes ``OUT/adapter`` (LoRA + modulation, see :func:`.lora.save_adapter`) and ``OUT/pipeline`` (the
adapter merged into plain weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from dosediffusion.conditioning.prepare import ModelInputs, PrepareConfig, prepare
from dosediffusion.conditioning.restore import restore
from dosediffusion.errors import InputError
from dosediffusion.metrics.evaluation import masked_mae
from dosediffusion.metrics.scorecard import score_case
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.flow_matching import add_noise, flow_matching_loss, to_sample, to_velocity
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.sampling import euler_sample
from dosediffusion.prediction.scorecard import check_scorecard_option, choose_scorecard
from dosediffusion_training.data import sources
from dosediffusion_training.data.dataset import RAM_CACHE_GIB, PreparedCases, collate
from dosediffusion_training.training.config import RunConfig, TrainSettings
from dosediffusion_training.training.loop import (
    augment,
    batch_indices,
    build_pipeline,
    choose_roles,
    flips,
    micro_batch_positions,
    sample_noise,
    training_cases,
)
from dosediffusion_training.training.lora import (
    PolicyState,
    add_lora,
    ema_update,
    merge_lora,
    old_policy_decay,
    policy,
    save_adapter,
)
from dosediffusion_training.training.memory_plan import check_fits
from dosediffusion_training.training.reward import (
    hard_violation,
    optimality,
    reward,
    standardized_score,
    structure_scores,
    update_scale,
)
from dosediffusion_training.training.stage_loop import Piece, make_accelerator, make_trainee, run

#: Tags of the derived noise streams (the ground-truth term uses the run's seed itself, as stage B).
CANDIDATE_NOISE, NFT_NOISE = 1, 2


class ScoredCases(PreparedCases):
    """:class:`PreparedCases` that also keeps, of each case it prepared, what ``restore`` needs (its
    ``ModelInputs`` without the channels: the crop grid, the dose scale, the prior of a residual model);
    the :class:`Case` (structures, CT grid, reference dose) is re-read when it is scored."""

    def __init__(self, paths, config: PrepareConfig, cache_dir=None, ram_cache_gib: float = RAM_CACHE_GIB,
                 dose_rules=None):
        super().__init__(paths, config, cache_dir, ram_cache_gib, dose_rules)
        self._inputs: dict[int, ModelInputs] = {}

    def _prepare(self, index: int) -> dict[str, np.ndarray]:
        inputs = prepare(self.case(index), self.config)
        self._inputs[index] = replace(inputs, channels={})
        return inputs.channels

    def inputs(self, index: int) -> ModelInputs:
        if index not in self._inputs:
            self[index]
        return self._inputs[index]


def stream_seed(seed: int, tag: int) -> int:
    """A seed for the noise stream ``tag`` derived from the run's ``seed``."""
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


def candidate_positions(positions: list[int], k: int) -> list[int]:
    """Positions of the K candidates of the cases at ``positions`` in the step's candidate batch."""
    return [p * k + j for p in positions for j in range(k)]


def candidate_chunks(n: int, size: int) -> list[slice] | None:
    """Slices of ``n`` candidates ``size`` at a time; None for ``size`` 0 (all in one forward)."""
    return None if size == 0 else [slice(i, min(i + size, n)) for i in range(0, n, size)]


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_s: torch.Tensor, x0: torch.Tensor, s: torch.Tensor,
             r: torch.Tensor, beta: float, adaptive: bool = True) -> torch.Tensor:
    """DiffusionNFT's loss of N forward-noised candidates, per candidate, in x0 space.

    Args:
        v_theta: (N, ...) current policy's velocity (with gradients).
        v_old: (N, ...) old policy's velocity (gradients stopped here).
        x_s: (N, ...) the noised candidates; x0: (N, ...) the candidates; s: (N,) their times.
        r: (N,) optimality in [0, 1].
        beta: β of the implicit policies.
        adaptive: divide each candidate's squared error by its detached mean absolute error.
    Returns (N,): (r·e⁺ + (1 − r)·e⁻) / β with e± the mean squared error of x̂0± = x_s − s·v±.
    """
    v_old = v_old.detach().float()
    v_theta, x_s, x0 = v_theta.float(), x_s.float(), x0.float()
    dims = tuple(range(1, v_theta.ndim))

    def error(v: torch.Tensor) -> torch.Tensor:
        difference = to_sample(v, x_s, s.float()) - x0
        e = (difference**2).mean(dim=dims)
        if adaptive:
            e = e / difference.abs().mean(dim=dims).detach().clamp(min=1e-5)
        return e

    r = r.to(v_theta.device, torch.float32)
    positive = error((1 - beta) * v_old + beta * v_theta)
    negative = error((1 + beta) * v_old - beta * v_theta)
    return (r * positive + (1 - r) * negative) / beta


def _repeat(latents: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Each case's latents K times in a row: (B, ...) → (B·K, ...)."""
    return {m: x.repeat_interleave(k, dim=0) for m, x in latents.items()}


def _velocity(model: Any2AnyDiT, conditions: dict[str, torch.Tensor], target: str, x_s: torch.Tensor,
              s: torch.Tensor) -> torch.Tensor:
    """The velocity a model predicts for the noised target ``x_s`` at times ``s`` (N,)."""
    out = model({**conditions, target: x_s}, s * model.config.num_train_timesteps, [target]).sample[target]
    return to_velocity(out.float(), x_s.float(), s, model.config.prediction_type)


@dataclass
class Candidates:
    """The K candidates of a micro-batch's B cases (case-major), what they were drawn for, and their
    scores: ``conditions`` modality → (B, C, f, h, w), ``x0`` (B, ...) the ground truth, ``latents``
    (B·K, ...), ``rewards`` (B, K), ``positions`` the cases' positions in the step's global batch."""

    target: str
    conditions: dict[str, torch.Tensor]
    x0: torch.Tensor
    latents: torch.Tensor
    rewards: np.ndarray
    positions: list[int]


def draw_candidates(pipeline: DoseDiffusionPipeline, state: PolicyState, dataset: ScoredCases, indices: np.ndarray,
                    positions: list[int], step: int, settings: TrainSettings, accelerator: Accelerator) -> Candidates:
    """Encode the cases at ``positions`` of the step's global batch (``indices``: case per position),
    sample their candidates with the old policy (``candidate_micro_batch`` at a time) and score them."""
    local = [int(indices[p]) for p in positions]
    batch = augment(collate([dataset[i] for i in local]), step, settings)
    if settings.target not in batch:
        raise InputError(f"a training batch has no {settings.target!r} channel")
    target, condition_names = choose_roles(step, list(batch), settings)
    with torch.no_grad():
        latents = {m: pipeline.codec.encode(batch[m].to(accelerator.device)) for m in [*condition_names, target]}
    x0 = latents.pop(target)
    k = settings.num_candidates
    repeated = _repeat(latents, k)
    start, _ = sample_noise(step, candidate_positions(positions, k), stream_seed(settings.seed, CANDIDATE_NOISE),
                            x0.repeat_interleave(k, 0), float(pipeline.scheduler.config.shift))
    model = pipeline.model
    chunks = candidate_chunks(len(start), settings.candidate_micro_batch) or [slice(0, len(start))]
    parts = []
    for chunk in chunks:
        with policy(model, "old", state), accelerator.autocast():
            parts.append(euler_sample(model, {m: x[chunk] for m, x in repeated.items()}, target, start[chunk],
                                      pipeline.scheduler, settings.candidate_steps).to(x0.dtype))
    candidates = torch.cat(parts)
    return Candidates(target, latents, x0, candidates,
                      candidate_rewards(pipeline, dataset, local, candidates, settings, flips(step, settings)), positions)


def scardnft_pieces(model, unwrapped: Any2AnyDiT, state: PolicyState, settings: TrainSettings, target: str,
                    conditions: dict[str, torch.Tensor], x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor,
                    candidates: torch.Tensor, candidate_noise: torch.Tensor, candidate_s: torch.Tensor,
                    r: torch.Tensor, autocast: Callable[[], AbstractContextManager] = nullcontext,
                    chunks: list[slice] | None = None) -> Iterator[tuple[torch.Tensor, dict[str, float]]]:
    """L = L_diffusion + λ·L_NFT + w_ref·L_ref of one micro-batch, in pieces whose sum is L: one piece
    per forward with gradients. Call ``backward`` on each piece before taking the next, so that only
    one forward's activations are alive at a time.

    Args:
        model: the (possibly DDP-wrapped) model for the forwards with gradients; ``unwrapped`` the
            Any2AnyDiT itself (for the no-grad old and reference forwards, done first in each piece
            because switching policies writes into the modulation parameters).
        conditions: modality → clean latent (B, C, f, h, w); x0, noise (B, ...), s (B,): the
            ground-truth target, its noise and times; candidates, candidate_noise (B·K, ...),
            candidate_s (B·K,), r (B·K,): the candidates (case-major), their noise, times and
            optimality.
        autocast: makes the autocast context of each forward (``accelerator.autocast``).
        chunks: None: one forward of the ground truth and every candidate; else the ground truth alone,
            then one forward per slice of the candidates.
    Yields (piece, parts): the piece (a scalar with gradients) and its share of the loss's parts
    (``diffusion``, ``nft``, ``reference``) as floats.
    """
    n = candidates.shape[0]
    cond_k = _repeat(conditions, n // x0.shape[0])
    if chunks is None:
        yield _piece(model, unwrapped, state, settings, target, n, (conditions, x0, noise, s),
                     (cond_k, candidates, candidate_noise, candidate_s, r), autocast)
        return
    yield _piece(model, unwrapped, state, settings, target, n, (conditions, x0, noise, s), None, autocast)
    for chunk in chunks:
        yield _piece(model, unwrapped, state, settings, target, n, None,
                     ({m: c[chunk] for m, c in cond_k.items()}, candidates[chunk], candidate_noise[chunk],
                      candidate_s[chunk], r[chunk]), autocast)


def _piece(model, unwrapped: Any2AnyDiT, state: PolicyState, settings: TrainSettings, target: str, n: int,
           truth: tuple | None, chunk: tuple | None, autocast) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward with gradients over the ground truth (``truth``: conditions, x0, noise, s) and/or a
    slice of the candidates (``chunk``: conditions, candidates, noise, times, r); the candidates'
    terms count as their share of the ``n`` candidates' means."""
    names = list((truth or chunk)[0])
    latents: dict[str, list[torch.Tensor]] = {m: [] for m in [*names, target]}
    times = []
    if truth is not None:
        conditions, x0, noise, s = truth
        for m in names:
            latents[m].append(conditions[m])
        latents[target].append(add_noise(x0, noise, s))
        times.append(s)
    if chunk is not None:
        cond_c, x0_c, noise_c, s_c, r_c = chunk
        x_c = add_noise(x0_c, noise_c, s_c)
        with torch.no_grad():
            with policy(unwrapped, "old", state), autocast():
                v_old = _velocity(unwrapped, cond_c, target, x_c, s_c)
            v_ref = None
            if settings.reference_weight > 0:
                with policy(unwrapped, "reference", state), autocast():
                    v_ref = _velocity(unwrapped, cond_c, target, x_c, s_c)
        for m in names:
            latents[m].append(cond_c[m])
        latents[target].append(x_c)
        times.append(s_c)
    joined = {m: torch.cat(parts) for m, parts in latents.items()}
    t = torch.cat(times)
    with autocast():
        prediction = model(joined, t * unwrapped.config.num_train_timesteps, [target], return_dict=False)[0][target]
    zero = torch.zeros((), device=t.device)
    diffusion, nft, reference = zero, zero, zero
    b = 0
    if truth is not None:
        b = truth[1].shape[0]
        diffusion = flow_matching_loss(prediction[:b], truth[1], truth[2], unwrapped.config.prediction_type)
    if chunk is not None:
        v_theta = to_velocity(prediction[b:].float(), x_c.float(), s_c, unwrapped.config.prediction_type)
        nft = nft_loss(v_theta, v_old, x_c, x0_c, s_c, r_c, settings.nft_beta).sum() / n
        if v_ref is not None:
            reference = ((v_theta - v_ref) ** 2).flatten(1).mean(dim=1).sum() / n
    piece = diffusion + settings.nft_weight * nft + settings.reference_weight * reference
    return piece, {"diffusion": diffusion.item(), "nft": nft.item(), "reference": reference.item()}


def candidate_rewards(pipeline: DoseDiffusionPipeline, dataset: ScoredCases, indices, candidates: torch.Tensor,
                      settings: TrainSettings, flipped: bool = False) -> np.ndarray:
    """Rewards (B, K) of the candidate latents (B·K, ...) of the cases ``indices`` (B), drawn for the cases
    mirrored left-right when ``flipped`` (so mirrored back before they are restored). Each case is scored
    with the scorecard ``settings.scorecard`` chooses for it, as a prediction would be
    (:func:`~dosediffusion.prediction.scorecard.choose_scorecard`), its structures' scores standardised
    over its K candidates; where no scorecard fits, the reward is −λ_mae · MAE alone."""
    volumes = pipeline.codec.decode(candidates).float().cpu().numpy()[:, 0]
    if flipped:
        volumes = volumes[..., ::-1]
    k = len(volumes) // len(indices)
    rewards = np.zeros((len(indices), k))
    for b, index in enumerate(indices):
        case, inputs = dataset.case(int(index)), dataset.inputs(int(index))
        template = choose_scorecard(settings.scorecard, case).template
        body = case.body.mask if case.body is not None else np.ones(case.grid.shape, bool)
        doses = [restore(volumes[b * k + j], case, inputs) for j in range(k)]
        scores, violations = np.zeros(k), np.zeros(k)
        if template is not None:
            reports = [score_case(case, template, dose) for dose in doses]
            _, per_structure, importance = structure_scores(reports)
            scores = standardized_score(per_structure, importance)
            violations = np.array([hard_violation(report, template) for report in reports])
        for j, dose in enumerate(doses):
            rewards[b, j] = reward(scores[j], violations[j], masked_mae(dose, case.dose, body), settings.lambda_hinge,
                                   settings.lambda_mae)
    return rewards


class ScardNFTStage:
    """Stage C as a :class:`~.stage_loop.Stage`: each step draws and scores every micro-batch's candidates
    (no gradients), moves the running reward scale once, then yields the micro-batches' losses in
    :func:`scardnft_pieces`; after the optimizer step the old policy follows the current one."""

    label, shown = "ScardNFT", ("loss", "reward_mean")

    def __init__(self, pipeline: DoseDiffusionPipeline, model, state: PolicyState, dataset: ScoredCases,
                 settings: TrainSettings, accelerator: Accelerator):
        self.pipeline, self.model, self.state, self.dataset = pipeline, model, state, dataset
        self.settings, self.accelerator = settings, accelerator
        self.unwrapped: Any2AnyDiT = pipeline.model
        self._reward_mean = 0.0

    def pieces(self, step: int) -> Iterator[Piece]:
        settings, accelerator, state = self.settings, self.accelerator, self.state
        world, rank = accelerator.num_processes, accelerator.process_index
        micro, size, k = settings.gradient_accumulation_steps, settings.batch_size, settings.num_candidates
        shift = float(self.pipeline.scheduler.config.shift)
        indices = batch_indices(step, len(self.dataset), size * world * micro, settings.seed)
        drawn = [draw_candidates(self.pipeline, state, self.dataset, indices, micro_batch_positions(m, world, rank, size),
                                 step, settings, accelerator) for m in range(micro)]
        every = accelerator.gather(torch.from_numpy(np.concatenate([d.rewards for d in drawn])).to(accelerator.device))
        every = every.cpu().numpy()
        state.reward_scale = update_scale(state.reward_scale, every, settings.reward_scale_decay)
        self._reward_mean = float(every.mean())
        for m, d in enumerate(drawn):
            r = torch.from_numpy(optimality(d.rewards, state.reward_scale).reshape(-1)).float().to(accelerator.device)
            noise, s = sample_noise(step, d.positions, settings.seed, d.x0, shift)
            c_noise, c_s = sample_noise(step, candidate_positions(d.positions, k), stream_seed(settings.seed, NFT_NOISE),
                                        d.latents, shift)
            chunks = candidate_chunks(len(d.latents), settings.candidate_micro_batch)
            count = 1 if chunks is None else 1 + len(chunks)
            for i, (piece, parts) in enumerate(scardnft_pieces(self.model, self.unwrapped, state, settings, d.target,
                                                               d.conditions, d.x0, noise, s, d.latents, c_noise, c_s, r,
                                                               accelerator.autocast, chunks)):
                shares = {"loss": piece.item() / micro, **{name: value / micro for name, value in parts.items()}}
                yield Piece(piece / micro, shares, m == micro - 1 and i == count - 1)

    def after_step(self, step: int) -> dict[str, float]:
        s = self.settings
        ema_update(self.unwrapped, self.state, old_policy_decay(step, s.old_policy_decay_flat, s.old_policy_decay_rate,
                                                               s.old_policy_decay_max))
        return {"reward_mean": self._reward_mean, "reward_scale": self.state.reward_scale}


def train_scardnft(config: RunConfig, out: str | Path, resume: bool = True) -> Path:
    """Stage C as ``config`` says into ``out``; returns the merged pipeline folder."""
    out = Path(out)
    settings = config.train
    if settings.stage != "C":
        raise InputError(f"train_scardnft runs stage C, the configuration says stage {settings.stage!r}")
    check_scorecard_option(settings.scorecard)
    paths = training_cases(config)  # bad data sources before anything is written or built
    if torch.cuda.is_available():
        check_fits(config, torch.cuda.get_device_properties(0).total_memory / 2**30)
    accelerator = make_accelerator(settings, out)
    torch.manual_seed(settings.seed)
    pipeline = build_pipeline(config)
    if not isinstance(pipeline, DoseDiffusionPipeline):
        raise InputError("stage C post-trains the diffusion model; the configuration builds another kind")
    dataset = ScoredCases(paths, config.preprocessing, config.data.get("cache_dir"),
                          config.data.get("ram_cache_gib", RAM_CACHE_GIB), sources.dose_rules(config.data))
    unwrapped = pipeline.model
    if settings.gradient_checkpointing:
        unwrapped.enable_gradient_checkpointing()
    add_lora(unwrapped, settings.lora_rank)
    state = PolicyState(unwrapped)
    unwrapped.train()
    trainee = make_trainee(accelerator, unwrapped, [p for p in unwrapped.parameters() if p.requires_grad], settings)
    _to_device(state, accelerator.device)
    accelerator.register_for_checkpointing(state)
    pipeline.codec.to(accelerator.device)
    run(ScardNFTStage(pipeline, trainee.model, state, dataset, settings, accelerator), accelerator, trainee, settings,
        out, resume)
    folder = out / "pipeline"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(trainee.model)
        save_adapter(unwrapped, out / "adapter")
        pipeline.model = merge_lora(unwrapped).eval()
        pipeline.save_pretrained(folder)
    return folder


def _to_device(state: PolicyState, device: torch.device) -> None:
    for copies in (state.old_modulation, state.reference_modulation):
        for name, value in copies.items():
            copies[name] = value.to(device)
