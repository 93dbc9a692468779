"""Building blocks of the Any2Any DiT: Wan 2.1's transformer block without cross-attention, and the
timestep + role embedding that drives its AdaLayerNorm modulation.

Parameter names match diffusers' ``WanTransformerBlock`` and ``WanTimeTextImageEmbedding`` so that
Wan 2.1 weights copy by name (see :mod:`dosediffusion.model.wan_loading`). Modulation is per slot:
every token of a slot shares its timestep and role, so the (batch, slots, 6, dim) modulation is
broadcast over the slot's tokens instead of being stored once per token.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn

#: Role indices of the role embedding.
ROLE_CONDITION, ROLE_TARGET = 0, 1


class TimestepRoleEmbedding(nn.Module):
    """Sinusoidal timestep → MLP, plus a learned role embedding (condition / target), then Wan's
    ``time_proj`` to the six modulation vectors of every block.

    Input: timesteps (B, S) in [0, num_train_timesteps], roles (S,) of 0/1.
    Output: ``temb`` (B, S, dim) for the output head and ``modulation`` (B, S, 6, dim) for the blocks.
    """

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.timesteps_proj = Timesteps(num_channels=freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(in_channels=freq_dim, time_embed_dim=dim)
        self.act_fn = nn.SiLU()
        self.time_proj = nn.Linear(dim, dim * 6)
        self.role_embedding = nn.Embedding(2, dim)
        nn.init.normal_(self.role_embedding.weight, std=0.02)

    def forward(self, timesteps: torch.Tensor, roles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = timesteps.shape
        freqs = self.timesteps_proj(timesteps.reshape(-1)).view(b, s, -1)
        dtype = self.time_embedder.linear_1.weight.dtype
        temb = self.time_embedder(freqs.to(dtype)) + self.role_embedding(roles).to(dtype)
        modulation = self.time_proj(self.act_fn(temb)).unflatten(-1, (6, -1))
        return temb, modulation


class Any2AnyBlock(nn.Module):
    """Wan's block (AdaLayerNorm-modulated self-attention and feed-forward, gated residuals) with the
    cross-attention removed.

    hidden_states: (B, S, N, dim) (S slots of N tokens); modulation: (B, S, 6, dim);
    rotary_emb: cos/sin (1, S·N, 1, head_dim). Attention is full over all S·N tokens (SDPA).
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps,
                                  processor=WanAttnProcessor())
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, hidden_states: torch.Tensor, modulation: torch.Tensor,
                rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        mod = (self.scale_shift_table.unsqueeze(0) + modulation.float()).unsqueeze(2)  # (B, S, 1, 6, dim)
        shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(dim=3)
        b, s, n, d = hidden_states.shape

        normed = (self.norm1(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        attn = self.attn1(normed.reshape(b, s * n, d), None, None, rotary_emb).view(b, s, n, d)
        hidden_states = (hidden_states.float() + attn * gate).type_as(hidden_states)

        normed = (self.norm3(hidden_states.float()) * (1 + c_scale) + c_shift).type_as(hidden_states)
        ff = self.ffn(normed)
        return (hidden_states.float() + ff.float() * c_gate).type_as(hidden_states)
