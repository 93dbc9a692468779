"""Photon IMRT doses from pyRadPlan, run in its own environment and reached through files.

pyRadPlan 0.5.0 needs ``pydantic<2.14`` and ``numpy<2.4``, which clash with the main environment,
so it lives in a virtual environment of its own, made by ``setup_engine_env.sh`` (next to this
file) under ``$DOSEDIFFUSION_ENGINE_ENV`` (default ``~/.cache/dosediffusion-engine``).
:func:`compute_dose` writes the request as IN.npz into a temporary folder, runs
``pyradplan_worker.py`` with that environment's python and reads OUT.npz back (see the worker's
docstring for both files, the objectives it derives from roles and prescriptions, and the
coordinate conventions).

Conventions (as everywhere in dosediffusion): arrays are ``(z, y, x)``; ``spacing_mm``,
``origin_mm`` and ``isocenter_mm`` are ``(x, y, z)`` in mm in DICOM LPS patient coordinates, the
origin being the centre of voxel ``[0, 0, 0]`` of an axis-aligned (identity direction) grid.
Gantry and couch angles follow IEC 61217 (head-first supine) as matRad does: gantry 0 irradiates
from the anterior side (beam towards +y), 90 from the patient's left (+x), 180 from posterior,
270 from the right; gantry 90 at couch 90 from inferior (−z). The dose is computed on pyRadPlan's
dose grid (5 mm isotropic unless ``dose_resolution_mm`` says otherwise) and resampled linearly
onto the CT grid, so on a CT grid that is not that grid the PTV edge voxels get some of the
fall-off outside the PTV (e.g. PTV D95 ≈ 85-91 % instead of ≈ 99 % for a 4 cm PTV at 2.5 mm or
5 × 4.5 × 6 mm); pass ``dose_resolution_mm=spacing_mm`` to compute on the CT grid itself (exact,
costlier: ≈ 8× the voxels of a 5 mm grid at 2.5 mm).

``compute_dose(..., open_field=True)`` skips the optimisation: every bixel pyRadPlan places on the
targets' projection gets weight 1 (the dose influence matrix times a ones vector), the open-field
dose of the same beams, a reference for the shape of the ray-traced prior
(``dosediffusion.conditioning.prior_dose``; ``Testing/benchmarks/prior_vs_pyradplan.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dosediffusion.errors import InputError

HERE = Path(__file__).resolve().parent
WORKER = HERE / "pyradplan_worker.py"
SETUP_SCRIPT = HERE / "setup_engine_env.sh"
ROLES = ("ptv", "oar", "body")

Structure = tuple[str, np.ndarray, str, float]  # name, mask (z, y, x) bool, role, prescription in Gy


def engine_env() -> Path:
    """Folder of the engine's virtual environment (same rule as ``setup_engine_env.sh``)."""
    return Path(os.environ.get("DOSEDIFFUSION_ENGINE_ENV") or Path.home() / ".cache" / "dosediffusion-engine")


def engine_python() -> Path:
    """The python of the engine environment; :class:`InputError` (saying how to make it) when missing."""
    env = engine_env()
    python = env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    if not python.is_file():
        raise InputError(f"pyRadPlan dose engine environment not installed ({python} missing): run "
                         f"`bash {SETUP_SCRIPT}` (or `bash Testing/install_test_deps.sh`)", env)
    return python


def _vector3(value, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=float).reshape(-1)
    if array.size != 3 or not np.all(np.isfinite(array)):
        raise InputError(f"{what} must be three finite numbers (x, y, z) in mm, got {value!r}")
    return array


def build_request(ct_hu: np.ndarray, spacing_mm: Sequence[float], origin_mm: Sequence[float],
                  structures: Sequence[Structure], num_fractions: int, beams: Sequence[tuple[float, float]],
                  isocenter_mm: Sequence[float], *, bixel_width_mm: float, max_iterations: int,
                  dose_resolution_mm: Sequence[float] | None, open_field: bool = False,
                  target_margin: bool = True) -> dict[str, np.ndarray]:
    """The IN.npz arrays of a plan request, checked (:class:`InputError` for a bad one)."""
    ct = np.asarray(ct_hu, dtype=np.float32)
    if ct.ndim != 3 or min(ct.shape) < 1:
        raise InputError(f"ct_hu must be a (z, y, x) volume, got shape {ct.shape}")
    if not np.all(np.isfinite(ct)):
        raise InputError("ct_hu has non-finite values")
    spacing = _vector3(spacing_mm, "spacing_mm")
    if np.any(spacing <= 0):
        raise InputError(f"spacing_mm must be positive, got {spacing.tolist()}")
    if not structures:
        raise InputError("no structures given: a plan needs at least one PTV")
    names, masks, roles, prescriptions = [], [], [], []
    for item in structures:
        if len(item) != 4:
            raise InputError(f"a structure is (name, mask, role, prescription_gy), got {len(item)} items")
        name, mask, role, rx = item
        mask = np.asarray(mask)
        role = str(role).lower()
        if mask.shape != ct.shape:
            raise InputError(f"structure '{name}': mask shape {mask.shape} differs from the CT's {ct.shape}")
        if role not in ROLES:
            raise InputError(f"structure '{name}': role '{role}' is not one of {', '.join(ROLES)}")
        if not mask.any():
            raise InputError(f"structure '{name}' is empty")
        rx = float(rx or 0.0)
        if role == "ptv" and not (np.isfinite(rx) and rx > 0):
            raise InputError(f"PTV '{name}' needs a positive prescription in Gy, got {rx}")
        names.append(str(name))
        masks.append(mask.astype(bool))
        roles.append(role)
        prescriptions.append(rx if role == "ptv" else 0.0)
    if "ptv" not in roles:
        raise InputError("no structure has role 'ptv'")
    if int(num_fractions) != num_fractions or num_fractions < 1:
        raise InputError(f"num_fractions must be a positive whole number, got {num_fractions}")
    beam_array = np.asarray(beams, dtype=float)
    if beam_array.ndim != 2 or beam_array.shape[1] != 2 or len(beam_array) < 1:
        raise InputError("beams must be a non-empty list of (gantry_deg, couch_deg)")
    if not np.all(np.isfinite(beam_array)):
        raise InputError("beam angles must be finite")
    if not bixel_width_mm > 0:
        raise InputError(f"bixel_width_mm must be positive, got {bixel_width_mm}")
    if int(max_iterations) != max_iterations or max_iterations < 1:
        raise InputError(f"max_iterations must be a positive whole number, got {max_iterations}")
    request = {
        "ct_hu": ct,
        "spacing_mm": spacing,
        "origin_mm": _vector3(origin_mm, "origin_mm"),
        "mask_names": np.array(names, dtype=str),
        "masks": np.stack(masks),
        "roles": np.array(roles, dtype=str),
        "prescription_gy": np.array(prescriptions, dtype=float),
        "num_fractions": np.int64(num_fractions),
        "gantry_deg": beam_array[:, 0].copy(),
        "couch_deg": beam_array[:, 1].copy(),
        "isocenter_mm": _vector3(isocenter_mm, "isocenter_mm"),
        "bixel_width_mm": np.float64(bixel_width_mm),
        "max_iterations": np.int64(max_iterations),
        "open_field": np.bool_(open_field),
        "target_margin": np.bool_(target_margin),
    }
    if dose_resolution_mm is not None:
        resolution = _vector3(dose_resolution_mm, "dose_resolution_mm")
        if np.any(resolution <= 0):
            raise InputError(f"dose_resolution_mm must be positive, got {resolution.tolist()}")
        request["dose_resolution_mm"] = resolution
    return request


def compute_dose(ct_hu: np.ndarray, spacing_mm: Sequence[float], origin_mm: Sequence[float],
                 structures: Sequence[Structure], num_fractions: int, beams: Sequence[tuple[float, float]],
                 isocenter_mm: Sequence[float], *, timeout_s: float = 600.0, bixel_width_mm: float = 5.0,
                 max_iterations: int = 300, dose_resolution_mm: Sequence[float] | None = None,
                 open_field: bool = False, target_margin: bool = True) -> tuple[np.ndarray, dict]:
    """An optimised photon IMRT dose (6 MV, pyRadPlan's SVD pencil beam) on the CT grid, or the beams' open field.

    Args:
        ct_hu: CT in HU, ``(z, y, x)``.
        spacing_mm, origin_mm: the CT grid, ``(x, y, z)`` mm (origin = centre of voxel [0, 0, 0]).
        structures: ``(name, mask, role, prescription_gy)``, role ``"ptv"`` (needs a total
            prescription in Gy), ``"oar"`` or ``"body"`` (the outline: no dose outside it).
        num_fractions: number of fractions (the dose returned is the total of all of them).
        beams: ``(gantry_deg, couch_deg)`` per beam.
        isocenter_mm: ``(x, y, z)`` mm, same frame as ``origin_mm``.
        timeout_s: wall-clock limit for the engine.
        bixel_width_mm: beamlet size at the isocentre.
        max_iterations: iteration cap of the fluence optimisation (L-BFGS-B).
        dose_resolution_mm: ``(x, y, z)`` of the dose-calculation grid (pyRadPlan's default, 5 mm
            isotropic, when None); the dose is resampled (linearly) onto the CT grid.
        open_field: no optimisation: every bixel weight 1 in every fraction (``max_iterations`` unused);
            the dose is then in pyRadPlan's units (num_fractions × dose influence matrix · ones), a shape
            to normalise, not a planned dose.
        target_margin: pyRadPlan's stf rule (bixels on the projection of the targets dilated by
            max(bixel width, voxel size) per axis); False: on the projection of the targets themselves.

    Returns:
        ``(dose_gy, info)``: total dose ``(z, y, x)`` float32 on the CT grid, and ``info`` with
        ``bixel_weights`` (per fraction), ``num_bixels``, ``num_iterations``, ``seconds_dose``,
        ``seconds_opt``, ``seconds_total`` (including the engine's start-up),
        ``pyradplan_version`` and ``target_centroid_mm`` (the PTVs' centre of mass as pyRadPlan
        sees it, (x, y, z) mm in the frame of ``origin_mm`` and ``isocenter_mm``: a check that
        both sides agree on the geometry).

    Raises:
        InputError: a bad request, the engine environment missing, or the engine failing or
            timing out (with the worker's one-line message).
    """
    import time

    request = build_request(ct_hu, spacing_mm, origin_mm, structures, num_fractions, beams, isocenter_mm,
                            bixel_width_mm=bixel_width_mm, max_iterations=max_iterations,
                            dose_resolution_mm=dose_resolution_mm, open_field=open_field,
                            target_margin=target_margin)
    python = engine_python()
    with tempfile.TemporaryDirectory(prefix="dosediffusion-engine-") as folder:
        in_path, out_path = Path(folder) / "IN.npz", Path(folder) / "OUT.npz"
        np.savez(in_path, **request)
        start = time.perf_counter()
        try:
            # -I: isolated from this process' PYTHONPATH and user site-packages (numpy 2.4 must not leak in)
            done = subprocess.run([str(python), "-I", str(WORKER), str(in_path), str(out_path)],
                                  capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise InputError(f"pyRadPlan dose engine took longer than {timeout_s:.0f} s") from None
        except OSError as error:
            raise InputError(f"cannot run the pyRadPlan dose engine ({python}): {error}") from None
        seconds_total = time.perf_counter() - start
        if done.returncode != 0 or not out_path.is_file():
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            message = lines[-1].strip() if lines else f"exit code {done.returncode}, no message"
            raise InputError(f"pyRadPlan dose engine failed: {message}")
        with np.load(out_path, allow_pickle=False) as out:
            dose = np.asarray(out["dose_gy"], dtype=np.float32)
            info = {
                "bixel_weights": np.asarray(out["bixel_weights"], dtype=np.float64),
                "num_bixels": int(out["num_bixels"]),
                "num_iterations": int(out["num_iterations"]),
                "optimizer_message": str(out["optimizer_message"]),
                "seconds_dose": float(out["seconds_dose"]),
                "seconds_opt": float(out["seconds_opt"]),
                "seconds_total": seconds_total,
                "pyradplan_version": str(out["pyradplan_version"]),
                "target_centroid_mm": tuple(float(v) for v in out["target_centroid_mm"]),
            }
    if dose.shape != request["ct_hu"].shape:
        raise InputError(f"pyRadPlan dose engine returned a dose of shape {dose.shape}, "
                         f"expected {request['ct_hu'].shape}")
    return dose, info
