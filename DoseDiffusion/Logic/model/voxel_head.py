"""The voxel head: a small convolutional network after the DiT's linear head that draws, voxel by voxel, what
large tokens cannot (a PTV's edge, a body contour) from the conditions themselves.

With a patch codec of ``factors`` (fz, fy, fx) every latent voxel is an fz × fy × fx block of voxels
(:mod:`.space_to_depth`), so the DiT's predicted target and its clean conditions are volumes again without a
decoder: the head takes the target's volume and the named conditions' volumes (an absent condition is its
background, −1), and adds to the target ``out(h)`` with

    h = SiLU(conv_in([target, conditions])),  h ← h + SiLU(conv(h))  (``depth`` times)

(``kernel``³ convolutions of ``width`` channels, 3 by default; 1 makes the head a per-voxel network over the
target and the conditions, which still draws every edge a condition has; ``out`` starts at zero, so a new head passes the DiT's
prediction through unchanged). It refines a predicted sample (the clean target), so a DiT with a voxel
head predicts ``sample``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dosediffusion.model.space_to_depth import depth_to_space, space_to_depth


class VoxelHead(nn.Module):
    """Refines a predicted target (B, fz·fy·fx, d, h, w) at voxel resolution from ``conditions`` (names)."""

    def __init__(self, factors: Sequence[int], conditions: Sequence[str], width: int = 8, depth: int = 3,
                 kernel: int = 3):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"the voxel head's kernel must be an odd size, got {kernel}")
        self.factors, self.conditions = tuple(int(f) for f in factors), tuple(conditions)
        pad = kernel // 2
        self.conv_in = nn.Conv3d(1 + len(self.conditions), width, kernel, padding=pad)
        self.convs = nn.ModuleList(nn.Conv3d(width, width, kernel, padding=pad) for _ in range(depth))
        self.conv_out = nn.Conv3d(width, 1, kernel, padding=pad)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, target: torch.Tensor, conditions: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``target`` (B, C, d, h, w) refined; ``conditions`` name → clean latent of the same shape."""
        volume = depth_to_space(target, self.factors)
        inputs = [volume] + [depth_to_space(conditions[m], self.factors).to(volume.dtype) if m in conditions
                             else torch.full_like(volume, -1.0) for m in self.conditions]
        h = F.silu(self.conv_in(torch.cat(inputs, dim=1)))
        for conv in self.convs:
            h = h + F.silu(conv(h))
        return space_to_depth(volume + self.conv_out(h), self.factors)
