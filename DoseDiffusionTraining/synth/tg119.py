"""The AAPM TG-119 C-shape phantom (as bundled with pyRadPlan) as a Case with a chosen beam set.

The C-shaped ``OuterTarget`` is the PTV at 50 Gy in 25 fractions (TG-119's C-shape goals), the
``Core`` the organ at risk, ``BODY`` the body. Beam sets for the accuracy benchmark:
:data:`SETUPS` (equispaced coplanar fields as in TG-119's IMRT plans, and an arc). The dose comes
from :func:`~.generate.plan_case` like every synthetic case's.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dosediffusion.case import Beam, Case, Prescription, Structure
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.mask_contours import mask_to_contours
from dosediffusion_training.synth.engine import HERE, engine_python

RX_GY, FRACTIONS = 50.0, 25
ROLES = {"OuterTarget": ("PTV_50", "ptv"), "Core": ("Core", "oar"), "BODY": ("BODY", "body")}
SETUPS = {
    "TG119 5 fields": [(float(g), 0.0) for g in range(0, 360, 72)],
    "TG119 9 fields": [(float(g), 0.0) for g in range(0, 360, 40)],
    "TG119 arc": "arc",
}


def _export() -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "tg119.npz"
        done = subprocess.run([str(engine_python()), "-I", str(HERE / "tg119_export.py"), str(out)],
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise InputError(f"TG119 export failed: {done.stderr.strip()[-500:]}")
        with np.load(out, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def tg119_case(setup: str) -> Case:
    """The TG119 phantom with the beams of ``SETUPS[setup]`` (no dose yet)."""
    if setup not in SETUPS:
        raise InputError(f"unknown TG119 setup {setup!r}; known: {', '.join(SETUPS)}")
    data = _export()
    grid = Grid(data["ct_hu"].shape, tuple(data["spacing_mm"]), tuple(data["origin_mm"]))
    structures = {}
    for name, mask in zip(data["mask_names"], data["masks"], strict=True):
        ours, role = ROLES[str(name)]
        structures[ours] = Structure(ours, mask, role, RX_GY if role == "ptv" else None, mask_to_contours(mask, grid))
    iso = tuple(float(round(v, 1)) for v in grid.index_to_physical(np.argwhere(structures["PTV_50"].mask).mean(axis=0)))
    if SETUPS[setup] == "arc":
        angles = tuple(float(a) for a in np.arange(181.0, 181.0 + 360.0, 10.0) % 360)
        beams = [Beam("Arc1", angles[0], 30.0, 0.0, iso, angles, "CW", meterset_weight=300.0)]
    else:
        beams = [Beam(f"B{i + 1}", g, 0.0, c, iso, meterset_weight=100.0) for i, (g, c) in enumerate(SETUPS[setup])]
    name = setup.lower().replace(" ", "_")
    return Case(name, grid, data["ct_hu"], structures, beams, Prescription([RX_GY], FRACTIONS),
                meta={"PatientID": name.upper(), "PatientName": "TG119^Phantom", "PatientPosition": "HFS"})
