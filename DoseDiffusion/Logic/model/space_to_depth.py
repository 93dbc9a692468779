"""Voxels ↔ blocks: a volume (B, 1, D, H, W) as (B, fz·fy·fx, D/fz, H/fy, W/fx), each latent voxel the
fz × fy × fx block of voxels it covers (the patch codec's latents; the voxel head's way back to voxels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def space_to_depth(volume: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """(B, 1, D, H, W) → (B, fz·fy·fx, D/fz, H/fy, W/fx); ``factors`` must divide the shape."""
    b, _, d, h, w = volume.shape
    fz, fy, fx = factors
    x = volume.reshape(b, d // fz, fz, h // fy, fy, w // fx, fx)
    return x.permute(0, 2, 4, 6, 1, 3, 5).reshape(b, fz * fy * fx, d // fz, h // fy, w // fx)


def depth_to_space(latents: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """The exact inverse of :func:`space_to_depth`: (B, fz·fy·fx, d, h, w) → (B, 1, d·fz, h·fy, w·fx)."""
    b, _, d, h, w = latents.shape
    fz, fy, fx = factors
    x = latents.reshape(b, fz, fy, fx, d, h, w).permute(0, 4, 1, 5, 2, 6, 3)
    return x.reshape(b, 1, d * fz, h * fy, w * fx)
