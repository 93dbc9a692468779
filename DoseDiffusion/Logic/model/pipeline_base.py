"""What every pipeline shares: its folder (:mod:`dosediffusion.model.folder_format`), the check of its
condition channels, the device and dtype it runs on, and ``pipeline(case)`` through
:func:`~dosediffusion.model.case_prediction.predict_case`. A pipeline class names its components
(:attr:`PipelineBase.components`: attribute name → the classes a folder may name for it) and implements
``sample_channels``; what it cannot do (several candidates from a deterministic model) is refused before
any work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from dosediffusion import __version__
from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError
from dosediffusion.model.case_prediction import Clock, DosePrediction, Progress, predict_case
from dosediffusion.model.folder_format import (
    PIPELINE_CLASSES,
    PREPROCESSING,
    check_pipeline_options,
    read_model_index,
    write_pipeline_folder,
)
from dosediffusion.model.selection import Selector


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device_dtype(device: str | torch.device | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """The device (default :func:`default_device`) and autocast dtype (default bfloat16 on CUDA, float32
    elsewhere) a prediction runs with."""
    device = torch.device(device) if device is not None else default_device()
    return device, dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


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


class DeviceClock(Clock):
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


class PipelineBase:
    """A pipeline: components (``save_pretrained`` sub-folders), ``preprocessing`` and the ``target``
    modality. Subclasses set :attr:`components` and implement :meth:`condition_modalities`,
    :meth:`sample_channels` and :meth:`describe`."""

    #: attribute name → the class names a pipeline folder may give for it (nothing else is loaded)
    components: ClassVar[dict[str, set[str]]] = {}
    preprocessing: PrepareConfig
    target: str

    @classmethod
    def kind(cls) -> str:
        """The pipeline class a folder names for this one (of
        :data:`~dosediffusion.model.folder_format.PIPELINE_CLASSES`; a subclass has its base's)."""
        return next(k.__name__ for k in cls.__mro__ if k.__name__ in PIPELINE_CLASSES)

    @classmethod
    def samples(cls) -> bool:
        """Whether steps, seed and candidates mean anything (a diffusion pipeline) or not (a regression)."""
        return PIPELINE_CLASSES[cls.kind()]

    def condition_modalities(self) -> set[str]:
        raise NotImplementedError

    def sample_channels(self, channels: dict[str, np.ndarray], steps: int, seed: int, num_candidates: int,
                        device: torch.device, dtype: torch.dtype, progress: Progress | None = None,
                        cancel: Callable[[], bool] | None = None, clock: Clock | None = None) -> np.ndarray:
        """Condition channels (D, H, W) on the crop → ``num_candidates`` target channels (N, D, H, W)."""
        raise NotImplementedError

    def check_channels(self, channels: dict[str, np.ndarray]) -> None:
        """See :func:`check_condition_channels` (the conditions: :meth:`condition_modalities`)."""
        check_condition_channels(channels, self.condition_modalities(), tuple(self.preprocessing.crop_shape))

    # ---- folder format -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the pipeline folder; an existing folder is replaced only once the new one is complete."""
        parts = {name: getattr(self, name) for name in self.components}
        index = {"_class_name": self.kind(), "_dosediffusion_version": __version__,
                 **{name: type(part).__name__ for name, part in parts.items()}, "target": self.target}
        return write_pipeline_folder(folder, index, self.preprocessing.to_dict(), parts)

    @classmethod
    def read_folder(cls, folder: str | Path) -> tuple[dict, PrepareConfig]:
        """``folder``'s ``model_index.json`` and preprocessing, once the index names this class and
        allowed classes for each component."""
        index = read_model_index(folder)
        if index["_class_name"] != cls.kind():
            raise InputError(f"holds a {index['_class_name']}, not a {cls.kind()}", folder)
        for part, allowed in cls.components.items():
            if index.get(part) not in allowed:
                raise InputError(f"{part} class {index.get(part)!r} is not one of {sorted(allowed)}", folder)
        try:
            preprocessing = PrepareConfig.from_dict(json.loads((Path(folder) / PREPROCESSING).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise InputError(f"unreadable {PREPROCESSING} ({error})", folder) from None
        return index, preprocessing

    # ---- prediction ----------------------------------------------------------------------------
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
        :func:`~dosediffusion.model.case_prediction.predict_case`. ``device`` and ``dtype`` as
        :func:`resolve_device_dtype`; the prediction reports those it ran with, and no steps or seed
        for a pipeline that does not sample."""
        check_pipeline_options(self.kind(), num_candidates)
        device, dtype = resolve_device_dtype(device, dtype)
        clock = DeviceClock(device)

        def sample(channels, steps, seed, num_candidates, progress=None, cancel=None):
            return self.sample_channels(channels, steps, seed, num_candidates, device, dtype, progress, cancel, clock)

        prediction = predict_case(sample, case, self.preprocessing, steps, seed, num_candidates, selection, scorecard,
                                  progress, cancel, clock)
        prediction.device, prediction.dtype = str(device), str(dtype).replace("torch.", "")
        if not self.samples():
            prediction.steps = prediction.seed = None
        return prediction
