"""Benchmark: the ray-traced prior dose against pyRadPlan's open field of the same beams, on the TG-119 cases.

The prior (:func:`dosediffusion.conditioning.prior_dose.prior_dose`, default settings) of each TG-119 case
(``DoseDiffusionTraining/datasets/tg119``: 5 and 9 coplanar fields, one arc) is compared with pyRadPlan 0.5.0's
open-field dose (:func:`dosediffusion_training.synth.engine.compute_dose` with ``open_field=True``: every bixel
on the targets' projection weight 1, no optimisation; SVD pencil beam, 5 mm dose grid) of the same directions
(:func:`~dosediffusion.conditioning.prior_dose.beam_directions`: the static fields, the arc's control points
thinned to ≥ 20°). pyRadPlan's aperture comes in two forms: ``no margin`` (the bixels on the projection of the
target itself, the prior's own aperture) and ``margin`` (pyRadPlan's stf rule for IMRT, the target dilated by
max(bixel width, voxel size) per axis: 6 mm in x and y, 5 mm in z here).

Both doses are scaled to D97(high PTV) = Rx (the prior is made so; pyRadPlan's open field is scaled by
:func:`~dosediffusion.metrics.evaluation.normalise_to_d97`). Reported per case and reference: MAE (Gy) in the
body, in the body outside the PTV and in the PTV, and the 3 %/3 mm global gamma pass rate (10 % cut-off of the
reference maximum; :func:`dosediffusion.metrics.gamma.gamma_index`) of

- ``prior``: the prior as it is;
- ``prior μ=0, s=1`` (trivial): the same rays without attenuation and build-up (flat depth dose): what the
  depth model adds;
- ``Rx in PTV`` (trivial): Rx inside the PTV, zero elsewhere: what the beam paths add;
- ``prior μ=0.0038, s=0.3`` (a proposal): attenuation and surface dose fitted to pyRadPlan's single-beam
  depth dose on this phantom (see the results' ``single_beam``); it matches that depth dose better, yet lowers
  the gamma pass rate of the multi-beam sums against the no-margin aperture (71.7 / 79.9 / 83.6 % against
  78.9 / 83.2 / 86.8 %), so it is not adopted.

Also a single-beam check (gantry 0 of the 5-field case): central-axis depth dose (normalised at 100 mm
depth), 50 % field widths and 80-20 % penumbrae at the isocentre depth, prior against both apertures.

Run: ``python Testing/benchmarks/prior_vs_pyradplan.py [--cases DoseDiffusionTraining/datasets/tg119]
[--threads 2] [--device cpu]`` (needs pyRadPlan's environment: ``bash DoseDiffusionTraining/synth/setup_engine_env.sh``;
6-10 min on 2 shared cores); prints a table and writes ``Testing/benchmarks/results/prior_vs_pyradplan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dosediffusion.case import Case
from dosediffusion.conditioning.prior_dose import PriorDoseConfig, beam_directions, prior_dose
from dosediffusion.io.compact import read_compact
from dosediffusion.metrics.evaluation import masked_mae, normalise_to_d97
from dosediffusion.metrics.gamma import gamma_index
from dosediffusion.roles import high_ptv
from dosediffusion_training.synth.engine import compute_dose

ROOT = Path(__file__).resolve().parents[2]
TG119 = ROOT / "DoseDiffusionTraining" / "datasets" / "tg119"
FLAT = PriorDoseConfig(mu_per_mm=0.0, surface_fraction=1.0)
PROPOSAL = PriorDoseConfig(mu_per_mm=0.0038, surface_fraction=0.3)
DEPTHS_MM = (1.5, 4.5, 7.5, 13.5, 19.5, 31.5, 49.5, 70.5, 100.5, 130.5)


def open_field(case: Case, target_margin: bool,
               arc_step_deg: float = PriorDoseConfig().arc_step_deg) -> tuple[np.ndarray, dict]:
    """pyRadPlan's open-field dose (z, y, x) of the prior's directions, in pyRadPlan's units (not normalised),
    and the engine's info."""
    directions = beam_directions(case.beams, arc_step_deg)
    isocentres = {d[2] for d in directions}
    if len(isocentres) != 1:
        raise ValueError(f"{case.case_id}: the engine takes one isocentre, the beams have {len(isocentres)}")
    structures = [(s.name, s.mask, s.role, s.prescription_gy or 0.0) for s in case.structures.values()
                  if s.role in ("ptv", "oar", "body")]
    return compute_dose(case.ct, case.grid.spacing, case.grid.origin, structures, case.prescription.fractions,
                        [(g, c) for g, c, _, _ in directions], directions[0][2], open_field=True,
                        target_margin=target_margin)


def compare(dose: np.ndarray, reference: np.ndarray, case: Case) -> dict:
    """MAE (Gy) in the body, outside the high PTV and inside it, and the 3 %/3 mm global gamma pass rate (%) of
    ``dose`` against ``reference`` (both (z, y, x) Gy on ``case.grid``)."""
    body = case.dose_support()
    body = np.ones(case.grid.shape, bool) if body is None else np.asarray(body, bool)
    ptv = high_ptv(case).mask
    start = time.perf_counter()
    gamma = gamma_index(reference, dose, case.grid.spacing, dose_percent=3.0, dta_mm=3.0, pass_rate_only=True)
    return {"mae_body_gy": masked_mae(dose, reference, body), "mae_outside_ptv_gy": masked_mae(dose, reference, body & ~ptv),
            "mae_ptv_gy": masked_mae(dose, reference, ptv & body), "gamma_3_3_percent": gamma.pass_rate_percent,
            "gamma_points": gamma.evaluated_voxels, "gamma_s": time.perf_counter() - start}


def timed_prior(case: Case, config: PriorDoseConfig, device: str, repeats: int) -> tuple[np.ndarray, float]:
    """The prior and the median wall-clock seconds of ``repeats`` runs after a warm-up."""
    dose = prior_dose(case, config, device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prior_dose(case, config, device)
        times.append(time.perf_counter() - start)
    return dose, float(np.median(times))


def profile_edges(profile: np.ndarray, spacing_mm: float) -> tuple[float, float]:
    """(50 % width, mean 80-20 % penumbra) in mm of a 1-D profile with one plateau (linear interpolation)."""
    profile = profile / profile.max()

    def edges(level: float) -> tuple[float, float]:
        above = np.nonzero(profile >= level)[0]
        lo, hi = above[0], above[-1]
        return (lo - (profile[lo] - level) / (profile[lo] - profile[lo - 1]),
                hi + (profile[hi] - level) / (profile[hi] - profile[hi + 1]))

    (l50, r50), (l80, r80), (l20, r20) = edges(0.5), edges(0.8), edges(0.2)
    return float((r50 - l50) * spacing_mm), float(((l80 - l20) + (r20 - r80)) / 2 * spacing_mm)


def single_beam(case: Case, device: str) -> dict:
    """Depth dose and lateral profiles of gantry 0 (from anterior, along +y) through the isocentre."""
    one = replace(case, beams=[case.beams[0]])
    iso = np.asarray(case.beams[0].isocenter_mm, dtype=float)
    iz, iy, ix = (int(round(v)) for v in case.grid.physical_to_index(iso[None])[0])
    body = case.structures["BODY"].mask[iz, :, ix]
    y0 = int(np.argmax(body))
    dy, dx, dz = case.grid.spacing[1], case.grid.spacing[0], case.grid.spacing[2]
    doses = {"prior": prior_dose(one, PriorDoseConfig(), device), "prior μ=0.0038, s=0.3": prior_dose(one, PROPOSAL, device)}
    for margin in (False, True):
        doses[f"pyRadPlan {'margin' if margin else 'no margin'}"] = open_field(one, margin)[0]
    out = {"beam": "gantry 0, couch 0 (TG-119 5-field case's first beam)", "depth_dose_normalised_at_mm": 100.5, "rows": {}}
    ref = y0 + int(round((100.5 - dy / 2) / dy))
    for name, dose in doses.items():
        width_x, pen_x = profile_edges(dose[iz, iy, :], dx)
        width_z, pen_z = profile_edges(dose[:, iy, ix], dz)
        depth = {f"{d:g}": float(dose[iz, y0 + int(round((d - dy / 2) / dy)), ix] / dose[iz, ref, ix]) for d in DEPTHS_MM}
        out["rows"][name] = {"depth_dose": depth, "width50_x_mm": width_x, "width50_z_mm": width_z,
                             "penumbra80_20_x_mm": pen_x, "penumbra80_20_z_mm": pen_z}
    ptv = high_ptv(case).mask
    xs, zs = np.nonzero(ptv.any(axis=(0, 1)))[0], np.nonzero(ptv.any(axis=(1, 2)))[0]
    out["ptv_extent_x_mm"] = float((xs[-1] - xs[0] + 1) * dx)
    out["ptv_extent_z_mm"] = float((zs[-1] - zs[0] + 1) * dz)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default=str(TG119), help="folder of the TG-119 compact files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed prior runs per case (after a warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, timing, cases = [], [], {}
    for path in sorted(Path(args.cases).glob("*.case.npz")):
        case = read_compact(path)
        cases[case.case_id] = case
        ptv = high_ptv(case)
        prior, prior_s = timed_prior(case, PriorDoseConfig(), args.device, args.repeats)
        candidates = {"prior": prior, "prior μ=0, s=1": prior_dose(case, FLAT, args.device),
                      "Rx in PTV": np.where(ptv.mask, float(ptv.prescription_gy), 0.0).astype(np.float32),
                      "prior μ=0.0038, s=0.3": prior_dose(case, PROPOSAL, args.device)}
        directions = len(beam_directions(case.beams, PriorDoseConfig().arc_step_deg))
        times = {"case": case.case_id, "directions": directions, "prior_s": prior_s}
        for margin in (False, True):
            aperture = "margin" if margin else "no margin"
            dose, info = open_field(case, margin)
            reference = normalise_to_d97(dose, ptv.mask, float(ptv.prescription_gy))
            times[f"pyradplan_{aperture.replace(' ', '_')}_s"] = info["seconds_total"]
            times[f"pyradplan_{aperture.replace(' ', '_')}_dose_calc_s"] = info["seconds_dose"]
            times[f"pyradplan_{aperture.replace(' ', '_')}_bixels"] = info["num_bixels"]
            for name, candidate in candidates.items():
                rows.append({"case": case.case_id, "reference": f"pyRadPlan open field, {aperture}", "dose": name,
                             **compare(candidate, reference, case)})
        timing.append(times)
    beam = single_beam(cases["tg119_5_fields"], args.device) if "tg119_5_fields" in cases else None

    print(f"{'case':<16} {'reference':<14} {'dose':<22} {'MAE body':>9} {'MAE out PTV':>11} {'MAE PTV':>8} {'γ 3%/3mm':>9}")
    for r in rows:
        print(f"{r['case']:<16} {r['reference'].split(', ')[1]:<14} {r['dose']:<22} {r['mae_body_gy']:>9.2f} "
              f"{r['mae_outside_ptv_gy']:>11.2f} {r['mae_ptv_gy']:>8.2f} {r['gamma_3_3_percent']:>8.1f}%")
    print(f"\n{'case':<16} {'directions':>10} {'prior s':>8} {'pyRadPlan s (no margin)':>24} {'(margin)':>9} {'bixels':>12}")
    for t in timing:
        print(f"{t['case']:<16} {t['directions']:>10} {t['prior_s']:>8.2f} {t['pyradplan_no_margin_s']:>24.1f} "
              f"{t['pyradplan_margin_s']:>9.1f} {t['pyradplan_no_margin_bixels']:>5}/{t['pyradplan_margin_bixels']}")
    if beam:
        names = list(beam["rows"])
        print(f"\nsingle beam ({beam['beam']}); PTV extent x {beam['ptv_extent_x_mm']:.1f} mm, z {beam['ptv_extent_z_mm']:.1f} mm")
        print(f"{'depth mm':>9} " + " ".join(f"{n:>22}" for n in names))
        for depth in beam["rows"][names[0]]["depth_dose"]:
            print(f"{depth:>9} " + " ".join(f"{beam['rows'][n]['depth_dose'][depth]:>22.3f}" for n in names))
        for key in ("width50_x_mm", "width50_z_mm", "penumbra80_20_x_mm", "penumbra80_20_z_mm"):
            print(f"{key:>9} " + " ".join(f"{beam['rows'][n][key]:>22.1f}" for n in names))
    out = Path(__file__).parent / "results" / "prior_vs_pyradplan.json"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    out.write_text(json.dumps({
        "device": device, "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
        "normalisation": "both doses D97(high PTV) = Rx", "gamma": "3 %/3 mm global, 10 % cut-off of the reference maximum",
        "prior_config": PriorDoseConfig().__dict__, "proposal_config": PROPOSAL.__dict__,
        "rows": rows, "timing": timing, "single_beam": beam}, indent=2, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
