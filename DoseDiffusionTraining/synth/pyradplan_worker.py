"""One photon IMRT plan by pyRadPlan 0.5.0 (SVD pencil beam + fluence optimisation), from files.

Run with the python of the engine environment (``setup_engine_env.sh``), never in the main
environment: ``python pyradplan_worker.py IN.npz OUT.npz [--verbose]``. It imports only numpy,
scipy (a dependency of pyRadPlan), pyRadPlan and the standard library: not dosediffusion.

IN.npz (plain arrays, loaded without pickle):

- ``ct_hu`` (z, y, x) float: the CT in HU; ``spacing_mm``, ``origin_mm`` (x, y, z): the grid as
  SimpleITK has it (origin = centre of voxel [0, 0, 0], identity direction, DICOM LPS patient
  coordinates in mm).
- ``mask_names`` (n,) str, ``masks`` (n, z, y, x) bool, ``roles`` (n,) str in {"ptv", "oar",
  "body"}, ``prescription_gy`` (n,) float: total prescribed dose of each PTV (0 for the others).
- ``num_fractions``; ``gantry_deg``, ``couch_deg`` (one per beam, IEC 61217 for a head-first
  supine patient, as matRad and pyRadPlan: the source lies at ``R_couch · R_gantry · (0, −SAD, 0)``
  in LPS, so gantry 0 irradiates from anterior (−y), 90 from the patient's left (+x), 180 from
  posterior, 270 from the right; gantry 90 with couch 90 from inferior (−z));
  ``isocenter_mm`` (x, y, z), same frame as ``origin_mm`` (pyRadPlan's world frame is the CT
  image's SimpleITK physical space, which is ours: no conversion).
- optional: ``bixel_width_mm`` (default 5), ``max_iterations`` (L-BFGS-B iterations, default
  300), ``dose_resolution_mm`` (x, y, z; the dose-calculation grid, default 5 mm isotropic, the
  pyRadPlan default; the result is resampled onto the CT grid); ``open_field`` (default false: see
  "Open field" below); ``target_margin`` (default true: pyRadPlan's own stf rule, the bixels cover
  the projection of the targets dilated by max(bixel width, voxel size) per axis, rounded up to whole
  voxels; false: the projection of the targets themselves, each bixel centre on the bixel grid point
  nearest a projected target voxel).

OUT.npz: ``dose_gy`` (z, y, x) float32: total dose (all fractions) on the CT grid;
``bixel_weights`` (per fraction, in pyRadPlan's units); ``seconds_dose``, ``seconds_opt``;
``pyradplan_version``; ``num_bixels``; ``num_iterations``; ``target_centroid_mm`` (x, y, z): the
centre of mass of the PTVs as pyRadPlan sees them (its world frame, the one of ``isocenter_mm``).

Objectives (each pyRadPlan objective is normalised by the number of voxels of its structure; the
plan is optimised per fraction, prescription / fractions as in matRad's examples, and the dose
multiplied by the number of fractions; pyRadPlan itself does not use ``num_of_fractions``):

- each PTV: ``SquaredDeviation(d_ref = prescription per fraction)``, priority 1000;
- each OAR: ``SquaredOverdosing(d_max = 50 % of the highest prescription)``, priority 100, and
  ``MeanDose(d_ref = 0)``, priority 10;
- normal tissue: the body voxels outside every PTV are split into helper shells by an allowed
  dose that falls with the distance ``d`` from a PTV, ``rx · max(0.3, 1 − 0.7 (d − 5 mm)⁺ / 25 mm)``
  (maximum over the PTVs), rounded up to steps of 10 % of the highest prescription; each shell
  gets ``SquaredOverdosing(d_max = its allowed dose)``, priority 100. The body VOI itself (EXTERNAL,
  which limits the voxels that get any dose) has no objective of its own.

Open field (``open_field`` true): no objectives, no optimisation: every bixel of the stf (the rays
that pyRadPlan places on the targets' projection, see ``target_margin``) has weight 1 in every
fraction, so ``dose_gy`` is ``num_fractions`` × the dose influence matrix times a ones vector (in
pyRadPlan's units: a shape to be normalised, not a planned dose); ``bixel_weights`` are those ones,
``num_iterations`` 0 and ``seconds_opt`` the time of that product and the resampling.

Overlaps: a voxel shared by several structures belongs, for optimisation, only to the one of
lowest overlap priority: PTVs first, the highest prescription first (so nested SIB targets work),
then OARs, then the falloff shells, then the body (pyRadPlan's default order, TARGET before OAR
before HELPER before EXTERNAL, made strict between PTV levels).

Errors: exit code 1 and one line on stderr (pyRadPlan's own log and warnings are swallowed unless
``--verbose``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings

import numpy as np

ROLES = {"ptv": "TARGET", "oar": "OAR", "body": "EXTERNAL"}
PTV_PRIORITY = 1000.0
OAR_PRIORITY = 100.0
OAR_MEAN_PRIORITY = 10.0
OAR_DMAX_FRACTION = 0.5
RING_PRIORITY = 100.0
FALLOFF_FLOOR = 0.3  # allowed dose far from the PTVs, fraction of their prescription
FALLOFF_START_MM = 5.0  # the allowed dose stays at 100 % this far out (penumbra, dose-grid voxel)
FALLOFF_MM = 25.0  # distance over which it then falls from 100 % to the floor
RING_STEP = 0.1  # shells: allowed dose rounded up to this fraction of the highest prescription
DEFAULT_BIXEL_MM = 5.0
DEFAULT_MAX_ITERATIONS = 300
DEFAULT_DOSE_RESOLUTION_MM = (5.0, 5.0, 5.0)


class WorkerError(Exception):
    """Bad input: reported as one line, exit code 1."""


def _scalar(data, key, default=None, kind=float):
    if key not in data.files:
        if default is None:
            raise WorkerError(f"IN.npz has no '{key}'")
        return default
    value = np.asarray(data[key])
    if value.size != 1:
        raise WorkerError(f"'{key}' must be a single number, got shape {value.shape}")
    return kind(value.reshape(()))


def _vector(data, key, length=None, default=None):
    if key not in data.files:
        if default is None:
            raise WorkerError(f"IN.npz has no '{key}'")
        return np.asarray(default, dtype=float)
    value = np.asarray(data[key], dtype=float).reshape(-1)
    if length is not None and value.size != length:
        raise WorkerError(f"'{key}' must have {length} numbers, got {value.size}")
    if not np.all(np.isfinite(value)):
        raise WorkerError(f"'{key}' has non-finite values")
    return value


def _flag(data, key, default: bool) -> bool:
    if key not in data.files:
        return default
    value = np.asarray(data[key])
    if value.size != 1 or value.dtype.kind not in "biu":
        raise WorkerError(f"'{key}' must be a single boolean, got {value.dtype} of shape {value.shape}")
    return bool(value.reshape(()))


def read_input(path: str) -> dict:
    """The plan request of IN.npz, checked."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is one message
        raise WorkerError(f"cannot read {path}: {error}") from None
    with data:
        if "ct_hu" not in data.files:
            raise WorkerError("IN.npz has no 'ct_hu'")
        ct_hu = np.asarray(data["ct_hu"], dtype=np.float32)
        if ct_hu.ndim != 3 or min(ct_hu.shape) < 1:
            raise WorkerError(f"'ct_hu' must be a (z, y, x) volume, got shape {ct_hu.shape}")
        spacing = _vector(data, "spacing_mm", 3)
        if np.any(spacing <= 0):
            raise WorkerError(f"'spacing_mm' must be positive, got {spacing.tolist()}")
        origin = _vector(data, "origin_mm", 3)
        for key in ("mask_names", "masks", "roles", "prescription_gy", "gantry_deg", "couch_deg", "isocenter_mm"):
            if key not in data.files:
                raise WorkerError(f"IN.npz has no '{key}'")
        names = [str(v) for v in np.asarray(data["mask_names"]).reshape(-1)]
        roles = [str(v).lower() for v in np.asarray(data["roles"]).reshape(-1)]
        masks = np.asarray(data["masks"]).astype(bool)
        prescriptions = _vector(data, "prescription_gy")
        n = len(names)
        if masks.shape != (n, *ct_hu.shape):
            raise WorkerError(f"'masks' must have shape {(n, *ct_hu.shape)}, got {masks.shape}")
        if len(roles) != n or prescriptions.size != n:
            raise WorkerError(f"'roles' and 'prescription_gy' need one entry per mask ({n})")
        request = {
            "ct_hu": ct_hu,
            "spacing": spacing,
            "origin": origin,
            "names": names,
            "roles": roles,
            "masks": masks,
            "prescriptions": prescriptions,
            "num_fractions": _scalar(data, "num_fractions", kind=int),
            "gantry": _vector(data, "gantry_deg"),
            "couch": _vector(data, "couch_deg"),
            "isocenter": _vector(data, "isocenter_mm", 3),
            "bixel_width": _scalar(data, "bixel_width_mm", DEFAULT_BIXEL_MM),
            "max_iterations": _scalar(data, "max_iterations", DEFAULT_MAX_ITERATIONS, kind=int),
            "dose_resolution": _vector(data, "dose_resolution_mm", 3, DEFAULT_DOSE_RESOLUTION_MM),
            "open_field": _flag(data, "open_field", False),
            "target_margin": _flag(data, "target_margin", True),
        }
    check_request(request)
    return request


def check_request(r: dict) -> None:
    """Raise :class:`WorkerError` for a request that cannot make a plan."""
    for name, role, mask, rx in zip(r["names"], r["roles"], r["masks"], r["prescriptions"], strict=True):
        if role not in ROLES:
            raise WorkerError(f"structure '{name}': role '{role}' is not one of {sorted(ROLES)}")
        if not mask.any():
            raise WorkerError(f"structure '{name}' is empty")
        if role == "ptv" and not rx > 0:
            raise WorkerError(f"PTV '{name}' needs a positive prescription, got {rx}")
    if "ptv" not in r["roles"]:
        raise WorkerError("no structure has role 'ptv'")
    if r["num_fractions"] < 1:
        raise WorkerError(f"num_fractions must be at least 1, got {r['num_fractions']}")
    if r["gantry"].size < 1 or r["gantry"].size != r["couch"].size:
        raise WorkerError(f"need one couch angle per gantry angle, got {r['gantry'].size} and {r['couch'].size}")
    if not r["bixel_width"] > 0 or np.any(r["dose_resolution"] <= 0):
        raise WorkerError("bixel_width_mm and dose_resolution_mm must be positive")
    if r["max_iterations"] < 1:
        raise WorkerError(f"max_iterations must be at least 1, got {r['max_iterations']}")
    low = r["origin"] - r["spacing"] / 2
    high = r["origin"] + r["spacing"] * (np.asarray(r["ct_hu"].shape[::-1]) - 0.5)
    if np.any(r["isocenter"] < low) or np.any(r["isocenter"] > high):
        raise WorkerError(f"isocenter {r['isocenter'].tolist()} mm lies outside the CT "
                          f"({low.tolist()} to {high.tolist()} mm)")


def falloff_shells(r: dict) -> list[tuple[str, np.ndarray, float]]:
    """Helper shells of body voxels outside the PTVs with their allowed dose (total Gy)."""
    from scipy import ndimage

    sampling = tuple(float(s) for s in r["spacing"][::-1])  # (z, y, x) mm
    body = np.zeros(r["ct_hu"].shape, dtype=bool)
    ptv_union = np.zeros_like(body)
    allowed = np.zeros(body.shape, dtype=np.float64)
    for role, mask, rx in zip(r["roles"], r["masks"], r["prescriptions"], strict=True):
        if role == "body":
            body |= mask
        elif role == "ptv":
            ptv_union |= mask
            distance = ndimage.distance_transform_edt(~mask, sampling=sampling)
            beyond = np.maximum(distance - FALLOFF_START_MM, 0.0)
            fraction = np.maximum(FALLOFF_FLOOR, 1.0 - (1.0 - FALLOFF_FLOOR) * beyond / FALLOFF_MM)
            allowed = np.maximum(allowed, rx * fraction)
    if not body.any():  # no body given: everything that is not a PTV is normal tissue
        body = np.ones_like(body)
    tissue = body & ~ptv_union
    step = RING_STEP * float(np.max(r["prescriptions"]))
    level = np.ceil(allowed / step - 1e-9).astype(np.int64)
    shells = []
    for k in np.unique(level[tissue]):
        mask = tissue & (level == k)
        shells.append((f"_falloff_{int(k) * RING_STEP * 100:.0f}pct", mask, float(k * step)))
    return shells


def _xyz(values) -> dict[str, float]:
    """pyRadPlan's resolution dictionary of three numbers (x, y, z)."""
    return {key: float(value) for key, value in zip("xyz", values, strict=True)}


def patient_mask(r: dict) -> np.ndarray:
    """Voxels that get dose: the body structures, or every structure when there is no body (as pyRadPlan)."""
    roles = np.asarray(r["roles"])
    chosen = r["masks"][roles == "body"] if np.any(roles == "body") else r["masks"]
    return np.any(chosen, axis=0)


def overlap_priorities(r: dict) -> tuple[list[int], int]:
    """pyRadPlan overlap priorities (lowest wins a shared voxel) of the structures, and of the falloff
    shells: PTVs by falling prescription, then OARs, then the shells, then the body (so the shells
    keep their voxels: ranked after the body they would own none, and their objectives would be 0/0);
    equal priorities would keep a shared voxel in both structures (a nested SIB PTV would pull its
    boost towards the lower dose)."""
    order = sorted({float(rx) for role, rx in zip(r["roles"], r["prescriptions"], strict=True) if role == "ptv"},
                   reverse=True)
    n = len(order)
    ranks = {"oar": n, "body": n + 2}
    return [order.index(float(rx)) if role == "ptv" else ranks[role]
            for role, rx in zip(r["roles"], r["prescriptions"], strict=True)], n + 1


def owned_voxels(masks: list[np.ndarray], priorities: list[int]) -> list[int]:
    """How many voxels each structure keeps once overlaps are resolved (a voxel goes to the lowest
    priority among the structures that hold it; ties keep it in each)."""
    best = np.full(masks[0].shape, np.iinfo(np.int64).max)
    for mask, priority in zip(masks, priorities, strict=True):
        best[mask] = np.minimum(best[mask], priority)
    return [int(np.count_nonzero(mask & (best == priority))) for mask, priority in zip(masks, priorities, strict=True)]


def plan(r: dict) -> dict:
    """Dose influence, fluence optimisation (or, for an open field, unit weights) and the total dose on the CT grid."""
    from importlib.metadata import version

    import SimpleITK as sitk
    from pyRadPlan import PhotonPlan, calc_dose_influence, fluence_optimization, generate_stf, validate_cst, validate_ct
    from pyRadPlan.cst import validate_voi
    from pyRadPlan.optimization.objectives import MeanDose, SquaredDeviation, SquaredOverdosing

    n_fx = r["num_fractions"]
    ct = validate_ct(cube_hu=r["ct_hu"].astype(np.float32), resolution=_xyz(r["spacing"]),
                     origin=tuple(float(v) for v in r["origin"]))
    rx_max = float(np.max(r["prescriptions"]))
    open_field = r["open_field"]
    priorities, shell_priority = overlap_priorities(r)
    shells = [] if open_field else falloff_shells(r)
    owned = owned_voxels([*r["masks"], *(mask for _, mask, _ in shells)],
                         [*priorities, *[shell_priority] * len(shells)])
    vois = []
    for name, role, mask, rx, priority, kept in zip(r["names"], r["roles"], r["masks"], r["prescriptions"], priorities,
                                                    owned[: len(priorities)], strict=True):
        if role == "ptv":
            objectives = [SquaredDeviation(priority=PTV_PRIORITY, d_ref=float(rx) / n_fx)]
        elif role == "oar":
            objectives = [SquaredOverdosing(priority=OAR_PRIORITY, d_max=OAR_DMAX_FRACTION * rx_max / n_fx),
                          MeanDose(priority=OAR_MEAN_PRIORITY, d_ref=0.0)]
        else:
            objectives = []
        vois.append(validate_voi(name=name, voi_type=ROLES[role], mask=mask.astype(np.uint8), ct_image=ct,
                                 overlap_priority=priority, objectives=objectives if kept and not open_field else []))
    for (name, mask, d_max), kept in zip(shells, owned[len(priorities):], strict=True):
        if kept:  # an objective over no voxels is 0/0
            vois.append(validate_voi(name=name, voi_type="HELPER", mask=mask.astype(np.uint8), ct_image=ct,
                                     overlap_priority=shell_priority,
                                     objectives=[SquaredOverdosing(priority=RING_PRIORITY, d_max=d_max / n_fx)]))
    cst = validate_cst(vois, ct)

    pln = PhotonPlan(machine="Generic", num_of_fractions=n_fx, prescribed_dose=rx_max)
    pln.prop_stf = {
        "gantry_angles": [float(v) for v in r["gantry"]],
        "couch_angles": [float(v) for v in r["couch"]],
        "iso_center": [float(v) for v in r["isocenter"]],
        "bixel_width": float(r["bixel_width"]),
        "add_margin": bool(r["target_margin"]),
    }
    pln.prop_dose_calc = {"dose_grid": {"resolution": _xyz(r["dose_resolution"])}}
    pln.prop_opt = {"solver": "scipy", "max_iter": int(r["max_iterations"]), "display": False}

    start = time.perf_counter()
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    seconds_dose = time.perf_counter() - start
    start = time.perf_counter()
    opt_info = {}
    if open_field:
        weights = np.ones(int(dij.total_num_of_bixels), dtype=np.float64)
        opt_info = {"num_iter": 0, "result_info": {"message": "open field: every bixel weight 1, no optimisation"}}
    else:
        weights = fluence_optimization(ct, cst, stf, dij, pln, opt_info=opt_info)
    result = dij.compute_result_ct_grid(weights)
    seconds_opt = time.perf_counter() - start
    dose = sitk.GetArrayFromImage(result["physical_dose"]).astype(np.float64) * n_fx
    if dose.shape != r["ct_hu"].shape:
        raise WorkerError(f"pyRadPlan returned a dose of shape {dose.shape}, expected {r['ct_hu'].shape}")
    # pyRadPlan computes dose only inside the patient (the EXTERNAL VOIs, else all VOIs) on its dose
    # grid; its linear resampling onto the CT grid spills part of the surface dose into the air
    # voxels next to the outline. Those are zeroed, as on the dose grid.
    dose[~patient_mask(r)] = 0.0
    if not np.all(np.isfinite(dose)):
        raise WorkerError("pyRadPlan returned a dose with non-finite values")
    return {
        "dose_gy": dose.astype(np.float32),
        "bixel_weights": np.asarray(weights, dtype=np.float64).reshape(-1),
        "seconds_dose": np.float64(seconds_dose),
        "seconds_opt": np.float64(seconds_opt),
        "pyradplan_version": np.str_(version("pyradplan")),
        "num_bixels": np.int64(np.asarray(weights).size),
        "num_iterations": np.int64(opt_info.get("num_iter", -1)),
        "optimizer_message": np.str_(str((opt_info.get("result_info") or {}).get("message", ""))),
        # pyRadPlan's own view of the geometry, for checks: the targets' centre of mass in its
        # world frame (x, y, z) mm (its default isocentre), from its CT image and masks
        "target_centroid_mm": np.asarray(cst.target_center_of_mass(), dtype=np.float64),
    }


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if a != "--verbose"]
    verbose = "--verbose" in argv[1:]
    if len(args) != 2:
        print("usage: python pyradplan_worker.py IN.npz OUT.npz [--verbose]", file=sys.stderr)
        return 1
    captured = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            if verbose:
                logging.basicConfig(level=logging.INFO, stream=sys.stderr)
            else:  # pyRadPlan logs, warns and draws progress bars: none of it is the answer
                stack.enter_context(contextlib.redirect_stderr(captured))
                stack.enter_context(contextlib.redirect_stdout(captured))
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
            request = read_input(args[0])
            out = plan(request)
        with open(args[1], "wb") as handle:
            np.savez(handle, **out)
    except WorkerError as error:
        print(f"pyradplan worker: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - a pyRadPlan failure is reported as one line
        message = " ".join(f"{type(error).__name__}: {error}".split())
        print(f"pyradplan worker: pyRadPlan failed: {message[:2000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
