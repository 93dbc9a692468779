"""Benchmark: a training process's peak memory against the size of its data set.

Issue 17's goal: RAM per process bounded (≤ 8 GB plus the model) whatever the data set size. Each
row trains the TINY DiT for one epoch (one step per case, batch 1) over N synthetic cases at a crop of
33 × 96 × 96 voxels (7 channels, ~8.5 MB prepared per case, the size that makes the data path
visible beside the interpreter) in a fresh process, and reports its peak resident memory (VmHWM) and
its growth over the process before training:

- ``prepared, unbounded``: prepared cases kept for the whole run (``data.ram_cache_gib`` larger than
  the data set; what every run did before the cache had a budget);
- ``prepared, 0.05 GiB``: the least-recently-used budget;
- ``latent cache``: ``dosediffusion-train cache-latents`` first, then training reads one case at a time.

Run: ``python Testing/benchmarks/train_memory.py [--cases 20 80]``; prints a table and writes
``Testing/benchmarks/results/train_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from training_data import write_training_cases  # noqa: E402

CROP = [33, 96, 96]
#: Runs in a fresh interpreter: train as argv[1] says into argv[2], print the peak memory as JSON.
MEASURE = """
import json, sys
from dosediffusion_training.training.config import RunConfig
from dosediffusion_training.training.loop import train

def status(field):
    return 1024 * int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":")))

before = status("VmRSS")
train(RunConfig.from_yaml(sys.argv[1]), sys.argv[2])
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def write_config(folder: Path, data: Path, steps: int, data_keys: dict) -> Path:
    raw = {"data": {"folder": str(data), **data_keys},
           "preprocessing": {"crop_shape": CROP, "spacing_mm": [5.0, 5.0, 5.0]},
           "codec": {"type": "patch", "factors": [1, 4, 4]}, "model": {"size": "tiny", "patch_size": [3, 4, 4]},
           "train": {"steps": steps, "batch_size": 1, "learning_rate": 1e-4, "warmup_steps": 1,
                     "checkpoint_every": 10**6, "tensorboard": False}}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def measure(config: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(config), str(out)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[20, 80], help="data set sizes")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_training_cases(tmp / "data", range(max(args.cases)), (40, 100, 100))
        for n in args.cases:
            subset = tmp / f"data{n}"
            subset.mkdir()
            for path in sorted(data.iterdir())[:n]:
                (subset / path.name).symlink_to(path)
            runs = {"prepared, unbounded": {"ram_cache_gib": 1000}, "prepared, 0.05 GiB": {"ram_cache_gib": 0.05},
                    "latent cache": {"latent_cache": str(tmp / f"cache{n}")}}
            for kind, keys in runs.items():
                folder = tmp / f"{n}-{len(rows)}"
                folder.mkdir()
                config = write_config(folder, subset, n, keys)
                if "latent_cache" in keys:
                    subprocess.run([sys.executable, "-m", "dosediffusion_training.cli", "cache-latents", "--config",
                                    str(config), "--out", keys["latent_cache"]], check=True, capture_output=True)
                found = measure(config, folder / "run")
                rows.append({"cases": n, "data": kind, "peak_mib": round(found["peak"] / 2**20, 1),
                             "growth_mib": round((found["peak"] - found["before"]) / 2**20, 1)})
    print(f"one epoch of the TINY DiT, crop {' × '.join(map(str, CROP))}, batch 1")
    print(f"{'cases':>6}  {'data':<20} {'peak MiB':>9} {'growth MiB':>11}")
    for r in rows:
        print(f"{r['cases']:>6}  {r['data']:<20} {r['peak_mib']:>9.1f} {r['growth_mib']:>11.1f}")
    args.out.write_text(json.dumps({"crop": CROP, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
