"""Benchmark: time and memory of one dose prediction at the paper's token count.

All seven modalities on a 97×128×144 crop at 2.0×2.5×2.5 mm (z, y, x): the Wan VAE makes 25×16×18
latents and (1, 2, 2) patches 1,800 tokens per modality, 12,600 in all. For 1, 4 and 10 steps it
times the pipeline's stages (prepare, VAE encode of the six conditions, sampling, decode, paste
back) and records peak memory (GPU: max allocated; CPU: process peak RSS).

- ``--config full``: Wan 2.1 1.3B-sized DiT and the full Wan VAE with random weights, bfloat16
  (needs a GPU; goal on one H100: 10 steps within 3 s per case, under 8 GB peak).
- ``--config tiny``: the TINY DiT and a small Wan-architecture VAE at the same token count (CPU).
- ``--crop Z Y X``: another crop (``gpu_check.sh --tiny`` runs 17 64 64, 560 tokens, to check the script
  itself in seconds).

The full configuration is always also built on the meta device to count its parameters, and the
DiT's floating-point work per step is computed from its sizes.

Run: ``python Testing/benchmarks/model_speed.py [--config tiny|full] [--device cpu|cuda] [--steps 1 4 10]``;
prints a table and writes ``Testing/benchmarks/results/model_speed_<config>_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from phantoms import make_phantom_case  # noqa: E402

from dosediffusion.conditioning.prepare import PrepareConfig  # noqa: E402
from dosediffusion.model.any2any import Any2AnyDiT  # noqa: E402
from dosediffusion.model.codecs import WanVAECodec  # noqa: E402
from dosediffusion.model.configs import TINY, WAN21_1_3B  # noqa: E402
from dosediffusion.model.pipeline import DoseDiffusionPipeline  # noqa: E402

#: The paper's crop (z, y, x) at 2.0 × 2.5 × 2.5 mm.
PAPER_CROP = (97, 128, 144)
SMALL_VAE = {"base_dim": 16, "dim_mult": [1, 1, 2, 2], "num_res_blocks": 1}


def dit_flops_per_step(config: dict, tokens: int) -> float:
    """Multiply-adds × 2 of one DiT forward over ``tokens`` tokens (projections, attention, FFN)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    per_layer = 2 * (4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * config["ffn_dim"])
    return float(per_layer * config["num_layers"])


def tokens_of(crop: tuple[int, int, int], modalities: int = 7) -> int:
    """DiT tokens of ``modalities`` volumes of ``crop``: the Wan VAE's 4× (z: 4k + 1 → k + 1) and 8× (y, x)
    compression, then (1, 2, 2) patches."""
    z, y, x = crop
    return modalities * ((z - 1) // 4 + 1) * (y // 16) * (x // 16)


def build(config_name: str, dtype: torch.dtype, folder: Path, crop: PrepareConfig) -> DoseDiffusionPipeline:
    """Random weights, saved and loaded back in ``dtype`` through the pipeline's own loader (which
    keeps the modulation and norms in float32)."""
    torch.manual_seed(0)
    model = Any2AnyDiT(**(WAN21_1_3B if config_name == "full" else {**TINY, "in_channels": 16}))
    vae = AutoencoderKLWan() if config_name == "full" else AutoencoderKLWan(**SMALL_VAE)
    DoseDiffusionPipeline(WanVAECodec(vae), model, FlowMatchEulerDiscreteScheduler(shift=3.0), crop).save_pretrained(folder)
    return DoseDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    parser.add_argument("--crop", type=int, nargs=3, default=PAPER_CROP, metavar=("Z", "Y", "X"),
                        help="crop in voxels (default: the paper's 97 128 144; z = 4k + 1, y and x multiples of 16)")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: results/model_speed_<config>_<device>.json)")
    args = parser.parse_args()
    config_name = args.config or ("full" if args.device.startswith("cuda") else "tiny")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    crop = PrepareConfig(crop_shape=tuple(args.crop), spacing_mm=(2.5, 2.5, 2.0))

    with torch.device("meta"):
        full_parameters = sum(p.numel() for p in Any2AnyDiT(**WAN21_1_3B).parameters())
    case, _ = make_phantom_case(spacing=(2.5, 2.5, 2.0), size_mm=(400.0, 340.0, 240.0))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build(config_name, dtype, Path(tmp) / "pipeline", crop)
    if args.compile:
        pipe.compile()
    tokens = tokens_of(tuple(crop.crop_shape))
    pipe(case, steps=1, device=args.device, dtype=dtype)  # warm-up (allocations, kernels, compile)
    rows = []
    for steps in args.steps:
        prediction = pipe(case, steps=steps, seed=0, device=args.device, dtype=dtype)
        rows.append({"steps": steps, **{f"{k}_s": round(v, 4) for k, v in prediction.timing_s.items()},
                     "peak_memory_mib": round(prediction.peak_memory_mib, 1), "memory_kind": prediction.memory_kind})
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    model_config = WAN21_1_3B if config_name == "full" else TINY
    print(f"config {config_name} on {device_name} ({args.device}, {str(dtype)[6:]}, {torch.get_num_threads()} threads), "
          f"{tokens} tokens; DiT {sum(p.numel() for p in pipe.model.parameters()) / 1e6:.2f} M parameters, "
          f"{dit_flops_per_step(model_config, tokens) / 1e12:.3f} TFLOP per step")
    print(f"{'steps':>5} {'prepare':>8} {'encode':>8} {'sample':>8} {'decode':>8} {'total s':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['steps']:>5} {r['prepare_s']:>8.2f} {r['encode_s']:>8.2f} {r['sample_s']:>8.2f} {r['decode_s']:>8.2f} "
              f"{r['total_s']:>8.2f} {r['peak_memory_mib']:>9.0f}")
    out = args.out or Path(__file__).parent / "results" / f"model_speed_{config_name}_{args.device.split(':')[0]}.json"
    out.write_text(json.dumps({
        "config": config_name, "device": device_name, "dtype": str(dtype), "threads": torch.get_num_threads(),
        "compiled": args.compile, "crop": list(crop.crop_shape), "tokens": tokens,
        "dit_parameters": sum(p.numel() for p in pipe.model.parameters()), "full_size_dit_parameters": full_parameters,
        "dit_tflop_per_step": dit_flops_per_step(model_config, tokens) / 1e12,
        "full_size_dit_tflop_per_step": dit_flops_per_step(WAN21_1_3B, tokens) / 1e12, "rows": rows}, indent=2))
    print(f"full-size DiT: {full_parameters / 1e9:.3f} B parameters, {dit_flops_per_step(WAN21_1_3B, tokens) / 1e12:.1f} "
          f"TFLOP per step; wrote {out}")


if __name__ == "__main__":
    main()
