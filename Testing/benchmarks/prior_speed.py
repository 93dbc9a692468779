"""Benchmark: the ray-traced prior dose (:func:`dosediffusion.conditioning.prior_dose.prior_dose`) with 9
beams on a 128³ water phantom (2.5 mm voxels, body in most of the grid; goal: ≤ 2 s on 2 cores) and on
OpenKBP validation patients (the reader's nine fields), where ``../shared/data/openkbp`` is present.

Run: ``python Testing/benchmarks/prior_speed.py [--device cpu|cuda] [--threads 2] [--repeats 3] [--patients 3]``;
prints a table and writes ``Testing/benchmarks/results/prior_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.conditioning.prior_dose import prior_dose
from dosediffusion.geometry import Grid

OPENKBP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openkbp" / "validation"


def phantom_128(beams: list[Beam]) -> Case:
    """A 128³ water cylinder (radius 140 mm, the whole grid's length) with an ellipsoidal 70 Gy PTV."""
    grid = Grid((128, 128, 128), (2.5, 2.5, 2.5), (-158.75, -158.75, -158.75))
    z, y, x = np.indices(grid.shape)
    body = ((y - 63.5) ** 2 + (x - 63.5) ** 2) * 2.5**2 <= 140.0**2
    ptv = ((z - 64) / 14.0) ** 2 + ((y - 60) / 18.0) ** 2 + ((x - 70) / 22.0) ** 2 <= 1.0
    return Case("phantom128", grid, np.where(body, 0.0, -1000.0).astype(np.float32),
                {"PTV70": Structure("PTV70", ptv, "ptv", 70.0), "BODY": Structure("BODY", body, "body")},
                beams, Prescription([70.0], 35))


def seconds(run, repeats: int, device: str) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (this process, all threads) seconds of each of ``repeats`` runs after a warm-up;
    on a shared machine the CPU seconds over the threads estimate the wall time of an idle one."""
    run()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patients", type=int, default=3, help="OpenKBP validation patients (first N)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    iso = (0.0, -8.75, 16.25)
    cases = {"128³ phantom, 9 beams": phantom_128([Beam(f"B{i}", 40.0 * i, 0.0, 0.0, iso) for i in range(9)]),
             "128³ phantom, 2 arcs (180 cp)": phantom_128(
                 [Beam(f"A{k}", 181.0, 0.0, 0.0, iso, tuple((181.0 + 4 * j) % 360 for j in range(90)), "CW") for k in range(2)])}
    if OPENKBP.is_dir():
        from dosediffusion.io.openkbp import read_openkbp_case

        for path in sorted(OPENKBP.glob("*.npz"))[: args.patients]:
            cases[f"OpenKBP {path.stem}, 9 beams"] = read_openkbp_case(path)
    rows = []
    for name, case in cases.items():
        wall, cpu = seconds(lambda c=case: prior_dose(c, device=args.device), args.repeats, args.device)
        support = case.dose_support()
        rows.append({"case": name, "voxels_in_support": int(support.sum()), "median_s": float(np.median(wall)),
                     "min_s": float(min(wall)), "median_cpu_s": float(np.median(cpu))})
    print(f"{'case':<34} {'support voxels':>14} {'median s':>9} {'min s':>7} {'CPU s':>7}")
    for r in rows:
        print(f"{r['case']:<34} {r['voxels_in_support']:>14} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['median_cpu_s']:>7.3f}")
    out = Path(__file__).parent / "results" / "prior_speed.json"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    out.write_text(json.dumps({"device": device, "threads": torch.get_num_threads(), "goal_s_128": 2.0,
                               "load_average_1min": os.getloadavg()[0],
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
