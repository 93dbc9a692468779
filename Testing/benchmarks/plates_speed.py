"""Benchmark: beam and angle plates for 9 beams on a 128×256×256 grid (goal: < 1 s on 2 cores).

Run: ``python Testing/benchmarks/plates_speed.py [--device cpu|cuda] [--repeats 3]``; prints a table
and writes ``Testing/benchmarks/results/plates_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dosediffusion.case import Beam
from dosediffusion.conditioning.plates import angle_plate, beam_plate
from dosediffusion.geometry import Grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    grid = Grid((128, 256, 256), (2.5, 2.5, 2.5), (-320.0, -320.0, -160.0))
    z, y, x = np.indices(grid.shape)
    ptv = ((z - 64) / 14.0) ** 2 + ((y - 128) / 18.0) ** 2 + ((x - 140) / 22.0) ** 2 <= 1.0
    iso = tuple(grid.index_to_physical(np.array([64, 128, 140])))
    setups = {
        "9 coplanar beams": [Beam(f"B{i}", 40.0 * i, 0.0, 0.0, iso) for i in range(9)],
        "9 beams, 4 couch kicks": [Beam(f"B{i}", 40.0 * i, 0.0, 20.0 if i % 2 else 0.0, iso) for i in range(9)],
        "2 arcs, 90 control points": [
            Beam(f"A{k}", 181.0, 0.0, 0.0, iso, tuple((181.0 + 4 * j) % 360 for j in range(90)), "CW") for k in range(2)
        ],
    }
    rows = []
    for name, beams in setups.items():
        for what, run in (("beam plate", lambda b=beams: beam_plate(ptv, grid, b, device=args.device)),
                          ("angle plate", lambda b=beams: angle_plate(grid, b))):
            run()  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            rows.append({"setup": name, "plate": what, "median_s": float(np.median(times)), "min_s": float(min(times))})
    print(f"{'setup':<28} {'plate':<12} {'median s':>9} {'min s':>7}")
    for r in rows:
        print(f"{r['setup']:<28} {r['plate']:<12} {r['median_s']:>9.3f} {r['min_s']:>7.3f}")
    out = Path(__file__).parent / "results" / "plates_speed.json"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    out.write_text(json.dumps({"grid": list(grid.shape), "device": device, "threads": torch.get_num_threads(),
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
