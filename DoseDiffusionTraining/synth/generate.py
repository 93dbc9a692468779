"""``dosediffusion-train synth``: random phantoms, their plans' doses from pyRadPlan, written twice.

For seed ``S`` and ``N`` cases, case ``i`` is :func:`~.phantom.make_phantom` of seed ``S + i`` and
site ``sites[(S + i) % len(sites)]`` (the sites take turns by seed), its high PTV wrapping an
organ at risk with probability ``concave_share``; its dose comes from :func:`~.engine.compute_dose`
(arcs as beams every ~20° of their control points). Each case is written as a DICOM RT folder
``OUT/dicom/<case>/`` (CT, RTSTRUCT, RTPLAN, RTDOSE) and as ``OUT/compact/<case>.case.npz``. The
run is resumable (a case whose compact file exists is skipped; the compact file is written last)
and a case that fails is logged to ``OUT/failures.log`` and skipped. ``OUT/synth.json`` records the
settings, the sites among them; each case's site is also in its ``meta["BodyPartExamined"]``
(CHEST, HEADNECK, PELVIS), kept by the compact file (the DICOM writer does not write it).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from dosediffusion import __version__
from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.io.compact import SUFFIX, write_compact
from dosediffusion.io.dicom_write import write_case_dicom
from dosediffusion_training.synth.engine import compute_dose
from dosediffusion_training.synth.phantom import SITES, make_phantom

ARC_SAMPLING_DEG = 20.0
#: Share of the cases whose high PTV wraps an organ at risk (a C-shape) by default.
CONCAVE_SHARE = 0.3


def engine_beams(case: Case) -> list[tuple[float, float]]:
    """(gantry, couch) of every beam; arcs as one beam per control point, thinned to at least
    :data:`ARC_SAMPLING_DEG` degrees apart (the engine's time grows with the number of beams)."""
    beams = []
    for b in case.beams:
        angles = b.control_point_gantry_deg
        if b.is_arc and len(angles) > 1:
            step = abs((angles[1] - angles[0] + 180) % 360 - 180)
            angles = angles[:: max(1, math.ceil(ARC_SAMPLING_DEG / max(step, 1e-6) - 1e-9))]
        beams += [(g, b.couch_deg) for g in angles]
    return beams


def plan_case(case: Case, max_iterations: int = 300) -> tuple[Case, dict]:
    """The case with the optimised dose of its plan (Gy, total)."""
    structures = [(s.name, s.mask, s.role, s.prescription_gy or 0.0) for s in case.structures.values()
                  if s.role in ("ptv", "oar", "body")]
    dose, info = compute_dose(case.ct, case.grid.spacing, case.grid.origin, structures, case.prescription.fractions,
                              engine_beams(case), case.beams[0].isocenter_mm, max_iterations=max_iterations)
    case.dose = dose
    return case, info


def site_of(seed: int, sites: tuple[str, ...]) -> str:
    """The site of the case of ``seed``: the ``sites`` take turns by seed."""
    return sites[seed % len(sites)]


def generate(out: Path, n: int, seed: int, spacing_mm: tuple[float, float, float], shape: tuple[int, int, int],
             max_iterations: int = 300, sites: tuple[str, ...] = tuple(SITES),
             concave_share: float = CONCAVE_SHARE) -> tuple[int, int]:
    """Make ``n`` cases of ``sites`` (names of :data:`~.phantom.SITES`) into ``out``; returns (written, failed)."""
    unknown = [s for s in sites if s not in SITES]
    if not sites or unknown:
        raise InputError(f"unknown or no synthetic sites {unknown or list(sites)}; known: {', '.join(SITES)}")
    if not 0.0 <= concave_share <= 1.0:
        raise InputError(f"concave_share must lie in [0, 1], got {concave_share}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"generator": "dosediffusion_training.synth", "version": __version__, "seed": seed, "n": n,
                "spacing_mm": list(spacing_mm), "shape": list(shape), "max_iterations": max_iterations,
                "sites": list(sites), "site_rule": "sites[seed % len(sites)]", "concave_share": concave_share}
    (out / "synth.json").write_text(json.dumps(settings, indent=2))
    written = failed = 0
    for i in tqdm(range(n), desc="synthetic cases", unit="case"):
        case_seed = seed + i
        name = f"synth_{case_seed:05d}"
        compact = out / "compact" / f"{name}{SUFFIX}"
        if compact.is_file():
            continue
        start = time.perf_counter()
        try:
            phantom = make_phantom(case_seed, spacing_mm, shape, site_of(case_seed, sites), concave_share)
            case, info = plan_case(phantom, max_iterations)
            dicom = out / "dicom" / name
            shutil.rmtree(dicom, ignore_errors=True)  # a folder from an interrupted run
            dicom.parent.mkdir(parents=True, exist_ok=True)
            write_case_dicom(case, dicom)
            write_compact(case, compact)
        except (InputError, ValueError, RuntimeError) as error:
            failed += 1
            with (out / "failures.log").open("a") as log:
                log.write(f"{name} (seed {case_seed}): {error}\n")
            continue
        written += 1
        tqdm.write(f"{name} ({case.meta['BodyPartExamined']}): {len(case.beams)} beams, Rx {case.prescription.levels_gy} Gy, "
                   f"max {case.dose.max():.1f} Gy, {time.perf_counter() - start:.0f} s "
                   f"(engine {info.get('seconds_total', 0):.0f} s)")
    return written, failed
