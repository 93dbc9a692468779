"""The regression comparator: MedNeXt (variant B: the architecture of the GDP-HMM challenge's
baseline and top entries) predicting the dose channel directly from the condition channels.

``MedNeXtRegressor`` stacks the condition channels in a fixed order (an absent modality is its
background, −1), pads depth, height and width to multiples of 16 (MedNeXt halves them four
times) with −1, and maps MedNeXt's single output through a sigmoid to the dose channel's
[−1, 1] (``2·sigmoid − 1``), trained with an L1 loss. MONAI's implementation is used
(``monai.networks.nets.MedNeXt`` with variant B's expansion ratios and block counts, kernel 3),
imported when the model is built: ``pip install monai``.

``RegressionPipeline`` is a :class:`~dosediffusion.model.pipeline_base.PipelineBase` like
:class:`~dosediffusion.model.pipeline.DoseDiffusionPipeline` (the same folder format, ``sample_channels``
and ``__call__``), so ``dosediffusion predict --model`` and evaluation run it alike (steps and seed do
not matter; several candidates are refused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from dosediffusion import __version__
from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.errors import InputError
from dosediffusion.model.case_prediction import Clock, Progress
from dosediffusion.model.pipeline_base import PipelineBase, resolve_device_dtype

VARIANT_B = {"encoder_expansion_ratio": (2, 3, 4, 4), "decoder_expansion_ratio": (4, 4, 3, 2),
             "bottleneck_expansion_ratio": 4, "blocks_down": (2, 2, 2, 2), "blocks_bottleneck": 2,
             "blocks_up": (2, 2, 2, 2)}


class MedNeXtRegressor(ModelMixin, ConfigMixin):
    """Conditions (B, C, D, H, W) in [−1, 1] → dose channel (B, 1, D, H, W) in [−1, 1].

    Args:
        conditions: modality names, in channel order.
        init_filters: width of the first stage (32 in MONAI's variant B).
        kernel_size: 3 (the challenge baseline's).
    """

    @register_to_config
    def __init__(self, conditions: Sequence[str] = ("ct", "ptv", "oar", "body", "beam_plate", "angle_plate"),
                 init_filters: int = 32, kernel_size: int = 3):
        super().__init__()
        try:
            from monai.networks.nets import MedNeXt
        except ImportError:
            raise InputError("the MedNeXt baseline needs MONAI: pip install monai") from None
        self.net = MedNeXt(spatial_dims=3, in_channels=len(conditions), out_channels=1, init_filters=init_filters,
                           kernel_size=kernel_size, use_residual_connection=True, norm_type="group", **VARIANT_B)

    def stack(self, channels: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, D, H, W) tensors by modality → (B, C, D, H, W), absent modalities at −1."""
        like = next(iter(channels.values()))
        return torch.cat([channels.get(m, torch.full_like(like, -1.0)) for m in self.config.conditions], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[2:]
        pads = [(-n) % 16 for n in (w, h, d)]
        x = F.pad(x, (0, pads[0], 0, pads[1], 0, pads[2]), value=-1.0)
        return 2 * torch.sigmoid(self.net(x)[:, :, :d, :h, :w]) - 1


class RegressionPipeline(PipelineBase):
    """MedNeXt + preprocessing, with the diffusion pipeline's interface: one deterministic dose (steps
    and seed do not matter; several candidates are refused)."""

    components = {"model": {"MedNeXtRegressor"}}

    def __init__(self, model: MedNeXtRegressor, preprocessing: PrepareConfig, target: str = "dose"):
        self.model, self.preprocessing, self.target = model.eval(), preprocessing, target

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> RegressionPipeline:
        """Load a pipeline folder (local only)."""
        index, preprocessing = cls.read_folder(folder)
        return cls(MedNeXtRegressor.from_pretrained(Path(folder) / "model", torch_dtype=torch_dtype), preprocessing,
                   index.get("target", "dose"))

    def describe(self) -> dict:
        return {"model": "MedNeXtRegressor", "modalities": [*self.model.config.conditions, self.target],
                "target": self.target, "parameters": int(sum(p.numel() for p in self.model.parameters())),
                "preprocessing": self.preprocessing.to_dict(), "version": __version__}

    def condition_modalities(self) -> set[str]:
        return set(self.model.config.conditions)

    @torch.no_grad()
    def sample_channels(self, channels: dict[str, np.ndarray], steps: int = 1, seed: int = 0, num_candidates: int = 1,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                        clock: Clock | None = None) -> np.ndarray:
        """Condition channels → (num_candidates, D, H, W) dose channels (all equal: regression is deterministic)."""
        self.check_channels(channels)
        device, dtype = resolve_device_dtype(device, dtype)
        self.model.to(device)
        x = self.model.stack({m: torch.from_numpy(np.asarray(c, np.float32))[None, None].to(device)
                              for m, c in channels.items()})
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = self.model(x).float().cpu().numpy()[:, 0]
        if progress is not None:
            progress(0.9, "regression done")
        return np.repeat(out, num_candidates, axis=0)
