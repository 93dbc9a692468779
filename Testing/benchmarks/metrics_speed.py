"""Benchmark: DVHs of 30 structures and the head-and-neck scorecard on a 128×256×256 case, ours
against dicompyler-core 0.5.6 (goals: ours ≥ 5× faster on the same structures; the whole
scorecard < 1 s on 2 cores).

The case (2 × 2 × 2.5 mm voxels) has 30 ellipsoidal structures named as the head-and-neck
scorecard expects (3 PTVs, OARs from 0.1 cc to the body) and a smooth SIB-like dose (70/63/56 Gy
plateaus with 4 mm sigmoid fall-offs over a low-dose bath). It is written as DICOM (CT, RTSTRUCT,
RTDOSE) and read back through ``dosediffusion.io.load.load_case`` as a user's case would be; the
timings exclude reading. dicompyler-core runs in its own environment (``Testing/python/peers.py``)
on the same files, once per setting of :data:`PEER_SETTINGS` (see ``Testing/peers/dicompyler_dvh.py``);
its time is the sum of its per-ROI ``get_dvh`` times (files already read, as ours).

Run: ``python Testing/benchmarks/metrics_speed.py [--quick] [--repeats 3] [--out PATH]``
(``--quick`` skips dicompyler-core); prints a table and writes
``Testing/benchmarks/results/metrics_speed.json``. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dosediffusion.case import Case, Prescription, Structure
from dosediffusion.geometry import Grid
from dosediffusion.io.dicom_write import write_case_dicom
from dosediffusion.io.load import load_case
from dosediffusion.io.rasterize import rasterize
from dosediffusion.metrics.dose_metrics import case_dvhs, standard_metrics
from dosediffusion.metrics.scorecard import load_template, score_case

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from peers import dicompyler_dvh  # noqa: E402

SHAPE = (128, 256, 256)
SPACING = (2.0, 2.0, 2.5)  # x, y, z mm
# name: centre (x, y, z) mm and semi-axes (a, b, c) mm; the head's centre is the origin, +y posterior, +z superior
STRUCTURES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "BODY": ((0, 0, 0), (85, 105, 150)),
    "PTV_70": ((-20, -10, -20), (22, 20, 25)),
    "PTV_63": ((15, -5, -25), (25, 22, 30)),
    "PTV_56": ((0, 5, -35), (45, 35, 45)),
    "Brain": ((0, 10, 90), (65, 80, 50)),
    "Brainstem": ((0, 25, 40), (12, 12, 20)),
    "SpinalCord": ((0, 45, -40), (6, 6, 60)),
    "SpinalCanal": ((0, 45, -40), (9, 9, 62)),
    "Parotid_L": ((45, 10, 5), (12, 18, 20)),
    "Parotid_R": ((-45, 10, 5), (12, 18, 20)),
    "Mandible": ((0, -45, -15), (45, 20, 12)),
    "OralCavity": ((0, -35, 0), (28, 22, 15)),
    "Larynx": ((0, -30, -70), (14, 14, 18)),
    "Esophagus": ((0, 25, -100), (8, 7, 40)),
    "OpticChiasm": ((0, -5, 70), (8, 4, 2.6)),
    "OpticNrv_L": ((14, -25, 70), (3, 14, 2.6)),
    "OpticNrv_R": ((-14, -25, 70), (3, 14, 2.6)),
    "Cochlea_L": ((38, 20, 45), (3, 3, 3)),
    "Cochlea_R": ((-38, 20, 45), (3, 3, 3)),
    "BrachialPlex": ((40, 25, -90), (22, 6, 10)),
    "Glnd_Submand_L": ((30, -25, -40), (10, 10, 10)),
    "Glnd_Submand_R": ((-30, -25, -40), (10, 10, 10)),
    "Thyroid": ((0, -25, -100), (20, 8, 15)),
    "Musc_Constrict": ((0, 5, -30), (14, 6, 35)),
    "Lips": ((0, -75, -5), (20, 6, 8)),
    "Eye_L": ((32, -55, 75), (12, 12, 12)),
    "Eye_R": ((-32, -55, 75), (12, 12, 12)),
    "Lens_L": ((32, -66, 75), (4, 2, 4)),
    "Lens_R": ((-32, -66, 75), (4, 2, 4)),
    "Trachea": ((0, -5, -110), (9, 9, 35)),
}
#: dicompyler-core runs: label → in-plane interpolation divisor (1: none, its default and unbiased setting;
#: 4: pixel spacing / 4, the sample density closest to ours, though its interpolation is offset by about half a voxel)
PEER_SETTINGS = {"voxel centres": 1, "in-plane /4": 4}
PTV_LEVELS = {"PTV_70": 70.0, "PTV_63": 63.0, "PTV_56": 56.0}


def _ellipse(centre: tuple[float, float, float], semi: tuple[float, float], z: float, n: int = 72) -> np.ndarray:
    """An axial ellipse (n points, patient mm) at height ``z``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + semi[0] * np.cos(t), centre[1] + semi[1] * np.sin(t), np.full(n, z)], 1)


def ellipsoid_contours(grid: Grid, centre, semi) -> list[np.ndarray]:
    """The ellipsoid's axial cross-sections on the grid's slice planes (patient mm)."""
    zs = grid.index_to_physical(np.stack([np.arange(grid.shape[0]), np.zeros(grid.shape[0]), np.zeros(grid.shape[0])], 1))[:, 2]
    contours = []
    for z in zs:
        s = 1.0 - ((z - centre[2]) / semi[2]) ** 2
        if s > 0.01:
            contours.append(_ellipse(centre, (semi[0] * np.sqrt(s), semi[1] * np.sqrt(s)), z))
    return contours


def _soft_inside(points: np.ndarray, centre, semi, falloff_mm: float) -> np.ndarray:
    """≈ 1 inside the ellipsoid, ≈ 0 outside, a sigmoid of width ``falloff_mm`` across its surface."""
    scaled = np.sqrt(sum(((points[..., k] - centre[k]) / semi[k]) ** 2 for k in range(3)))
    distance = (scaled - 1.0) * min(semi)  # approximate signed distance to the surface, mm
    return 1.0 / (1.0 + np.exp(np.clip(distance / falloff_mm, -50, 50)))


def sib_dose(grid: Grid) -> np.ndarray:
    """A smooth SIB-like dose (Gy): the PTV levels as soft plateaus over an exponential bath, 0 outside the body."""
    points = grid.index_to_physical(np.indices(grid.shape).reshape(3, -1).T).reshape(*grid.shape, 3)
    dose = np.zeros(grid.shape)
    for name, level in sorted(PTV_LEVELS.items(), key=lambda item: item[1]):
        centre, semi = STRUCTURES[name]
        dose = np.maximum(dose, level * _soft_inside(points, centre, (semi[0] + 3, semi[1] + 3, semi[2] + 3), 4.0))
    centre = np.array(STRUCTURES["PTV_56"][0])
    bath = 30.0 * np.exp(-np.linalg.norm(points - centre, axis=-1) / 60.0)
    body = _soft_inside(points, *STRUCTURES["BODY"], 2.0)
    return (np.maximum(dose, bath) * body).astype(np.float32)


def build_case() -> Case:
    """The benchmark case on the 128×256×256 grid (no CT detail: water in air)."""
    extent = (np.array(SHAPE[::-1]) - 1) * np.array(SPACING)
    grid = Grid(SHAPE, SPACING, tuple(-extent / 2))
    structures = {}
    for name, (centre, semi) in STRUCTURES.items():
        contours = ellipsoid_contours(grid, centre, semi)
        mask, _ = rasterize(contours, grid)
        role = "ptv" if name in PTV_LEVELS else "body" if name == "BODY" else "oar"
        structures[name] = Structure(name, mask, role, PTV_LEVELS.get(name), contours)
    ct = np.where(structures["BODY"].mask, 0.0, -1000.0).astype(np.float32)
    return Case("metrics_speed", grid, ct, structures, [], Prescription(list(PTV_LEVELS.values()), 35), sib_dose(grid),
                meta={"PatientID": "BENCH01", "PatientPosition": "HFS"})


def timed(run, repeats: int) -> tuple[float, float, object]:
    """(median s, min s, last result) of ``repeats`` calls after one warm-up."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(min(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip dicompyler-core (minutes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metrics_speed.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metrics_speed.") as tmp:
        start = time.perf_counter()
        paths = write_case_dicom(build_case(), Path(tmp) / "dicom")
        case = load_case(Path(tmp) / "dicom")
        print(f"case built, written as DICOM and read back in {time.perf_counter() - start:.1f} s; "
              f"{len(case.structures)} structures")
        template = load_template("head_neck_sib_70_63_56")
        dvh_median, dvh_min, dvhs = timed(lambda: case_dvhs(case), args.repeats)
        score_median, score_min, report = timed(lambda: score_case(case, template), args.repeats)
        peers = {} if args.quick else {label: dicompyler_dvh(paths["rtstruct"], paths["rtdose"], resolution_divisor=divisor,
                                                               timeout_s=3600)
                                       for label, divisor in PEER_SETTINGS.items()}
    scored = sorted({e.structure for e in report.entries if e.score is not None})
    rows = []
    for task, ours_median, ours_min, names in ((f"DVHs, {len(dvhs)} structures", dvh_median, dvh_min, sorted(dvhs)),
                                               (f"scorecard, {len(scored)} structures", score_median, score_min, scored)):
        for label in PEER_SETTINGS if peers else [None]:
            peer_s = float(sum(peers[label][n]["seconds"] for n in names)) if label else None
            rows.append({"task": task + (f" (dicompyler: {label})" if label else ""), "ours_s": ours_median,
                         "ours_min_s": ours_min, "dicompyler_s": peer_s, "speed_up": peer_s / ours_median if label else None})
    width = max(len(r["task"]) for r in rows)
    print(f"{'task':<{width}} {'ours s':>8} {'dicompyler s':>13} {'speed-up':>9}")
    for r in rows:
        peer_text = f"{r['dicompyler_s']:>13.2f}" if r["dicompyler_s"] is not None else f"{'-':>13}"
        speed = f"{r['speed_up']:>8.1f}x" if r["speed_up"] else f"{'-':>9}"
        print(f"{r['task']:<{width}} {r['ours_s']:>8.3f} {peer_text} {speed}")
    agreement = {}
    for label, peer in peers.items():
        agreement[label] = {}
        for name, theirs in peer.items():
            ours = standard_metrics(dvhs[name])
            agreement[label][name] = {k: {"ours": round(ours[k], 3), "dicompyler": round(theirs[k], 3)}
                                      for k in ("volume_cc", "mean_gy", "max_gy", "d95_gy")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "grid": list(SHAPE), "spacing_mm": list(SPACING), "structures": len(dvhs),
        "machine": {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "repeats": args.repeats, "dicompyler_settings": {k: f"get_dvh(use_structure_extents=True, interpolation_resolution="
                                                          f"{'None' if v == 1 else f'pixel spacing / {v}'})"
                                                          for k, v in PEER_SETTINGS.items()},
        "rows": rows, "scorecard_total": report.total, "agreement": agreement,
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
