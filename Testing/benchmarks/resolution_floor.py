"""Benchmark: the floor that a model grid (field of view and voxel size) puts under any model, and the
reference doses' normalisation (issue 28: measurements that decide the design of model v4).

1. **Normalisation** of every data set's reference doses: D97 (the 3rd percentile), D95 and the mean
   dose of the high PTV (:func:`~dosediffusion.roles.high_ptv`) divided by its prescription, mean / sd /
   min / max over the cases (OpenKBP ``train`` and ``validation``; synth-v2 ``train`` / ``val`` / ``test``;
   the TG-119 phantom cases), and OpenKBP's PTV70 mean dose and D95 in Gy. The GDP-HMM MAE scales the
   reference (not the prediction) to D97 = prescription, so a reference with D97/Rx ≠ 1 is itself
   off by that factor: the row ``CT grid (no model grid)`` of part 2 is that floor alone.
2. **The grid floor**: each held-out case's reference dose (OpenKBP ``validation``, synth-v2 ``test``,
   TG-119) through :func:`~dosediffusion.conditioning.prepare.prepare` (its ``dose`` channel only; the
   other channels do not touch the dose) onto a candidate model grid and back to the CT grid with
   :func:`~dosediffusion.conditioning.restore.restore`: what a model on that grid scores with a perfect
   prediction. Scored as each data set is judged: the OpenKBP dose score and DVH score
   (:func:`~dosediffusion.metrics.openkbp.openkbp_scores`, the DVH score pooled over every point of every
   patient) and the GDP-HMM MAE (:func:`~dosediffusion.metrics.evaluation.gdp_hmm_mae`), twice: of the
   case's own dose (``MAE``) and of its dose scaled to D97 = Rx as the GDP-HMM references are (``MAE
   norm.``: the grid's loss alone). These are the figures
   :func:`~dosediffusion.metrics.case_evaluation.evaluate_dose` reports, called directly to skip its
   gamma and SSIM. Also per setting: the crop, its voxel count and float32 MiB per channel, and the
   percentage of body voxels and of counted voxels (OpenKBP: the possible-dose mask; GDP-HMM: body
   voxels with reference > 5 Gy) outside the field of view.

   The settings: the shipped demo's own preprocessing in full (``Resources/Models/demo/preprocessing.json``;
   for a residual model the true dose's residual over its corrected prior, restored onto that prior);
   isotropic 4, 3 and 2.5 mm with a crop that holds every held-out case's whole body around the plan
   isocentre (the crop centre ``prepare`` uses), rounded up to multiples of 16 on every axis; the
   OpenKBP native grid (128³ on each CT's own lattice: exact copies, no interpolation) and 128³ at
   OpenKBP's median voxel size 3.906 × 3.906 × 2.5 mm (resampled, for the other data sets).
3. **Low-pass floors** ("prior + smooth correction"): isotropic 5, 6, 8 and 10 mm with a whole-body
   crop: a model that gets only the detail a grid that coarse holds; how much of each score lives in
   finer detail.

Every setting is a :class:`~dosediffusion.conditioning.prepare.PrepareConfig`: the repository's
preprocessing expresses each of them, and its rows are the real prepare/restore path (linear resampling
both ways where the grid is off the CT lattice). Each resampled setting, the demo's included, has a second
row, ``[B-spline]``: the same grid with ``dose_interpolation: bspline`` (the cubic B-spline both ways): how
much of the floor is the linear kernel's rather than the grid's.
Prints the tables and writes the means and the per-case rows as JSON.

Run: ``python Testing/benchmarks/resolution_floor.py [--max-cases N] [--skip-normalisation] [--demo-only]
[--out FILE]`` (a few minutes on two cores; ``--max-cases`` limits every data set's held-out cases, for a quick
look; ``--demo-only`` measures only the shipped demo's grid, for a new demo model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dosediffusion.case import Case
from dosediffusion.conditioning.prepare import PrepareConfig, crop_grid, from_crop, prepare
from dosediffusion.conditioning.restore import restore
from dosediffusion.metrics.evaluation import gdp_hmm_mae
from dosediffusion.metrics.openkbp import dvh_score, openkbp_scores
from dosediffusion.roles import high_ptv
from dosediffusion_training.data.dataset import list_cases, load_any

ROOT = Path(__file__).resolve().parents[2]
OPENKBP = ROOT.parent / "shared" / "data" / "openkbp"
SYNTH = ROOT / "DoseDiffusionTraining" / "datasets" / "synth-v2"
TG119 = ROOT / "DoseDiffusionTraining" / "datasets" / "tg119"
DEMO_PREPROCESSING = ROOT / "DoseDiffusion" / "Resources" / "Models" / "demo" / "preprocessing.json"
#: OpenKBP's median voxel size (x, y, z) mm over its 202 train and validation patients.
OPENKBP_SPACING = (3.906, 3.906, 2.5)
#: The GDP-HMM MAE's dose threshold (Gy): its counted voxels are body voxels above it.
GDP_HMM_THRESHOLD_GY = 5.0
CHANNELS_V4 = 8  # the eight modalities of prepare.MODALITY_BUILDERS, for the memory column
FINE_MM = (4.0, 3.0, 2.5)
LOW_PASS_MM = (5.0, 6.0, 8.0, 10.0)
SCORES = ("dose_score_gy", "dvh_score_gy", "gdp_hmm_mae_gy", "gdp_hmm_mae_norm_gy", "body_outside_percent",
          "counted_outside_percent")


def held_out(max_cases: int | None) -> dict[str, list[Path]]:
    """The held-out cases of each data set (their paths)."""
    return {"OpenKBP validation": list_cases(OPENKBP / "validation")[:max_cases],
            "synth-v2 test": list_cases(SYNTH / "compact", SYNTH / "split.json", "test")[:max_cases],
            "TG-119": sorted(TG119.glob("*.case.npz"))[:max_cases]}


def normalisation_sets() -> dict[str, list[Path]]:
    """Every data set whose reference doses part 1 describes."""
    sets = {"OpenKBP train": list_cases(OPENKBP / "train"), "OpenKBP validation": list_cases(OPENKBP / "validation")}
    for split in ("train", "val", "test"):
        sets[f"synth-v2 {split}"] = list_cases(SYNTH / "compact", SYNTH / "split.json", split)
    sets["TG-119"] = sorted(TG119.glob("*.case.npz"))
    return sets


# --- part 1: the reference doses' normalisation ---------------------------------------------------------------------

def normalisation_row(case: Case) -> dict:
    """The high PTV's D97, D95 and mean dose of ``case``'s reference dose, in Gy and over its prescription."""
    high = high_ptv(case)
    voxels = np.asarray(case.dose, dtype=np.float64)[high.mask]
    rx = float(high.prescription_gy)
    d97, d95, mean = float(np.percentile(voxels, 3)), float(np.percentile(voxels, 5)), float(voxels.mean())
    return {"case": case.case_id, "ptv": high.name, "rx_gy": rx, "d97_gy": d97, "d95_gy": d95, "mean_gy": mean,
            "d97_over_rx": d97 / rx, "d95_over_rx": d95 / rx, "mean_over_rx": mean / rx}


def stats(values) -> dict:
    """Mean, sd (population), min and max of ``values``."""
    values = np.asarray(list(values), dtype=np.float64)
    return {"mean": float(values.mean()), "sd": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def normalisation(sets: dict[str, list[Path]]) -> dict:
    """Part 1 for every data set: per-case rows and their statistics."""
    out = {}
    for name, paths in sets.items():
        start = time.perf_counter()
        rows = [normalisation_row(load_any(p)) for p in paths]
        out[name] = {"count": len(rows), "rows": rows,
                     **{k: stats(r[k] for r in rows) for k in ("d97_over_rx", "d95_over_rx", "mean_over_rx",
                                                                "d95_gy", "mean_gy")}}
        print(f"  {name}: {len(rows)} cases in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def print_normalisation(result: dict) -> None:
    print("\n1. Reference doses: the high PTV's D97, D95 and mean dose over its prescription")
    print(f"{'data set':<22}{'n':>5}" + "".join(f"{c:>30}" for c in ("D97/Rx mean±sd [min, max]",
                                                                  "D95/Rx mean±sd [min, max]",
                                                                  "mean/Rx mean±sd [min, max]")))
    for name, r in result.items():
        print(f"{name:<22}{r['count']:>5}" + "".join(
            f"{r[k]['mean']:>12.3f}±{r[k]['sd']:.3f} [{r[k]['min']:.3f}, {r[k]['max']:.3f}]"
            for k in ("d97_over_rx", "d95_over_rx", "mean_over_rx")))
    for name in ("OpenKBP train", "OpenKBP validation"):
        if name in result:
            r = result[name]
            print(f"{name}: PTV70 mean dose {r['mean_gy']['mean']:.2f} ± {r['mean_gy']['sd']:.2f} Gy "
                  f"[{r['mean_gy']['min']:.2f}, {r['mean_gy']['max']:.2f}], D95 {r['d95_gy']['mean']:.2f} ± "
                  f"{r['d95_gy']['sd']:.2f} Gy [{r['d95_gy']['min']:.2f}, {r['d95_gy']['max']:.2f}]")


# --- part 2: the grid floor -----------------------------------------------------------------------------------------

def body_half_extent_mm(case: Case) -> np.ndarray:
    """How far (mm, along the CT's x, y, z axes) the body's voxels, each with its half voxel, reach from the
    centre ``prepare`` puts the crop on (the first beam's isocentre, else the PTVs' centroid)."""
    centre = np.asarray(crop_grid(case, PrepareConfig(crop_shape=(1, 1, 1), spacing_mm=(1.0, 1.0, 1.0)))[0].origin)
    points = case.grid.index_to_physical(np.argwhere(case.body.mask))
    along = (points - centre) @ case.grid.matrix  # (n, 3) x, y, z along the CT's axes
    return np.abs(along).max(axis=0) + np.asarray(case.grid.spacing) / 2.0


def whole_body_crop(half_extent_mm: np.ndarray, spacing_mm: float, multiple: int = 16) -> tuple[int, int, int]:
    """The (z, y, x) crop at ``spacing_mm`` that holds ``half_extent_mm`` (x, y, z) either side of its
    centre, each count rounded up to ``multiple``."""
    need = [math.ceil(2.0 * h / spacing_mm - 1e-6) for h in half_extent_mm[::-1]]
    return tuple(int(multiple * math.ceil(n / multiple)) for n in need)


def settings(half_extent_mm: np.ndarray) -> dict[str, PrepareConfig | None]:
    """The candidate grids by name; None is the CT grid itself (no model grid). Dose channel only, but for
    the shipped demo's own settings (all of them, so a residual model's floor includes its prior)."""
    demo = PrepareConfig.from_dict(json.loads(DEMO_PREPROCESSING.read_text()))
    out: dict[str, PrepareConfig | None] = {"CT grid (no model grid)": None}

    def add(name, config, bspline=True):
        out[name] = config
        if bspline:
            out[f"{name} [B-spline]"] = replace(config, dose_interpolation="bspline")

    def dose_only(crop, spacing):
        return PrepareConfig(crop_shape=tuple(int(n) for n in crop), spacing_mm=spacing, modalities=("dose",))

    # the demo's settings in full: with a residual target, the true dose's residual restored onto its prior
    spacing = "CT lattice" if demo.spacing_mm is None else f"{demo.spacing_mm[0]:g} mm"
    add(f"demo {'x'.join(map(str, demo.crop_shape))} @ {spacing}", demo, bspline=demo.spacing_mm is not None)
    for mm in FINE_MM:
        add(f"iso {mm:g} mm, whole body", dose_only(whole_body_crop(half_extent_mm, mm), (mm, mm, mm)))
    add("native 128^3 (CT lattice)", dose_only((128, 128, 128), None), bspline=False)
    add("128^3 @ 3.906x3.906x2.5 mm", dose_only((128, 128, 128), OPENKBP_SPACING))
    for mm in LOW_PASS_MM:
        add(f"low-pass iso {mm:g} mm, whole body", dose_only(whole_body_crop(half_extent_mm, mm), (mm, mm, mm)))
    return out


def counted_mask(case: Case, dataset: str) -> np.ndarray:
    """The voxels the data set's metric counts: OpenKBP's possible-dose mask; GDP-HMM's body voxels whose
    reference (scaled to D97 = Rx) exceeds the threshold."""
    if dataset.startswith("OpenKBP"):
        return case.dose_support()
    high = high_ptv(case)
    scale = high.prescription_gy / (float(np.percentile(case.dose[high.mask], 3)) + 1e-5)
    return case.body.mask & (case.dose * scale > GDP_HMM_THRESHOLD_GY)


def floor_row(case: Case, dataset: str, config: PrepareConfig | None) -> dict:
    """``case``'s reference dose through ``config``'s grid and back, scored against itself."""
    ref = np.asarray(case.dose, dtype=np.float32)
    body, counted = case.body.mask, counted_mask(case, dataset)
    if config is None:
        pred, inside = ref, np.ones(ref.shape, bool)
        grid = case.grid
    else:
        inputs = prepare(case, config)
        pred = restore(inputs.channels["dose"], case, inputs)
        inside = from_crop(np.ones(inputs.crop_grid.shape, np.float32), case, inputs) > 0.5
        grid = inputs.crop_grid
    high = high_ptv(case)
    scale = high.prescription_gy / (float(np.percentile(ref[high.mask], 3)) + 1e-5)
    kbp = openkbp_scores(pred, ref, case)
    return {"case": case.case_id, "crop_shape": list(grid.shape), "spacing_mm": list(grid.spacing),
            "dose_score_gy": kbp["dose_score_gy"], "dvh_score_gy": kbp["dvh_score_gy"], "dvh_points": kbp["dvh_points"],
            "gdp_hmm_mae_gy": gdp_hmm_mae(pred, ref, body, high.mask, high.prescription_gy),
            "gdp_hmm_mae_norm_gy": gdp_hmm_mae(pred * np.float32(scale), ref, body, high.mask, high.prescription_gy),
            "body_outside_percent": 100.0 * np.count_nonzero(body & ~inside) / max(np.count_nonzero(body), 1),
            "counted_outside_percent": 100.0 * np.count_nonzero(counted & ~inside) / max(np.count_nonzero(counted), 1)}


def summarise(rows: list[dict]) -> dict:
    """Means over cases (the DVH score pooled over every point), the worst case of each score, and the grid."""
    means = {k: float(np.mean([r[k] for r in rows])) for k in SCORES}
    means["dvh_score_gy"] = dvh_score(r["dvh_points"] for r in rows)
    means["worst"] = {k: float(np.max([r[k] for r in rows])) for k in SCORES if k != "dvh_score_gy"}
    shapes = {tuple(r["crop_shape"]) for r in rows}
    voxels = max(int(np.prod(s)) for s in shapes)
    means.update({"crop_shapes": sorted(list(s) for s in shapes), "voxels": voxels,
                  "mib_per_channel": voxels * 4 / 2**20, "mib_per_case_8_channels": voxels * 4 * CHANNELS_V4 / 2**20})
    return means


def grid_floor(cases: dict[str, list[Case]], configs: dict[str, PrepareConfig | None]) -> dict:
    """Part 2 and 3: per data set and setting, the per-case rows and their summary."""
    out: dict = {}
    for dataset, items in cases.items():
        out[dataset] = {}
        for name, config in configs.items():
            start = time.perf_counter()
            rows = [floor_row(case, dataset, config) for case in items]
            summary = summarise(rows)
            for row in rows:  # the points are in the pooled DVH score; the JSON keeps each case's scores
                del row["dvh_points"]
            out[dataset][name] = {"mean": summary, "rows": rows, "config": None if config is None else config.to_dict()}
            m = out[dataset][name]["mean"]
            print(f"  {dataset} | {name}: dose score {m['dose_score_gy']:.3f}, DVH {m['dvh_score_gy']:.3f}, MAE "
                  f"{m['gdp_hmm_mae_gy']:.3f} (norm. {m['gdp_hmm_mae_norm_gy']:.3f}) Gy; "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
    return out


def print_floor(result: dict, extents: dict) -> None:
    print("\n2./3. The grid floor: each held-out case's reference dose through the model grid and back (Gy; "
          "mean over cases, worst case in brackets; DVH pooled)")
    for dataset, by_setting in result.items():
        e = extents[dataset]
        print(f"\n{dataset} ({len(next(iter(by_setting.values()))['rows'])} cases): largest body half-extent "
              f"from the isocentre {e[0]:.0f} x {e[1]:.0f} x {e[2]:.0f} mm (x, y, z)")
        print(f"{'setting':<42}{'crop (z,y,x)':>15}{'Mvox':>7}{'MiB/ch':>8}{'body out%':>10}{'counted out%':>13}"
              f"{'dose score':>17}{'DVH score':>10}{'GDP-HMM MAE':>17}{'MAE norm.':>17}")
        for name, item in by_setting.items():
            m, w = item["mean"], item["mean"]["worst"]
            shape = "x".join(map(str, m["crop_shapes"][0])) + ("+" if len(m["crop_shapes"]) > 1 else "")
            print(f"{name:<42}{shape:>15}{m['voxels'] / 1e6:>7.2f}{m['mib_per_channel']:>8.1f}"
                  f"{m['body_outside_percent']:>10.2f}{m['counted_outside_percent']:>13.3f}"
                  f"{m['dose_score_gy']:>8.3f} [{w['dose_score_gy']:5.2f}]{m['dvh_score_gy']:>10.3f}"
                  f"{m['gdp_hmm_mae_gy']:>8.3f} [{w['gdp_hmm_mae_gy']:5.2f}]"
                  f"{m['gdp_hmm_mae_norm_gy']:>8.3f} [{w['gdp_hmm_mae_norm_gy']:5.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-cases", type=int, default=None, help="at most this many held-out cases per data set")
    parser.add_argument("--skip-normalisation", action="store_true", help="part 2 and 3 only")
    parser.add_argument("--demo-only", action="store_true",
                        help="of part 2, only the CT grid and the shipped demo's rows (a new demo model's floor)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "resolution_floor.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    result: dict = {"cores": os.cpu_count()}
    if not args.skip_normalisation:
        print("1. reading every data set's reference doses", flush=True)
        result["normalisation"] = normalisation(normalisation_sets())
    print("2. loading the held-out cases", flush=True)
    cases = {name: [load_any(p) for p in paths] for name, paths in held_out(args.max_cases).items()}
    per_set = {name: np.max([body_half_extent_mm(c) for c in items], axis=0) for name, items in cases.items()}
    half = np.max(list(per_set.values()), axis=0)
    result["body_half_extent_mm"] = {name: [float(v) for v in e] for name, e in per_set.items()}
    result["whole_body_crop"] = {
        f"{mm:g}": {"all": whole_body_crop(half, mm), **{n: whole_body_crop(e, mm) for n, e in per_set.items()}}
        for mm in (*FINE_MM, *LOW_PASS_MM)}
    print("   largest body half-extent from the isocentre (x, y, z mm): "
          + "; ".join(f"{n} {e[0]:.0f}, {e[1]:.0f}, {e[2]:.0f}" for n, e in per_set.items()), flush=True)
    configs = settings(half)
    if args.demo_only:
        configs = {name: config for name, config in configs.items() if config is None or name.startswith("demo ")}
    result["floor"] = grid_floor(cases, configs)
    result["seconds"] = time.perf_counter() - start
    if "normalisation" in result:
        print_normalisation(result["normalisation"])
    print_floor(result["floor"], per_set)
    print("\nwhole-body crop (z, y, x) per spacing, multiples of 16 (all held-out cases; per data set):")
    for mm, crops in result["whole_body_crop"].items():
        print(f"  {mm:>4} mm: " + "; ".join(f"{n} {'x'.join(map(str, c))}" for n, c in crops.items()))
    print(f"{result['seconds']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
