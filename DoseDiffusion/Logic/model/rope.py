"""4D rotary position embedding: slot (modality) + depth, height, width of the latent patch grid.

Each attention head's channels are split into four parts. Height and width keep Wan 2.1's split
(``2 · (head_dim // 6)`` channels each); the depth part is Wan's temporal part minus the last
``slot_dim`` channels, which carry the slot. Every part is a standard 1-D rotary embedding of its
own index with its own base ``theta``, and the depth/height/width parts use exactly Wan's
frequencies, so a Wan-pretrained block sees the rotations it was trained with (with
``slot_dim = 0`` this is Wan's 3-D RoPE). The slot part has a small base so that its lowest
frequency still turns noticeably across the seven slots.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import nn

from dosediffusion.errors import InputError


def _table(dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (length, dim), channel pairs interleaved as Wan's attention expects."""
    if dim == 0:
        empty = torch.zeros(length, 0, dtype=torch.float64)
        return empty, empty
    return get_1d_rotary_pos_embed(dim, length, theta, use_real=True, repeat_interleave_real=True,
                                   freqs_dtype=torch.float64)


class SlotRotaryEmbedding(nn.Module):
    """Rotary phases for tokens laid out slot-major over a (slots, f, h, w) patch grid.

    Args:
        attention_head_dim: channels per head (even).
        slot_dim: channels given to the slot axis (even, smaller than Wan's depth part).
        max_seq_len: largest index along any spatial axis.
        theta: base period of the spatial axes (Wan's 10 000).
        slot_theta: base period of the slot axis.
        max_slots: largest slot index + 1.
    """

    def __init__(self, attention_head_dim: int, slot_dim: int = 8, max_seq_len: int = 1024, theta: float = 10000.0,
                 slot_theta: float = 10.0, max_slots: int = 16):
        super().__init__()
        hw_dim = 2 * (attention_head_dim // 6)
        wan_t_dim = attention_head_dim - 2 * hw_dim
        if attention_head_dim % 2 or slot_dim % 2 or slot_dim >= wan_t_dim:
            raise InputError(f"head dim {attention_head_dim} and slot dim {slot_dim} must be even, slot dim < {wan_t_dim}")
        self.split = (wan_t_dim - slot_dim, slot_dim, hw_dim, hw_dim)
        t_cos, t_sin = _table(wan_t_dim, max_seq_len, theta)
        s_cos, s_sin = _table(slot_dim, max_slots, slot_theta)
        h_cos, h_sin = _table(hw_dim, max_seq_len, theta)
        keep = wan_t_dim - slot_dim  # Wan's highest depth frequencies stay where they were
        for name, table in (("t", (t_cos[:, :keep], t_sin[:, :keep])), ("s", (s_cos, s_sin)), ("hw", (h_cos, h_sin))):
            self.register_buffer(f"{name}_cos", table[0].float(), persistent=False)
            self.register_buffer(f"{name}_sin", table[1].float(), persistent=False)

    def forward(self, slot_ids: list[int], grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape (1, len(slot_ids) · f · h · w, 1, head_dim) for Wan's attention processor."""
        f, h, w = grid
        slots = torch.as_tensor(slot_ids, device=self.s_cos.device)
        out = []
        for kind in ("cos", "sin"):
            t_tab, s_tab, hw_tab = (getattr(self, f"{n}_{kind}") for n in ("t", "s", "hw"))
            n = len(slot_ids)
            parts = (
                s_tab[slots].view(n, 1, 1, 1, -1).expand(n, f, h, w, -1),
                t_tab[:f].view(1, f, 1, 1, -1).expand(n, f, h, w, -1),
                hw_tab[:h].view(1, 1, h, 1, -1).expand(n, f, h, w, -1),
                hw_tab[:w].view(1, 1, 1, w, -1).expand(n, f, h, w, -1),
            )
            table = torch.cat([parts[1], parts[0], parts[2], parts[3]], dim=-1)
            out.append(table.reshape(1, n * f * h * w, 1, -1))
        return out[0], out[1]
