"""Codecs between a modality's volume (B, 1, D, H, W) in [−1, 1] and the latent grid the DiT sees.

- :class:`WanVAECodec`: a frozen ``AutoencoderKLWan``: the Wan 2.1 VAE, or a small one of the same
  class trained on our modalities (``dosediffusion-train fit-codec``). The 1-channel volume is
  repeated to the VAE's input channels (3 for Wan's; depth as frames) and the decoded channels are
  averaged back; latents are normalised with the VAE's per-channel ``latents_mean`` /
  ``latents_std``. Depth must be 1 + 4k (the VAE encodes the first slice, then 4 at a time) and
  height and width multiples of the spatial factor (it silently drops other frames and crops other
  sizes, so both are errors here). Latents: (B, z, 1 + (D − 1)/t, H/s, W/s) with the VAE's temporal
  and spatial factors t and s (Wan's: z 16, t 4, s 8). The encoder's posterior mode is used.
- :class:`PatchCodec`: no network, the volume itself rearranged space-to-depth by ``factors``
  (fz, fy, fx): (B, fz·fy·fx, D/fz, H/fy, W/fx). Exact both ways; for small models and tests.

Both save to and load from a local folder (``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from dosediffusion.errors import InputError
from dosediffusion.model.space_to_depth import depth_to_space, space_to_depth

CODEC_CONFIG = "codec_config.json"


class PatchCodec:
    """Space-to-depth codec (no weights). ``factors`` (fz, fy, fx) divide the volume's shape."""

    def __init__(self, factors: tuple[int, int, int] = (1, 1, 1)):
        self.factors = tuple(int(f) for f in factors)
        if len(self.factors) != 3 or min(self.factors) < 1:
            raise InputError(f"patch codec factors {factors} must be three positive integers")

    @property
    def latent_channels(self) -> int:
        return self.factors[0] * self.factors[1] * self.factors[2]

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise unless the (D, H, W) volume shape fits the codec."""
        if any(n % f for n, f in zip(shape, self.factors, strict=True)):
            raise InputError(f"volume shape {tuple(shape)} is not divisible by the patch codec factors {self.factors}")

    def latent_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        self.check_shape(shape)
        return tuple(n // f for n, f in zip(shape, self.factors, strict=True))

    def encode(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) → (B, fz·fy·fx, D/fz, H/fy, W/fx) (:func:`.space_to_depth.space_to_depth`)."""
        self.check_shape(tuple(volume.shape[2:]))
        return space_to_depth(volume, self.factors)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The exact inverse of :meth:`encode`."""
        return depth_to_space(latents, self.factors)

    def to(self, *args, **kwargs) -> PatchCodec:
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / CODEC_CONFIG).write_text(json.dumps({"factors": list(self.factors)}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PatchCodec:
        path = Path(folder) / CODEC_CONFIG
        if not path.is_file():
            raise InputError(f"no {CODEC_CONFIG}: not a patch codec folder", str(folder))
        return cls(tuple(json.loads(path.read_text())["factors"]))


#: The Wan VAE encodes the first slice alone, then slices four at a time.
WAN_CHUNK = 4


class WanVAECodec:
    """A frozen ``AutoencoderKLWan`` as a 1-channel codec with normalised latents."""

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.temporal = int(config.get("scale_factor_temporal") or 4)
        self.spatial = int(config.get("scale_factor_spatial") or 8)
        self.in_channels = int(config.get("in_channels") or 3)
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if len(config.latents_mean) != config.z_dim or len(config.latents_std) != config.z_dim:
            raise InputError(f"VAE latents_mean/std have {len(config.latents_mean)}/{len(config.latents_std)} "
                             f"entries for {config.z_dim} latent channels")

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.z_dim)

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        d, h, w = shape
        step = max(self.temporal, WAN_CHUNK)
        if (d - 1) % step or h % self.spatial or w % self.spatial:
            raise InputError(f"volume shape {tuple(shape)} does not fit the Wan VAE: depth must be "
                             f"1 + {step}k and height and width multiples of {self.spatial}")

    def latent_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        self.check_shape(shape)
        d, h, w = shape
        return 1 + (d - 1) // self.temporal, h // self.spatial, w // self.spatial

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mean.to(like.device, like.dtype), self._std.to(like.device, like.dtype)

    @torch.no_grad()
    def encode(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) in [−1, 1] → normalised latents (B, z, 1 + (D − 1)/t, H/s, W/s)."""
        self.check_shape(tuple(volume.shape[2:]))
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(volume.to(dtype).repeat(1, self.in_channels, 1, 1, 1)).latent_dist
        latents = posterior.mode().float()
        mean, std = self._stats(latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → (B, 1, D, H, W) in [−1, 1] (the VAE clamps its output)."""
        mean, std = self._stats(latents.float())
        dtype = next(self.vae.parameters()).dtype
        video = self.vae.decode((latents.float() * std + mean).to(dtype)).sample
        return video.float().mean(dim=1, keepdim=True)

    def to(self, *args, **kwargs) -> WanVAECodec:
        self.vae.to(*args, **kwargs)
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        self.vae.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> WanVAECodec:
        if not (Path(folder) / "config.json").is_file():
            raise InputError("no config.json: expected a diffusers-format Wan VAE folder", str(folder))
        return cls(AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch_dtype))


CODECS = {"PatchCodec": PatchCodec, "WanVAECodec": WanVAECodec}
