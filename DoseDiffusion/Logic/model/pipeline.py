"""``DoseDiffusionPipeline``: Case → predicted dose in Gy on the CT grid, and its folder format.

A pipeline folder (all local, no hub)::

    model_index.json     component classes, target modality, package version
    preprocessing.json   the PrepareConfig
    codec/               PatchCodec (codec_config.json) or WanVAECodec (a diffusers AutoencoderKLWan)
    model/               Any2AnyDiT (config.json + diffusion_pytorch_model.safetensors)
    scheduler/           FlowMatchEulerDiscreteScheduler (scheduler_config.json; its shift is Wan's)

Only the classes named in :attr:`DoseDiffusionPipeline.components` can be loaded: a folder cannot make the loader
import anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dosediffusion import __version__
from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.case_prediction import Clock, Progress
from dosediffusion.model.codecs import CODECS, PatchCodec, WanVAECodec
from dosediffusion.model.pipeline_base import DeviceClock, PipelineBase, resolve_device_dtype
from dosediffusion.model.sampling import euler_sample, initial_noise


class DoseDiffusionPipeline(PipelineBase):
    """Codec + Any2AnyDiT + scheduler + preprocessing: ``pipeline(case)`` predicts its dose."""

    components = {"codec": set(CODECS), "model": {"Any2AnyDiT"}, "scheduler": {"FlowMatchEulerDiscreteScheduler"}}

    def __init__(self, codec: PatchCodec | WanVAECodec, model: Any2AnyDiT, scheduler: FlowMatchEulerDiscreteScheduler,
                 preprocessing: PrepareConfig, target: str = "dose"):
        if codec.latent_channels != model.config.in_channels:
            raise InputError(f"codec gives {codec.latent_channels} latent channels, model expects {model.config.in_channels}")
        if target not in model.config.modalities:
            raise InputError(f"target {target!r} is not one of the model's modalities {list(model.config.modalities)}")
        crop = tuple(preprocessing.crop_shape)
        grid = codec.latent_shape(crop)  # the codec's own rule for the crop (the Wan VAE's 1 + 4k depth)
        patch = tuple(model.config.patch_size)
        if any(n % p for n, p in zip(grid, patch, strict=True)):
            raise InputError(f"the crop {crop} gives a latent grid {grid} that the DiT's patch {patch} does not divide")
        head = model.config.get("voxel_head_factors")
        if head is not None and not (isinstance(codec, PatchCodec) and tuple(codec.factors) == tuple(head)):
            raise InputError(f"the DiT's voxel head reads latents as blocks of {list(head)} voxels: it needs a patch codec "
                             f"with those factors")
        self.codec, self.model, self.scheduler = codec, model.eval(), scheduler
        self.preprocessing, self.target = preprocessing, target

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> DoseDiffusionPipeline:
        """Load a pipeline folder (local only)."""
        folder = Path(folder)
        index, preprocessing = cls.read_folder(folder)
        codec_cls = CODECS[index["codec"]]
        codec = codec_cls.from_pretrained(folder / "codec", **({"torch_dtype": torch_dtype} if codec_cls is WanVAECodec else {}))
        model = Any2AnyDiT.from_pretrained(folder / "model", torch_dtype=torch_dtype)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        return cls(codec, model, scheduler, preprocessing, index.get("target", "dose"))

    def compile(self) -> DoseDiffusionPipeline:
        """Compile the DiT's forward with ``torch.compile`` (first call slower, later calls faster)."""
        self.model.compile()
        return self

    def describe(self) -> dict:
        """Name-free facts about the model for logs, the remote worker and the Slicer module."""
        cfg = self.model.config
        return {"codec": type(self.codec).__name__, "modalities": list(cfg.modalities), "target": self.target,
                "prediction_type": cfg.prediction_type, "parameters": int(sum(p.numel() for p in self.model.parameters())),
                "preprocessing": self.preprocessing.to_dict(), "version": __version__}

    # ---- prediction ----------------------------------------------------------------------------
    def encode_conditions(self, channels: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
        """Condition channels (D, H, W) → latents (1, C, f, h, w), encoded once as one batch."""
        names = [m for m in self.model.config.modalities if m in channels and m != self.target]
        if not names:
            raise InputError("the case gives the model no condition at all (no CT, structures or beams)")
        volumes = torch.stack([torch.from_numpy(channels[m]) for m in names]).unsqueeze(1).to(device)
        latents = self.codec.encode(volumes)
        return {m: latents[i : i + 1] for i, m in enumerate(names)}

    def condition_modalities(self) -> set[str]:
        """Every modality of the model but the target."""
        return set(self.model.config.modalities) - {self.target}

    @torch.no_grad()
    def sample_channels(
        self,
        channels: dict[str, np.ndarray],
        steps: int = 10,
        seed: int = 0,
        num_candidates: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        clock: Clock | None = None,
    ) -> np.ndarray:
        """The model's part of a prediction: condition channels (D, H, W) on the crop (as
        :func:`~dosediffusion.conditioning.prepare.prepare` makes them) → ``num_candidates`` target
        channels (N, D, H, W) float32 on the crop. This is what the remote worker runs.

        Args:
            steps: Euler steps (1–50). seed: noise seed (candidate k uses the k-th draw of it).
            device: default CUDA when available, else CPU. dtype: autocast dtype; default bfloat16 on
                CUDA, float32 on CPU.
            progress: called with (fraction 0–1, message). cancel: polled between steps; raises
                :class:`~dosediffusion.errors.Cancelled`.
        """
        if num_candidates < 1:
            raise InputError(f"num_candidates must be at least 1, got {num_candidates}")
        self.check_channels(channels)
        channels = {m: np.asarray(c, dtype=np.float32) for m, c in channels.items()}
        device, dtype = resolve_device_dtype(device, dtype)
        report = progress or (lambda fraction, message: None)
        clock = clock or DeviceClock(device)
        self.model.to(device)
        self.codec.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            report(0.05, "encoding conditions")
            conditions = self.encode_conditions(channels, device)
            clock.lap("encode")
            latent = next(iter(conditions.values())).shape[1:]
            noise = initial_noise((num_candidates, *latent), seed, device)

            def on_step(i: int, n: int) -> None:
                report(0.1 + 0.8 * i / n, f"step {i} of {n}")

            x0 = euler_sample(self.model, conditions, self.target, noise, self.scheduler, steps, on_step, cancel)
            clock.lap("sample")
            volumes = self.codec.decode(x0).float().cpu().numpy()[:, 0]
            clock.lap("decode")
        return volumes
