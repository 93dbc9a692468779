"""Benchmark: training throughput (samples/s) of stages A and C (C also with its candidates one at a time).

- CPU (default): the TINY DiT with the patch codec on small synthetic cases (crop 17×32×48 at
  5 mm), stage A and stage C (2 candidates of 4 steps each per sample).
- ``--full`` (GPU): the Wan 2.1 1.3B-sized DiT and a random full Wan VAE at the paper's crop
  (97×128×144, 12,600 tokens), bf16, gradient checkpointing on (as the paper configurations).

Each stage's peak memory (GPU: max allocated; CPU: process peak RSS) is printed beside what the
memory planner (``dosediffusion-train plan``) says for its configuration.

Each stage runs one warm-up step, then resumes from its checkpoint for ``--steps`` more (the time
includes that restart: building the model and preparing the cases); samples/s counts
ground-truth samples.
Run: ``python Testing/benchmarks/train_speed.py [--steps 10] [--full]``; prints a table and
writes ``Testing/benchmarks/results/train_speed_<cpu|cuda>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from training_data import write_training_cases  # noqa: E402

from dosediffusion.model.configs import WAN21_1_3B  # noqa: E402
from dosediffusion_training.training.config import RunConfig  # noqa: E402
from dosediffusion_training.training.memory_plan import plan  # noqa: E402


def run_config(folder: Path, data: Path, stage: str, steps: int, full: bool, vae_dir: Path | None,
               candidate_micro_batch: int = 0) -> RunConfig:
    raw = {"data": {"folder": str(data)},
           "preprocessing": {"crop_shape": [97, 128, 144] if full else [17, 32, 48],
                             "spacing_mm": [2.5, 2.5, 2.0] if full else [5.0, 5.0, 5.0]},
           "codec": {"type": "wan_vae", "path": str(vae_dir)} if full else {"type": "patch", "factors": [1, 4, 4]},
           "model": dict(WAN21_1_3B) if full else {"size": "tiny"},
           "train": {"stage": stage, "steps": steps, "batch_size": 1, "learning_rate": 1e-4, "warmup_steps": 1,
                     "checkpoint_every": 10**6, "tensorboard": False, "mixed_precision": "bf16" if full else "no",
                     "gradient_checkpointing": full,
                     **({"scorecard": "lung_60", "num_candidates": 2, "candidate_steps": 4, "lora_rank": 64 if full else 8,
                         "candidate_micro_batch": candidate_micro_batch} if stage == "C" else {})}}
    raw["model"]["patch_size"] = list(raw["model"].get("patch_size", [1, 2, 2]))
    path = folder / f"{stage}{candidate_micro_batch}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return RunConfig.from_yaml(path)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(stage: str, config: RunConfig, out: Path) -> float:
    from dosediffusion_training.training.loop import train
    from dosediffusion_training.training.scardnft import train_scardnft

    run = train_scardnft if stage == "C" else train
    steps = config.train.steps
    config.train.steps = 1
    run(config, out)  # warm-up: data preparation, first allocations
    config.train.steps = 1 + steps
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(config, out)  # resumes after the warm-up step
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="full-size model on a GPU")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: results/train_speed_<cpu|cuda>.json)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_training_cases(tmp / "data", range(3), (40, 64, 80) if args.full else (20, 40, 48))
        vae_dir = None
        if args.full:
            from diffusers import AutoencoderKLWan

            vae_dir = tmp / "vae"
            AutoencoderKLWan().save_pretrained(vae_dir)
        for stage, micro in (("A", 0), ("C", 0), ("C", 1)):
            config = run_config(tmp, data, stage, args.steps, args.full, vae_dir, micro)
            planned = plan(config, 80.0).total / 2**30
            seconds = timed(stage, config, tmp / f"{stage}{micro}")
            rows.append({"stage": stage, "candidate_micro_batch": micro, "steps": args.steps, "seconds": round(seconds, 2),
                         "samples_per_s": round(args.steps / seconds, 3), "peak_memory_gib": round(peak_memory_gib(), 3),
                         "memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_max_rss",
                         "planned_gib": round(planned, 3)})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    print(f"{'full-size' if args.full else 'tiny'} config on {device} ({torch.get_num_threads()} threads)")
    print(f"{'stage':<8} {'steps':>6} {'seconds':>9} {'samples/s':>10} {'peak GiB':>9} {'planned GiB':>12}")
    for r in rows:
        label = r["stage"] + (f" m={r['candidate_micro_batch']}" if r["stage"] == "C" else "")
        print(f"{label:<8} {r['steps']:>6} {r['seconds']:>9.2f} {r['samples_per_s']:>10.3f} "
              f"{r['peak_memory_gib']:>9.2f} {r['planned_gib']:>12.2f}")
    out = args.out or Path(__file__).parent / "results" / f"train_speed_{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    out.write_text(json.dumps({"config": "full" if args.full else "tiny", "device": device,
                               "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
