"""Stage C, ScardNFT: DiffusionNFT post-training with a clinical (scorecard) reward, on LoRA.

Each step, for every case of the batch (the dose is the target, every other modality a condition,
as in stage B):

1. K candidate latents x0ᵏ are sampled by the *old* policy (see :mod:`.lora`) with the deterministic
   Euler sampler (``candidate_steps`` steps) from K noises;
2. each is decoded, restored onto the case's CT grid with the case's ``ModelInputs``
   (:func:`~dosediffusion.conditioning.prepare.restore`, exactly as a prediction is) and scored
   there: Rᵏ = scorecard total − λ_h · hard-limit violation − λ_mae · MAE to the case's dose in the
   body (:mod:`.reward`). Scoring on the CT grid reuses the case's own structures, so no cropped
   case needs to be built; the case is re-read from disk when scored (only its ``ModelInputs`` are
   cached next to the channels) so that large data sets do not have to fit in memory;
3. rᵏ = optimality of Rᵏ against the case's mean, divided by the running scale (an EMA of the
   per-case standard deviation of R over all processes' cases, updated with this batch first);
4. the loss L = L_diffusion + λ · L_NFT + w_ref · L_ref on one forward of the current policy over
   the ground-truth dose (B, forward-noised as in stage B) and the candidates (B·K, forward-noised
   x_s = (1 − s)·x0ᵏ + s·ε with their own noise and times);
5. after the optimizer step the old policy moves toward the current one (EMA, ``old_policy_decay``).

Choices where the paper is silent (after the public DiffusionNFT code, NVlabs/DiffusionNFT):

- L_NFT is regressed in velocity space as DESIGN.md writes it: v⁺ = (1 − β) v_old + β v_θ,
  v⁻ = (1 + β) v_old − β v_θ, L_NFT = mean over candidates of r·e⁺ + (1 − r)·e⁻ with e± the
  per-candidate mean of (v± − v*)², v* = ε − x0ᵏ. Each e± is divided by its detached per-candidate
  mean |v± − v*| (floored at 1e-5), DiffusionNFT's adaptive weight. The public code regresses
  x0 = x_s − s·v instead, whose error is s times the velocity error, so with the adaptive weight
  the two differ by a factor s per candidate; it also divides by β, which ``nft_weight`` absorbs.
- The old policy is a second LoRA adapter (plus an EMA copy of the modulation parameters), an EMA
  of the current one with a constant ``old_policy_decay`` (the public code ramps its decay from 0); it
  samples the candidates and gives v_old.
- A small penalty ``reference_weight`` · mean (v_θ − v_ref)² on the candidates keeps the policy near
  the reference (stage B) model: adapters disabled and the starting modulation parameters.
- Candidates use the pipeline's noise-to-clean deterministic sampler; the times s of the NFT term
  are drawn like stage B's (uniform, shifted).

Everything random is a function of (seed, step, process): the batch, the candidates' starting
noise, the forward noise and times of both terms (:func:`.loop._noise` on three derived seeds).
Checkpoints (``checkpoint_every``) hold the model with both adapters, the optimizer, the LR
schedule and the :class:`~.lora.PolicyState` (old and reference modulation, the running scale),
so a resumed run continues exactly. The run writes ``OUT/adapter`` (LoRA + modulation, see
:func:`.lora.save_adapter`) and ``OUT/pipeline`` (the adapter merged into plain weights).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm import tqdm

from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import ModelInputs, prepare
from dosediffusion.conditioning.restore import restore
from dosediffusion.errors import InputError
from dosediffusion.metrics.scorecard import score_case
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.flow_matching import add_noise, flow_matching_loss, to_velocity
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.sampling import euler_sample
from dosediffusion.prediction.scorecard import check_scorecard_option, choose_scorecard
from dosediffusion_training.data.dataset import PreparedCases, collate, list_cases, load_any
from dosediffusion_training.training.config import RunConfig, TrainSettings
from dosediffusion_training.training.loop import (
    STATE,
    _checkpoint,
    _latest_checkpoint,
    _noise,
    batch_indices,
    build_pipeline,
    choose_roles,
)
from dosediffusion_training.training.lora import PolicyState, add_lora, ema_update, merge_lora, policy, save_adapter
from dosediffusion_training.training.memory_plan import check_fits
from dosediffusion_training.training.reward import hard_violation, masked_mae, optimality, reward, update_scale

#: Tags of the derived noise streams (the ground-truth term uses the run's seed itself, as stage B).
CANDIDATE_NOISE, NFT_NOISE = 1, 2


class ScoredCases(PreparedCases):
    """:class:`PreparedCases` that also keeps each case's ``ModelInputs`` (what ``restore`` needs)
    and re-reads the :class:`Case` (structures, CT grid, reference dose) on demand."""

    def __init__(self, paths, config):
        super().__init__(paths, config)
        self._inputs: dict[int, ModelInputs] = {}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._cache:
            inputs = prepare(self.case(index), self.config)
            self._inputs[index], self._cache[index] = inputs, inputs.channels
        return super().__getitem__(index)

    def case(self, index: int) -> Case:
        case = load_any(self.paths[index])
        if case.dose is None:
            raise InputError("training case without a dose", self.paths[index])
        return case

    def inputs(self, index: int) -> ModelInputs:
        self[index]
        return self._inputs[index]


def stream_seed(seed: int, tag: int) -> int:
    """A seed for the noise stream ``tag`` derived from the run's ``seed``."""
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, v_target: torch.Tensor, r: torch.Tensor, beta: float,
             adaptive: bool = True) -> torch.Tensor:
    """DiffusionNFT's loss on N forward-noised candidates.

    Args:
        v_theta: (N, ...) current policy's velocity (with gradients).
        v_old: (N, ...) old policy's velocity (gradients stopped here).
        v_target: (N, ...) v* = ε − x0ᵏ.
        r: (N,) optimality in [0, 1].
        beta: β of the implicit policies.
        adaptive: divide each candidate's squared error by its detached mean absolute error.
    Returns the scalar mean over candidates of r·e⁺ + (1 − r)·e⁻.
    """
    v_old = v_old.detach().float()
    v_theta, v_target = v_theta.float(), v_target.float()
    positive = (1 - beta) * v_old + beta * v_theta
    negative = (1 + beta) * v_old - beta * v_theta
    dims = tuple(range(1, v_theta.ndim))

    def error(v: torch.Tensor) -> torch.Tensor:
        e = ((v - v_target) ** 2).mean(dim=dims)
        if adaptive:
            e = e / (v - v_target).abs().mean(dim=dims).detach().clamp(min=1e-5)
        return e

    r = r.to(v_theta.device, torch.float32)
    return (r * error(positive) + (1 - r) * error(negative)).mean()


def _repeat(latents: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Each case's latents K times in a row: (B, ...) → (B·K, ...)."""
    return {m: x.repeat_interleave(k, dim=0) for m, x in latents.items()}


def _velocity(model: Any2AnyDiT, conditions: dict[str, torch.Tensor], target: str, x_s: torch.Tensor,
              s: torch.Tensor) -> torch.Tensor:
    """The velocity a model predicts for the noised target ``x_s`` at times ``s`` (N,)."""
    out = model({**conditions, target: x_s}, s * model.config.num_train_timesteps, [target]).sample[target]
    return to_velocity(out.float(), x_s.float(), s, model.config.prediction_type)


def scardnft_loss(model, unwrapped: Any2AnyDiT, state: PolicyState, settings: TrainSettings, target: str,
                  conditions: dict[str, torch.Tensor], x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor,
                  candidates: torch.Tensor, candidate_noise: torch.Tensor, candidate_s: torch.Tensor,
                  r: torch.Tensor, autocast: Callable[[], AbstractContextManager] = nullcontext,
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_diffusion + λ·L_NFT + w_ref·L_ref for one batch.

    Args:
        model: the (possibly DDP-wrapped) model for the forward with gradients; ``unwrapped`` the
            Any2AnyDiT itself (for the no-grad old and reference forwards, done first because
            switching policies writes into the modulation parameters).
        conditions: modality → clean latent (B, C, f, h, w); x0, noise (B, ...), s (B,): the
            ground-truth target, its noise and times; candidates, candidate_noise (B·K, ...),
            candidate_s (B·K,), r (B·K,): the candidates (case-major), their noise, times and
            optimality.
        autocast: makes the autocast context of each forward (``accelerator.autocast``).
    Returns the loss and its parts as floats.
    """
    k = candidates.shape[0] // x0.shape[0]
    cond_k = _repeat(conditions, k)
    x_c = add_noise(candidates, candidate_noise, candidate_s)
    v_target = candidate_noise - candidates
    with torch.no_grad():
        with policy(unwrapped, "old", state), autocast():
            v_old = _velocity(unwrapped, cond_k, target, x_c, candidate_s)
        v_ref = None
        if settings.reference_weight > 0:
            with policy(unwrapped, "reference", state), autocast():
                v_ref = _velocity(unwrapped, cond_k, target, x_c, candidate_s)
    latents = {m: torch.cat([conditions[m], cond_k[m]]) for m in conditions}
    latents[target] = torch.cat([add_noise(x0, noise, s), x_c])
    times = torch.cat([s, candidate_s])
    with autocast():
        prediction = model(latents, times * unwrapped.config.num_train_timesteps, [target], return_dict=False)[0][target]
    b = x0.shape[0]
    diffusion = flow_matching_loss(prediction[:b], x0, noise, unwrapped.config.prediction_type)
    v_theta = to_velocity(prediction[b:].float(), x_c.float(), candidate_s, unwrapped.config.prediction_type)
    nft = nft_loss(v_theta, v_old, v_target, r, settings.nft_beta)
    reference = torch.mean((v_theta - v_ref) ** 2) if v_ref is not None else torch.zeros((), device=x0.device)
    loss = diffusion + settings.nft_weight * nft + settings.reference_weight * reference
    return loss, {"diffusion": diffusion.item(), "nft": nft.item(), "reference": reference.item()}


def candidate_rewards(pipeline: DoseDiffusionPipeline, dataset: ScoredCases, indices, candidates: torch.Tensor,
                      settings: TrainSettings) -> np.ndarray:
    """Rewards (B, K) of the candidate latents (B·K, ...) of the cases ``indices`` (B). Each case is scored
    with the scorecard ``settings.scorecard`` chooses for it, as a prediction would be
    (:func:`~dosediffusion.prediction.scorecard.choose_scorecard`); where none fits, the reward is
    −λ_mae · MAE alone."""
    volumes = pipeline.codec.decode(candidates).float().cpu().numpy()[:, 0]
    k = len(volumes) // len(indices)
    rewards = np.zeros((len(indices), k))
    for b, index in enumerate(indices):
        case, inputs = dataset.case(int(index)), dataset.inputs(int(index))
        template = choose_scorecard(settings.scorecard, case).template
        body = case.body.mask if case.body is not None else None
        for j in range(k):
            dose = restore(volumes[b * k + j], case, inputs)
            total, violation = 0.0, 0.0
            if template is not None:
                report = score_case(case, template, dose)
                total, violation = report.total, hard_violation(report, template)
            rewards[b, j] = reward(total, violation, masked_mae(dose, case.dose, body), settings.lambda_hinge,
                                   settings.lambda_mae)
    return rewards


def train_scardnft(config: RunConfig, out: str | Path, resume: bool = True) -> Path:
    """Stage C as ``config`` says into ``out``; returns the merged pipeline folder."""
    out = Path(out)
    settings = config.train
    if settings.stage != "C":
        raise InputError(f"train_scardnft runs stage C, the configuration says stage {settings.stage!r}")
    check_scorecard_option(settings.scorecard)
    if torch.cuda.is_available():
        check_fits(config, torch.cuda.get_device_properties(0).total_memory / 2**30)
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[unused])
    torch.manual_seed(settings.seed)
    pipeline = build_pipeline(config)
    if not isinstance(pipeline, DoseDiffusionPipeline):
        raise InputError("stage C post-trains the diffusion model; the configuration builds another kind")
    split = config.data.get("split_file")
    dataset = ScoredCases(list_cases(config.data["folder"], split, "train" if split else None), config.preprocessing)
    if len(dataset) == 0:
        raise InputError("no training cases", config.data["folder"])
    unwrapped = pipeline.model
    if settings.gradient_checkpointing:
        unwrapped.enable_gradient_checkpointing()
    add_lora(unwrapped, settings.lora_rank)
    state = PolicyState(unwrapped)
    trainable = [p for p in unwrapped.parameters() if p.requires_grad]
    unwrapped.train()
    optimizer = torch.optim.Adam(trainable, lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / max(settings.warmup_steps, 1)))
    model, optimizer, schedule = accelerator.prepare(unwrapped, optimizer, schedule)
    accelerator.register_for_checkpointing(state)
    pipeline.codec.to(accelerator.device)

    step = 0
    checkpoint = _latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / STATE).read_text())["step"]
    _to_device(state, accelerator.device)
    world, rank = accelerator.num_processes, accelerator.process_index
    shift = float(pipeline.scheduler.config.shift)
    k = settings.num_candidates
    log = []
    bar = tqdm(total=settings.steps, initial=step, desc="ScardNFT", unit="step", disable=not accelerator.is_main_process)
    while step < settings.steps:
        indices = batch_indices(step, len(dataset), settings.batch_size * world, settings.seed)
        local = indices[rank * settings.batch_size : (rank + 1) * settings.batch_size]
        batch = collate([dataset[int(i)] for i in local])
        if settings.target not in batch:
            raise InputError(f"a training batch has no {settings.target!r} channel")
        target, condition_names = choose_roles(step, list(batch), settings)
        with torch.no_grad():
            latents = {m: pipeline.codec.encode(batch[m].to(accelerator.device)) for m in [*condition_names, target]}
        x0 = latents.pop(target)
        start, _ = _noise(step, rank, stream_seed(settings.seed, CANDIDATE_NOISE), x0.repeat_interleave(k, 0), shift)
        with policy(unwrapped, "old", state), accelerator.autocast():
            candidates = euler_sample(unwrapped, _repeat(latents, k), target, start, pipeline.scheduler,
                                      settings.candidate_steps).to(x0.dtype)
        rewards = candidate_rewards(pipeline, dataset, local, candidates, settings)
        every = accelerator.gather(torch.from_numpy(rewards).to(accelerator.device)).cpu().numpy()
        state.reward_scale = update_scale(state.reward_scale, every, settings.reward_scale_decay)
        r = torch.from_numpy(optimality(rewards, state.reward_scale).reshape(-1)).float().to(accelerator.device)
        noise, s = _noise(step, rank, settings.seed, x0, shift)
        candidate_noise, candidate_s = _noise(step, rank, stream_seed(settings.seed, NFT_NOISE), candidates, shift)
        loss, parts = scardnft_loss(model, unwrapped, state, settings, target, latents, x0, noise, s, candidates,
                                    candidate_noise, candidate_s, r, accelerator.autocast)
        if not math.isfinite(loss.item()):
            raise InputError(f"the loss became {loss.item()} at step {step}: lower the learning rate")
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainable, settings.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        ema_update(unwrapped, state, settings.old_policy_decay)
        step += 1
        log.append({"step": step, "loss": loss.item(), **parts, "reward_mean": float(every.mean()),
                    "reward_scale": state.reward_scale, "lr": schedule.get_last_lr()[0]})
        bar.update(1)
        if step % settings.log_every == 0:
            recent = log[-settings.log_every:]
            bar.set_postfix(loss=f"{np.mean([x['loss'] for x in recent]):.4f}",
                            reward=f"{np.mean([x['reward_mean'] for x in recent]):.3f}")
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _checkpoint(accelerator, out, step, log)
    bar.close()
    accelerator.wait_for_everyone()
    folder = out / "pipeline"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_adapter(unwrapped, out / "adapter")
        pipeline.model = merge_lora(unwrapped).eval()
        pipeline.save_pretrained(folder)
    return folder


def _to_device(state: PolicyState, device: torch.device) -> None:
    for copies in (state.old_modulation, state.reference_modulation):
        for name, value in copies.items():
            copies[name] = value.to(device)
