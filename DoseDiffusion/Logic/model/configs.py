"""Named Any2AnyDiT sizes.

``WAN21_1_3B`` is Wan 2.1 T2V 1.3B's transformer (12 heads × 128, FFN 8960, 30 layers, 16 latent
channels, patch (1, 2, 2)) as the Any2Any model: 1.13 B parameters (Wan's 1.42 B minus
cross-attention and the text embedder, plus six patch embeddings and the role embedding).
``TINY`` is a few-thousand-parameter model for tests and CPU smoke runs.
"""

from __future__ import annotations

WAN21_1_3B: dict = {
    "in_channels": 16,
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "ffn_dim": 8960,
    "num_layers": 30,
    "freq_dim": 256,
    "eps": 1e-6,
    "rope_slot_dim": 8,
}

TINY: dict = {
    "in_channels": 4,
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 24,
    "ffn_dim": 64,
    "num_layers": 2,
    "freq_dim": 32,
    "rope_slot_dim": 4,
}

CONFIGS = {"wan2.1-1.3b": WAN21_1_3B, "tiny": TINY}
