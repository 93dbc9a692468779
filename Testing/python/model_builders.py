"""Tiny random models, codecs and Wan folders for tests (saved and loaded through the real code)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from dosediffusion.conditioning.prepare import PrepareConfig
from dosediffusion.model.any2any import Any2AnyDiT
from dosediffusion.model.codecs import PatchCodec
from dosediffusion.model.configs import TINY
from dosediffusion.model.pipeline import DoseDiffusionPipeline
from dosediffusion.model.regression import MedNeXtRegressor, RegressionPipeline

#: A small field of view at 5 mm that the phantom of ``phantoms.py`` fits in.
TINY_PREPROCESSING = PrepareConfig(crop_shape=(9, 32, 32), spacing_mm=(5.0, 5.0, 5.0))


def tiny_model(seed: int = 0, **overrides) -> Any2AnyDiT:
    torch.manual_seed(seed)
    return Any2AnyDiT(**{**TINY, **overrides})


def tiny_pipeline(seed: int = 0, **overrides) -> DoseDiffusionPipeline:
    """PatchCodec (1, 2, 2) → 4 latent channels, the TINY DiT, Wan's shift 3."""
    return DoseDiffusionPipeline(PatchCodec((1, 2, 2)), tiny_model(seed, **overrides),
                                 FlowMatchEulerDiscreteScheduler(shift=3.0), TINY_PREPROCESSING)


def save_tiny_wan(folder: Path, seed: int = 0) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    """A tiny random Wan 2.1 (transformer with cross-attention, VAE) saved as a diffusers folder."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                                        in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=48,
                                        num_layers=2, rope_max_seq_len=64, cross_attn_norm=True)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    return transformer, vae


def tiny_regression(seed: int = 0) -> RegressionPipeline:
    """MedNeXt variant B at 4 filters on the tiny field of view (needs MONAI)."""
    torch.manual_seed(seed)
    return RegressionPipeline(MedNeXtRegressor(init_filters=4), TINY_PREPROCESSING)
