"""Gamma index (Low et al. 1998) of an evaluated dose against a reference dose, vectorised in torch.

For every reference voxel above the low-dose cut-off, gamma is the minimum over evaluated-dose
positions r' within the search radius of ``sqrt(|r − r'|² / DTA² + (D_eval(r') − D_ref(r))² / ΔD²)``,
with D_eval trilinearly interpolated between voxels (sub-voxel search on a lattice of step
``DTA / steps_per_dta``, visited shell by shell in order of distance so that a voxel stops once
no farther point can lower its gamma). ΔD is ``dose_percent`` % of the reference maximum (global)
or of the reference dose at the voxel (local). The search radius is ``max_gamma × DTA``;
gamma values above ``max_gamma`` are reported as ``max_gamma`` (the pass rate needs radius DTA only). Runs on CPU or GPU (``device``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dosediffusion.errors import InputError


@dataclass(frozen=True)
class GammaResult:
    gamma: np.ndarray  # (z, y, x); NaN below the cut-off
    pass_rate_percent: float
    evaluated_voxels: int


def _lattice(spacing_zyx: np.ndarray, dta_mm: float, steps_per_dta: int, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (n, 3) in voxel units (z, y, x) and their distances (mm), sorted by distance."""
    step = dta_mm / steps_per_dta
    n = int(np.ceil(radius_mm / step))
    axis = np.arange(-n, n + 1) * step
    mm = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm(mm, axis=1)
    keep = dist <= radius_mm + 1e-9
    order = np.argsort(dist[keep], kind="stable")
    return (mm[keep] / spacing_zyx)[order], dist[keep][order]


def gamma_index(
    reference: np.ndarray,
    evaluated: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    dose_percent: float = 3.0,
    dta_mm: float = 3.0,
    cutoff_percent: float = 10.0,
    local: bool = False,
    steps_per_dta: int = 10,
    max_gamma: float = 1.5,
    device: str | torch.device = "cpu",
) -> GammaResult:
    """Gamma of ``evaluated`` against ``reference`` (same grid, Gy; ``spacing_mm`` in (x, y, z)).

    Returns the gamma map and the pass rate (% of evaluated voxels with gamma ≤ 1).
    """
    if np.shape(reference) != np.shape(evaluated):
        raise InputError(f"reference {np.shape(reference)} and evaluated {np.shape(evaluated)} doses are on different grids")
    ref = torch.as_tensor(np.asarray(reference, np.float32), device=device)
    ev = torch.as_tensor(np.asarray(evaluated, np.float32), device=device)
    peak = float(ref.max())
    if peak <= 0:
        raise InputError("the reference dose is zero everywhere")
    points = torch.nonzero(ref >= cutoff_percent / 100.0 * peak).to(torch.float32)
    ref_values = ref[tuple(points.long().T)]
    tolerance = (dose_percent / 100.0) * (ref_values if local else torch.full_like(ref_values, peak))
    tolerance = tolerance.clamp_min(1e-6)
    spacing_zyx = np.asarray(spacing_mm, dtype=float)[::-1]
    offsets, distances = _lattice(spacing_zyx, dta_mm, steps_per_dta, max_gamma * dta_mm)
    upper = torch.tensor(ev.shape, device=device, dtype=torch.float32) - 1
    best_sq = torch.full_like(ref_values, float("inf"))
    active = torch.arange(len(points), device=device)
    flat = ev.reshape(-1)
    strides = torch.tensor([ev.shape[1] * ev.shape[2], ev.shape[2], 1], device=device)
    for offset, distance in zip(offsets, distances, strict=True):
        floor_sq = (distance / dta_mm) ** 2
        if active.numel() == 0 or floor_sq >= max_gamma**2:
            break
        still = best_sq[active] > floor_sq  # farther points can still lower gamma
        active = active[still]
        if active.numel() == 0:
            break
        where = (points[active] + torch.tensor(offset, device=device, dtype=torch.float32)).clamp(min=0)
        where = torch.minimum(where, upper)
        base = where.floor().clamp(max=upper - 1).clamp(min=0)
        frac = where - base
        base = base.long()
        value = torch.zeros(len(active), device=device)
        for corner in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
            c = torch.tensor(corner, device=device)
            weight = torch.prod(torch.where(c == 1, frac, 1 - frac), dim=1)
            index = ((torch.minimum(base + c, upper.long())) * strides).sum(dim=1)
            value += weight * flat[index]
        gamma_sq = floor_sq + ((value - ref_values[active]) / tolerance[active]) ** 2
        best_sq[active] = torch.minimum(best_sq[active], gamma_sq)
    values = best_sq.sqrt()
    gamma = torch.full(ref.shape, float("nan"), device=device)
    gamma[tuple(points.long().T)] = values.clamp(max=max_gamma)
    return GammaResult(gamma.cpu().numpy(), float((values <= 1.0).float().mean() * 100.0), int(len(values)))
