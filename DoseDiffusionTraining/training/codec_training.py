"""A learned codec for our modalities: a small ``AutoencoderKLWan`` trained on the training cases, then
frozen (the paper's recipe at demo size: the DiT works in the latent space of a VAE whose
convolutional decoder draws the detail a token's linear head cannot).

``dosediffusion-train fit-codec --config CODEC.yaml --out DIR`` trains one VAE for every modality
(1 input and output channel; the volume's depth as the VAE's frames). A codec configuration has
``data`` and ``preprocessing`` as a run configuration (:mod:`.config`), ``vae`` (``AutoencoderKLWan``
settings: ``base_dim``, ``z_dim``, ``dim_mult``, ``num_res_blocks``, ``temperal_downsample``,
``scale_factor_temporal``, ``scale_factor_spatial``) and ``train`` (:class:`CodecTrainSettings`).

Each step draws ``batch_size`` (case, modality) pairs (the dose at least ``dose_share`` of the time: the
modality a model predicts, whose error inside the PTVs matters most) and a random sub-volume of ``patch_shape`` of
each (the VAE is convolutional, so it learns on patches and encodes the whole crop later), and
minimises L1(decoded before the VAE's clamp, volume) + ``kl_weight`` · KL(posterior ‖ N(0, 1)) on a sample of the posterior.
Everything random is a function of (seed, step). The loop is :mod:`.stage_loop`'s, as every stage's
(checkpoints under ``DIR/checkpoints`` that a second run into ``DIR`` resumes from, the guards,
``max_minutes``, ``ema_decay``, TensorBoard), on one process. Afterwards the per-channel mean and standard
deviation of the posterior modes over every training case's modalities (whole crops) go into the
VAE's ``latents_mean`` / ``latents_std``, so :class:`~dosediffusion.model.codecs.WanVAECodec` hands the
DiT latents of mean 0 and deviation 1. Written: ``DIR/vae`` (a diffusers folder; a run uses it as
``codec: {type: wan_vae, path: DIR/vae}`` and saves it into its pipeline folder), ``DIR/loss.jsonl``
and ``DIR/reconstruction.json``: the mean absolute reconstruction error per modality on the held-out
cases (``data.held_out``, or ``val`` and ``test`` of the split file; the training cases without either), in channel units
(the [−1, 1] range) and, for the dose, in Gy over the crop and inside the PTVs (``dose_ptv_gy``: the
floor under any model's PTV error in this latent space). It trains on the GPU when there is one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKLWan

from dosediffusion.conditioning.prepare import PrepareConfig, prepare
from dosediffusion.errors import InputError
from dosediffusion.io.atomic import atomic_folder
from dosediffusion.model.codecs import WAN_CHUNK, WanVAECodec
from dosediffusion_training.data.dataset import RAM_CACHE_GIB, PreparedCases, load_any
from dosediffusion_training.data.sources import dose_rules, run_cases
from dosediffusion_training.training.config import LoopSettings, check_data, read_mapping
from dosediffusion_training.training.stage_loop import Piece, latest_checkpoint, make_accelerator, make_trainee, run

#: ``AutoencoderKLWan`` settings a codec configuration may give (channels are fixed at 1).
VAE_KEYS = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "scale_factor_temporal",
            "scale_factor_spatial")


@dataclass
class CodecTrainSettings(LoopSettings):
    steps: int = 2000
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    grad_clip: float = 1.0
    log_every: int = 50
    batch_size: int = 4
    kl_weight: float = 1e-6  # weight of the KL term against the L1 reconstruction (channel units)
    patch_shape: tuple[int, int, int] = (9, 32, 32)  # (z, y, x) voxels of each training sub-volume
    dose_share: float = 0.0  # > 0: this fraction of the patches is the dose (the rest: any modality)


@dataclass
class CodecConfig:
    data: dict
    preprocessing: PrepareConfig
    vae: dict
    train: CodecTrainSettings

    @classmethod
    def from_yaml(cls, path: str | Path) -> CodecConfig:
        raw = read_mapping(path, "codec configuration")
        if set(raw) != {"data", "preprocessing", "vae", "train"}:
            raise InputError("a codec configuration has the sections data, preprocessing, vae and train", path)
        check_data(raw["data"], path)
        unknown = set(raw["vae"] or {}) - set(VAE_KEYS)
        known_train = {f.name for f in fields(CodecTrainSettings)}
        unknown_train = set(raw["train"] or {}) - known_train
        if unknown or unknown_train:
            raise InputError(f"vae keys are {list(VAE_KEYS)}, train keys {sorted(known_train)}; "
                             f"unknown: {sorted(unknown | unknown_train)}", path)
        train = CodecTrainSettings(**(raw["train"] or {}))
        train.patch_shape = tuple(int(n) for n in train.patch_shape)
        train.check(path)
        config = cls(raw["data"], PrepareConfig.from_dict(raw["preprocessing"]), dict(raw["vae"] or {}), train)
        check_patch(config)
        return config


def new_vae(settings: dict) -> AutoencoderKLWan:
    """A randomly initialised 1-channel ``AutoencoderKLWan`` with ``settings`` (see :data:`VAE_KEYS`)."""
    z = int(settings.get("z_dim", 16))
    return AutoencoderKLWan(**settings, in_channels=1, out_channels=1, latents_mean=[0.0] * z, latents_std=[1.0] * z)


def check_patch(config: CodecConfig) -> None:
    """Raise unless the training patch and the crop fit the VAE (depth 1 + 4k, sides multiples of its
    spatial factor) and the patch fits inside the crop."""
    spatial = int(config.vae.get("scale_factor_spatial", 8))
    for name, (d, h, w) in (("train.patch_shape", config.train.patch_shape),
                            ("preprocessing.crop_shape", config.preprocessing.crop_shape)):
        if (d - 1) % WAN_CHUNK or h % spatial or w % spatial:
            raise InputError(f"{name} {(d, h, w)} does not fit the VAE: depth 1 + {WAN_CHUNK}k, height and width "
                             f"multiples of {spatial}")
    if any(p > c for p, c in zip(config.train.patch_shape, config.preprocessing.crop_shape, strict=True)):
        raise InputError(f"train.patch_shape {config.train.patch_shape} is larger than the crop "
                         f"{tuple(config.preprocessing.crop_shape)}")


def training_patches(dataset: PreparedCases, step: int, settings: CodecTrainSettings) -> torch.Tensor:
    """(B, 1, d, h, w): ``batch_size`` random sub-volumes of random modalities of random cases."""
    rng = np.random.default_rng([settings.seed, step])
    patches = []
    for _ in range(settings.batch_size):
        channels = dataset[int(rng.integers(len(dataset)))]
        modality = sorted(channels)[int(rng.integers(len(channels)))]
        if settings.dose_share and "dose" in channels and rng.random() < settings.dose_share:
            modality = "dose"
        volume = channels[modality]  # (1, D, H, W)
        start = [int(rng.integers(n - p + 1)) for n, p in zip(volume.shape[1:], settings.patch_shape, strict=True)]
        patches.append(volume[:, start[0]:start[0] + settings.patch_shape[0], start[1]:start[1] + settings.patch_shape[1],
                              start[2]:start[2] + settings.patch_shape[2]])
    return torch.stack(patches)


def unclamped_decode(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """The decoded volumes (B, 1, D, H, W) before ``AutoencoderKLWan.decode`` clamps them to [−1, 1]
    (it runs the decoder once per latent frame and concatenates the frames). Trained on the clamped
    output, the VAE stalls: wherever the decoder overshoots, the loss has no gradient (measured on the
    demo codec: L1 0.53 → 0.49 in 400 steps clamped, 0.65 → 0.26 in 150 unclamped)."""
    frames = []
    handle = vae.decoder.register_forward_hook(lambda module, args, out: frames.append(out))
    try:
        vae.decode(latents)
    finally:
        handle.remove()
    return torch.cat(frames, dim=2)


def codec_loss(vae: AutoencoderKLWan, volumes: torch.Tensor, kl_weight: float,
               generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """L1 reconstruction (channel units, on the unclamped decoder output) + ``kl_weight`` · KL of a
    posterior sample; and the reconstruction's L1 as decoding gives it (clamped to [−1, 1])."""
    posterior = vae.encode(volumes).latent_dist
    decoded = unclamped_decode(vae, posterior.sample(generator))
    loss = (decoded - volumes).abs().mean() + kl_weight * posterior.kl().mean()
    return loss, (decoded.detach().clamp(-1.0, 1.0) - volumes).abs().mean().item()


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, dataset: PreparedCases) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the posterior modes of every case's modalities."""
    total = total_sq = None
    count = 0
    for i in range(len(dataset)):
        for volume in dataset[i].values():
            z = vae.encode(volume[None].to(vae.device)).latent_dist.mode().double()  # (1, z, f, h, w)
            flat = z.transpose(0, 1).reshape(z.shape[1], -1)
            total = flat.sum(1) if total is None else total + flat.sum(1)
            total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
            count += flat.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=1e-12).sqrt()
    return mean.tolist(), std.tolist()


@torch.no_grad()
def reconstruction_mae(codec: WanVAECodec, paths: list[Path], preprocessing: PrepareConfig) -> dict[str, float]:
    """Mean absolute error of decode(encode(channel)) per modality over the cases at ``paths`` (channel
    units), and ``dose_gy``: the dose's in Gy."""
    errors: dict[str, list[float]] = {}
    for path in paths:
        inputs = prepare(load_any(path), preprocessing)
        for modality, channel in inputs.channels.items():
            volume = torch.from_numpy(channel)[None, None].to(codec.vae.device)
            difference = (codec.decode(codec.encode(volume)) - volume).abs()
            errors.setdefault(modality, []).append(float(difference.mean()))
            if modality == "dose":
                errors.setdefault("dose_gy", []).append(errors["dose"][-1] * inputs.dose_reference_gy / 2.0)
                if "ptv" in inputs.channels:
                    ptv = torch.from_numpy(inputs.channels["ptv"] > -1.0).to(difference.device)
                    errors.setdefault("dose_ptv_gy", []).append(
                        float(difference[0, 0][ptv].mean()) * inputs.dose_reference_gy / 2.0)
    return {k: round(float(np.mean(v)), 5) for k, v in errors.items()}


class CodecStage:
    """The codec's training as a :class:`~.stage_loop.Stage`: one piece per step, :func:`codec_loss` of
    :func:`training_patches` (logged: ``loss`` and the decoded ``l1``)."""

    label, shown = "codec", ("l1",)

    def __init__(self, vae: AutoencoderKLWan, dataset: PreparedCases, settings: CodecTrainSettings,
                 accelerator: Accelerator):
        self.vae, self.dataset, self.settings, self.accelerator = vae, dataset, settings, accelerator

    def pieces(self, step: int) -> Iterator[Piece]:
        seed = int(np.random.SeedSequence([self.settings.seed, step]).generate_state(1)[0])
        patches = training_patches(self.dataset, step, self.settings).to(self.accelerator.device)
        with self.accelerator.autocast():
            loss, l1 = codec_loss(self.vae, patches, self.settings.kl_weight, torch.Generator().manual_seed(seed))
        yield Piece(loss, {"loss": loss.item(), "l1": l1}, True)

    def after_step(self, step: int) -> dict[str, float]:
        return {}


def fit_codec(config: CodecConfig, out: str | Path) -> Path:
    """Train the codec as ``config`` says (resuming a run stopped in ``out``); write ``out/vae``,
    ``out/loss.jsonl`` and ``out/reconstruction.json`` (see the module docstring). Returns the VAE folder."""
    out = Path(out)
    if (out / "vae").exists() or (out.exists() and latest_checkpoint(out) is None):
        raise InputError("the codec's output folder exists already (and holds no run to resume); choose another --out",
                         out)
    settings = config.train
    train_paths, held_out = run_cases(config.data)
    scored = held_out or train_paths
    dataset = PreparedCases(train_paths, config.preprocessing, config.data.get("cache_dir"),
                            config.data.get("ram_cache_gib", RAM_CACHE_GIB), dose_rules(config.data))
    accelerator = make_accelerator(settings, out)
    if accelerator.num_processes > 1:
        raise InputError("fit-codec trains on one process: run it without accelerate launch")
    torch.manual_seed(settings.seed)
    vae = new_vae(config.vae).train()
    trainee = make_trainee(accelerator, vae, list(vae.parameters()), settings)
    run(CodecStage(vae, dataset, settings, accelerator), accelerator, trainee, settings, out)
    vae.eval()
    mean, std = latent_statistics(vae, dataset)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    codec = WanVAECodec(vae)
    errors = reconstruction_mae(codec, scored, config.preprocessing)
    (out / "reconstruction.json").write_text(json.dumps({"cases": len(scored), "held_out": bool(held_out),
                                                         "mae": errors}, indent=2))
    with atomic_folder(out / "vae") as staging:
        vae.save_pretrained(staging)
    return out / "vae"
