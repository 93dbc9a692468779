"""``DoseDiffusionPipeline``: Case → predicted dose in Gy on the CT grid, and its folder format.

A pipeline folder (all local, no hub)::

    model_index.json     component classes, target modality, package version
    preprocessing.json   the PrepareConfig
    codec/               PatchCodec (codec_config.json) or WanVAECodec (a diffusers AutoencoderKLWan)
    model/               Any2AnyDiT (config.json + diffusion_pytorch_model.safetensors)
    scheduler/           FlowMatchEulerDiscreteScheduler (scheduler_config.json; its shift is Wan's)

Only the classes named in :data:`COMPONENTS` can be loaded: a folder cannot make the loader
import anything else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dosediffusion import __version__
from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError
from dosediffusion.io.atomic import atomic_folder
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.codecs import CODECS, PatchCodec, WanVAECodec
from dosediffusion.model.sampling import euler_sample, initial_noise
from dosediffusion.model.selection import Selector
from dosediffusion.prediction.case_prediction import Clock, DosePrediction, Progress, predict_case
from dosediffusion.prediction.model_folder import MODEL_INDEX

PREPROCESSING = "preprocessing.json"
COMPONENTS = {"codec": set(CODECS), "model": {"Any2AnyDiT"}, "scheduler": {"FlowMatchEulerDiscreteScheduler"}}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DoseDiffusionPipeline:
    """Codec + Any2AnyDiT + scheduler + preprocessing: ``pipeline(case)`` predicts its dose."""

    def __init__(self, codec: PatchCodec | WanVAECodec, model: Any2AnyDiT, scheduler: FlowMatchEulerDiscreteScheduler,
                 preprocessing: PrepareConfig, target: str = "dose"):
        if codec.latent_channels != model.config.in_channels:
            raise InputError(f"codec gives {codec.latent_channels} latent channels, model expects {model.config.in_channels}")
        if target not in model.config.modalities:
            raise InputError(f"target {target!r} is not one of the model's modalities {list(model.config.modalities)}")
        codec.check_shape(tuple(preprocessing.crop_shape))
        self.codec, self.model, self.scheduler = codec, model.eval(), scheduler
        self.preprocessing, self.target = preprocessing, target

    # ---- folder format -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the pipeline folder; an existing folder is replaced only once the new one is complete."""
        index = {"_class_name": type(self).__name__, "_dosediffusion_version": __version__,
                 "codec": type(self.codec).__name__, "model": type(self.model).__name__,
                 "scheduler": type(self.scheduler).__name__, "target": self.target}
        return write_pipeline_folder(folder, index, self.preprocessing,
                                     {"codec": self.codec, "model": self.model, "scheduler": self.scheduler})

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> DoseDiffusionPipeline:
        """Load a pipeline folder (local only)."""
        folder = Path(folder)
        index_path = folder / MODEL_INDEX
        if not index_path.is_file():
            raise InputError(f"no {MODEL_INDEX}: not a DoseDiffusion pipeline folder", folder)
        try:
            index = json.loads(index_path.read_text())
            preprocessing = PrepareConfig.from_dict(json.loads((folder / PREPROCESSING).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise InputError(f"unreadable pipeline description ({error})", folder) from None
        for part, allowed in COMPONENTS.items():
            if index.get(part) not in allowed:
                raise InputError(f"{part} class {index.get(part)!r} is not one of {sorted(allowed)}", index_path)
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

    def check_channels(self, channels: dict[str, np.ndarray]) -> None:
        """See :func:`check_condition_channels` (the conditions: every modality but the target)."""
        check_condition_channels(channels, set(self.model.config.modalities) - {self.target},
                                 tuple(self.preprocessing.crop_shape))

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
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        report = progress or (lambda fraction, message: None)
        clock = clock or _DeviceClock(device)
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

    def __call__(
        self,
        case: Case,
        steps: int = 10,
        seed: int = 0,
        num_candidates: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        selection: str | Selector | None = None,
        scorecard: str | dict | None = None,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> DosePrediction:
        """Predict the dose of ``case`` (Gy, on its CT grid, zero outside the body): see
        :func:`predict_case`; other arguments as :meth:`sample_channels`."""
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        clock = _DeviceClock(device)

        def sample(channels, steps, seed, num_candidates, progress=None, cancel=None):
            return self.sample_channels(channels, steps, seed, num_candidates, device, dtype, progress, cancel, clock)

        prediction = predict_case(sample, case, self.preprocessing, steps, seed, num_candidates, selection, scorecard,
                                  progress, cancel, clock)
        prediction.device, prediction.dtype = str(device), str(dtype).replace("torch.", "")
        return prediction


def check_condition_channels(channels: dict[str, np.ndarray], allowed: set[str], crop: tuple[int, int, int]) -> None:
    """Raise :class:`InputError` naming the problem unless ``channels`` are ``allowed`` modalities,
    each a floating array of the ``crop`` shape with values in [−1, 1] (as
    :func:`~dosediffusion.conditioning.prepare.prepare` makes them; NaN and infinity are outside)."""
    unknown = sorted(set(channels) - allowed)
    if unknown:
        raise InputError(f"channels {unknown} are not conditions of this model; allowed: {sorted(allowed)}")
    for name, array in channels.items():
        if tuple(np.shape(array)) != crop:
            raise InputError(f"channel {name!r} has shape {tuple(np.shape(array))}, the model's crop is {crop}")
        if not np.issubdtype(np.asarray(array).dtype, np.floating):
            raise InputError(f"channel {name!r} must hold floating-point values")
        if not np.all(np.abs(array) <= 1.0):  # exact: prepare() maps [0, 1] into it in float32; False for NaN too
            raise InputError(f"channel {name!r} must hold values in [-1, 1] (as prepare() scales them)")


def write_pipeline_folder(folder: str | Path, index: dict, preprocessing: PrepareConfig, components: dict) -> Path:
    """Write ``model_index.json``, ``preprocessing.json`` and each component's ``save_pretrained``
    sub-folder into a staging folder, then put it in place of ``folder`` (replaced whole)."""
    with atomic_folder(folder, replace=True) as staging:
        for name, component in components.items():
            component.save_pretrained(staging / name)
        (staging / PREPROCESSING).write_text(json.dumps(preprocessing.to_dict(), indent=2))
        (staging / MODEL_INDEX).write_text(json.dumps(index, indent=2))
    return Path(folder)


def load_pipeline(folder: str | Path, torch_dtype: torch.dtype | None = None):
    """The pipeline in ``folder``: a :class:`DoseDiffusionPipeline` or the regression comparator's
    :class:`~dosediffusion.model.regression.RegressionPipeline`, by its ``model_index.json``."""
    path = Path(folder) / MODEL_INDEX
    if not path.is_file():
        raise InputError(f"no {MODEL_INDEX}: not a DoseDiffusion pipeline folder", folder)
    try:
        kind = json.loads(path.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"unreadable pipeline description ({error})", folder) from None
    if kind == "RegressionPipeline":
        from dosediffusion.model.regression import RegressionPipeline

        return RegressionPipeline.from_pretrained(folder, torch_dtype)
    if kind != "DoseDiffusionPipeline":
        raise InputError(f"pipeline class {kind!r} is not DoseDiffusionPipeline or RegressionPipeline", folder)
    return DoseDiffusionPipeline.from_pretrained(folder, torch_dtype)


class _DeviceClock(Clock):
    """The :class:`Clock` of a run on ``device``: CUDA work synchronised before each lap, and CUDA's peak
    allocated memory."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        super().__init__()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_memory_mib(self) -> tuple[float, str]:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        return super().peak_memory_mib()
