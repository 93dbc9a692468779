"""``Any2AnyDiT``: the DiffKT3D diffusion transformer over tokens of any subset of the seven modalities.

Every modality present is a latent grid (B, C, f, h, w) (all on the same grid); its own Conv3d patch
embedding (Wan's, patch (1, 2, 2)) turns it into N = f·h·w / prod(patch) tokens of width ``dim``.
Tokens are concatenated slot-major (slot = the modality's index in ``modalities``). Target slots
carry the noised latent and the diffusion timestep, condition slots the clean latent and
timestep 0; a role embedding (target / condition) is added to the timestep embedding before
Wan's ``time_proj``, so it reaches every block's AdaLayerNorm and the output head. Blocks are
Wan's without cross-attention; attention is full over all tokens with a 4D RoPE (slot, depth,
height, width). Only target tokens go through the output head, which returns the prediction
(velocity, noise or clean latent, per ``prediction_type``) for each target slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.utils import BaseOutput
from torch import nn

from dosediffusion.conditioning.prepare import MODALITIES
from dosediffusion.errors import InputError
from dosediffusion.model.blocks import ROLE_CONDITION, ROLE_TARGET, Any2AnyBlock, TimestepRoleEmbedding
from dosediffusion.model.rope import SlotRotaryEmbedding
from dosediffusion.model.voxel_head import VoxelHead

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


@dataclass
class Any2AnyOutput(BaseOutput):
    """``sample``: target modality → prediction (B, C, f, h, w) in latent space."""

    sample: dict[str, torch.Tensor]


class Any2AnyDiT(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The Any2Any DiT.

    Args:
        modalities: slot order; one patch embedding per entry.
        in_channels: latent channels of the codec (16 for the Wan VAE).
        patch_size: (pf, ph, pw), Wan's (1, 2, 2).
        num_attention_heads, attention_head_dim: width ``dim = heads · head_dim``.
        ffn_dim, num_layers, freq_dim, eps: as Wan.
        rope_max_seq_len, rope_slot_dim, rope_slot_theta: the 4D RoPE (see :mod:`.rope`).
        prediction_type: what the head predicts: ``v_prediction`` (ε − x0), ``epsilon`` or ``sample``.
        num_train_timesteps: timesteps are s · this, s ∈ [0, 1].
        voxel_head_factors: set (the patch codec's factors, whose product is ``in_channels``): each target's
            prediction is refined at voxel resolution from the conditions ``voxel_head_conditions`` by a
            :class:`~.voxel_head.VoxelHead` of ``voxel_head_width`` channels, ``voxel_head_depth``
            convolutions and ``voxel_head_kernel``³ kernels (needs ``prediction_type`` ``sample``).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["Any2AnyBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm3", "norm_out"]
    _skip_layerwise_casting_patterns = ["patch_embeddings", "condition_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        modalities: Sequence[str] = MODALITIES,
        in_channels: int = 16,
        patch_size: Sequence[int] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        freq_dim: int = 256,
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        rope_slot_dim: int = 8,
        rope_slot_theta: float = 10.0,
        prediction_type: str = "v_prediction",
        num_train_timesteps: int = 1000,
        voxel_head_factors: Sequence[int] | None = None,
        voxel_head_conditions: Sequence[str] = (),
        voxel_head_width: int = 8,
        voxel_head_depth: int = 3,
        voxel_head_kernel: int = 3,
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        if len(set(modalities)) != len(modalities):
            raise InputError(f"modalities {list(modalities)} repeat a name")
        dim = num_attention_heads * attention_head_dim
        patch = tuple(patch_size)
        self.patch_embeddings = nn.ModuleDict(
            {m: nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch) for m in modalities}
        )
        self.rope = SlotRotaryEmbedding(attention_head_dim, rope_slot_dim, rope_max_seq_len,
                                        slot_theta=rope_slot_theta, max_slots=len(modalities))
        self.condition_embedder = TimestepRoleEmbedding(dim, freq_dim)
        self.blocks = nn.ModuleList([Any2AnyBlock(dim, ffn_dim, num_attention_heads, eps) for _ in range(num_layers)])
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, in_channels * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.voxel_head = None
        if voxel_head_factors is not None:
            if prediction_type != "sample" or math.prod(voxel_head_factors) != in_channels:
                raise InputError(f"a voxel head refines a predicted sample of a patch codec's latents: it needs "
                                 f"prediction_type 'sample' and factors whose product is in_channels ({in_channels}); "
                                 f"got {prediction_type!r} and {list(voxel_head_factors)}")
            unknown = set(voxel_head_conditions) - set(modalities)
            if unknown:
                raise InputError(f"voxel head conditions {sorted(unknown)} are not among the modalities")
            self.voxel_head = VoxelHead(voxel_head_factors, voxel_head_conditions, voxel_head_width, voxel_head_depth,
                                        voxel_head_kernel)
        self.gradient_checkpointing = False

    def _grid(self, latents: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int, int]:
        shapes = {m: tuple(x.shape) for m, x in latents.items()}
        if len(set(shapes.values())) != 1:
            raise InputError(f"all modalities must share one latent shape; got {shapes}")
        b, c, f, h, w = next(iter(shapes.values()))
        pf, ph, pw = self.config.patch_size
        if c != self.config.in_channels or f % pf or h % ph or w % pw:
            raise InputError(f"latent shape {(b, c, f, h, w)} needs {self.config.in_channels} channels and a grid "
                             f"divisible by the patch {tuple(self.config.patch_size)}")
        return b, c, f // pf, h // ph, w // pw

    def _slots(self, present: Sequence[str], targets: Sequence[str], slot_ids: Mapping[str, int] | None) -> list[int]:
        unknown = [m for m in present if m not in self.patch_embeddings]
        if unknown:
            raise InputError(f"modalities {unknown} are not among the model's {list(self.config.modalities)}")
        if not targets or any(t not in present for t in targets):
            raise InputError(f"targets {list(targets)} must be a non-empty subset of the given {list(present)}")
        order = {m: i for i, m in enumerate(self.config.modalities)}
        order.update(slot_ids or {})
        return [int(order[m]) for m in present]

    def forward(
        self,
        latents: Mapping[str, torch.Tensor],
        timestep: torch.Tensor,
        targets: Sequence[str] = ("dose",),
        slot_ids: Mapping[str, int] | None = None,
        return_dict: bool = True,
    ) -> Any2AnyOutput | tuple[dict[str, torch.Tensor]]:
        """Predict the targets.

        Args:
            latents: modality → (B, C, f, h, w); targets noised, conditions clean. Absent modalities
                are simply not given.
            timestep: (B,) diffusion time of the targets in [0, num_train_timesteps].
            targets: which of ``latents`` are targets.
            slot_ids: override of the slot index per modality (default: position in ``modalities``).
        """
        present = [m for m in self.config.modalities if m in latents] + [m for m in latents if m not in self.patch_embeddings]
        slots = self._slots(present, targets, slot_ids)
        b, _, f, h, w = self._grid(latents)
        is_target = torch.tensor([m in targets for m in present], device=timestep.device)
        roles = torch.where(is_target, ROLE_TARGET, ROLE_CONDITION)
        timesteps = torch.where(is_target, timestep.reshape(b, 1).float(), torch.zeros((), device=timestep.device))

        tokens = torch.stack([self.patch_embeddings[m](latents[m]).flatten(2).transpose(1, 2) for m in present], dim=1)
        rotary_emb = self.rope(slots, (f, h, w))
        temb, modulation = self.condition_embedder(timesteps, roles)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, modulation, rotary_emb)
            else:
                tokens = block(tokens, modulation, rotary_emb)

        index = [i for i, m in enumerate(present) if m in targets]
        out_tokens = tokens[:, index]  # (B, T, N, dim)
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb[:, index].float().unsqueeze(2)).unsqueeze(2).unbind(3)
        out_tokens = (self.norm_out(out_tokens.float()) * (1 + scale) + shift).type_as(out_tokens)
        out_tokens = self.proj_out(out_tokens)
        sample = {present[i]: self._unpatchify(out_tokens[:, k], (f, h, w)) for k, i in enumerate(index)}
        if self.voxel_head is not None:
            conditions = {m: latents[m] for m in present if m not in targets}
            sample = {m: self.voxel_head(x, conditions) for m, x in sample.items()}
        if not return_dict:
            return (sample,)
        return Any2AnyOutput(sample=sample)

    def _unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, C · prod(patch)) → (B, C, f·pf, h·ph, w·pw)."""
        b = tokens.shape[0]
        pf, ph, pw = self.config.patch_size
        x = tokens.reshape(b, *grid, pf, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
