"""Gamma index (Low et al. 1998) of an evaluated dose against a reference dose, vectorised in torch.

For every reference voxel r above the low-dose cut-off, gamma is the minimum over evaluated-dose
positions r' within the search radius of ``sqrt(|r − r'|² / DTA² + (D_eval(r') − D_ref(r))² / ΔD²)``,
with D_eval trilinearly interpolated between voxels (edge values extend beyond the volume). The
positions r' are the points of a cubic lattice of step ``DTA / steps_per_dta`` centred on r. ΔD is
``dose_percent`` % of the reference maximum (global) or of the reference dose at the voxel (local).
The search radius is ``max_gamma × DTA``; gamma values above ``max_gamma`` are reported as
``max_gamma``. With ``pass_rate_only`` the radius is DTA and the search stops as soon as gamma ≤ 1
is proven or ruled out; the pass rate is the same as that of the full map, found much faster.

Algorithm (branch and bound; every step is a batched torch op over points, so it runs on CPU or GPU):

1. The zero offset is a lattice point: ``|D_eval(r) − D_ref(r)| / ΔD`` is an upper bound of gamma,
   and with ``pass_rate_only`` every voxel where it is ≤ 1 passes at once.
2. The lattice offsets fall into the grid cells (voxel-sized boxes between 8 voxel centres) around r.
   Because r is itself a voxel centre, the offsets of each cell, their distances and their trilinear
   weights are the same for every voxel: they are computed once (a few hundred offsets per cell).
3. For the voxels still open (in chunks, for bounded memory) the ``(2R+2)³`` evaluated doses around
   each are gathered. A trilinear value inside a cell lies between its 8 corner values, so
   ``min distance² / DTA² + (distance from D_ref(r) to [corner min, corner max])² / ΔD²`` bounds
   gamma² from below in that cell; cells whose bound is not below the voxel's current best are skipped.
4. The remaining (voxel, cell) pairs are evaluated, cells nearest first, as one small matrix product
   each (corner values × fixed weights); a voxel's best value only decreases, so later cells are
   pruned harder, and with ``pass_rate_only`` a voxel leaves as soon as it passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dosediffusion.errors import InputError

_CORNERS = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)])  # (8, 3) z, y, x


@dataclass(frozen=True)
class GammaResult:
    """Gamma of one dose comparison.

    ``gamma`` is (z, y, x), NaN below the cut-off and capped at ``max_gamma``; it is ``None`` when
    only the pass rate was asked for. ``pass_rate_percent`` is the % of evaluated voxels with
    gamma ≤ 1; ``evaluated_voxels`` counts the voxels at or above the cut-off.
    """

    gamma: np.ndarray | None
    pass_rate_percent: float
    evaluated_voxels: int


@dataclass(frozen=True)
class _Group:
    """The lattice offsets of one grid cell in one distance band (the same for every voxel)."""

    cell: int  # which cell: a row of ``_Plan.corner_index``
    min_dist_sq: float  # smallest (distance / DTA)² of the offsets
    weights: torch.Tensor  # (8, n) trilinear weights of the n offsets on the cell's corners
    dist_sq: torch.Tensor  # (n,) (distance / DTA)² of the offsets


@dataclass(frozen=True)
class _Plan:
    """Everything about the search that does not depend on the doses."""

    patch: np.ndarray  # (K, 3) int voxel offsets (z, y, x) of the doses gathered around each voxel
    reach: np.ndarray  # (3,) int: the patch spans [-reach, reach] voxels on each axis (z, y, x)
    corner_index: torch.Tensor  # (C, 8) long: positions in the patch of each cell's corners
    cell_index: torch.Tensor  # (C,) long: positions of the cells in the (2 reach)³ grid of cells of the patch
    groups: list[_Group]  # by ascending ``min_dist_sq``


def _lattice_mm(dta_mm: float, steps_per_dta: int, radius_mm: float) -> np.ndarray:
    """Lattice offsets (n, 3) in mm (z, y, x) of step ``dta_mm / steps_per_dta`` within ``radius_mm``."""
    step = dta_mm / steps_per_dta
    n = int(np.ceil(radius_mm / step))
    axis = np.arange(-n, n + 1) * step
    mm = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return mm[np.linalg.norm(mm, axis=1) <= radius_mm + 1e-9]


def _trilinear_weights(frac: np.ndarray) -> np.ndarray:
    """Weights (8, n) of the corners ``_CORNERS`` for fractional positions ``frac`` (n, 3) in a cell."""
    return np.prod(np.where(_CORNERS[:, None, :] == 1, frac[None], 1.0 - frac[None]), axis=2)


def _plan(spacing_zyx: np.ndarray, dta_mm: float, steps_per_dta: int, radius_mm: float, band: float,
          device: torch.device) -> _Plan:
    """Groups the lattice offsets by grid cell and distance band (``band`` × DTA wide); weights and distances."""
    mm = _lattice_mm(dta_mm, steps_per_dta, radius_mm)
    voxels = mm / spacing_zyx
    base = np.floor(voxels + 1e-9).astype(np.int64)
    frac = np.clip(voxels - base, 0.0, 1.0)
    dist_sq = (mm**2).sum(axis=1) / dta_mm**2
    reach = np.maximum(-base.min(axis=0), base.max(axis=0) + 1)
    patch = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
    cells, cell_of = np.unique(base, axis=0, return_inverse=True)
    corner_index = [np.ravel_multi_index(tuple((cell + _CORNERS + reach).T), tuple(2 * reach + 1)) for cell in cells]
    keys, group_of = np.unique(np.stack([cell_of.reshape(-1), np.floor(np.sqrt(dist_sq) / band)], 1).astype(np.int64),
                               axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    groups = []
    for k, (cell, _) in enumerate(keys):
        inside = group_of == k
        groups.append(_Group(int(cell), float(dist_sq[inside].min()),
                             torch.as_tensor(_trilinear_weights(frac[inside]), dtype=torch.float32, device=device),
                             torch.as_tensor(dist_sq[inside], dtype=torch.float32, device=device)))
    groups.sort(key=lambda g: g.min_dist_sq)
    cell_index = np.ravel_multi_index(tuple((cells + reach).T), tuple(2 * reach))
    return _Plan(patch, reach, torch.as_tensor(np.array(corner_index), device=device),
                 torch.as_tensor(cell_index, device=device), groups)


def _pairwise(values: torch.Tensor, op) -> torch.Tensor:
    """``op`` (min or max) of each 2×2×2 block of neighbours: (P, a, b, c) → (P, a-1, b-1, c-1)."""
    values = op(values[:, :-1], values[:, 1:])
    values = op(values[:, :, :-1], values[:, :, 1:])
    return op(values[..., :-1], values[..., 1:])


def _gaps_sq(scaled: torch.Tensor, cell_index: torch.Tensor) -> torch.Tensor:
    """Squared distance (C, P) from 0 to [min, max] of each cell's corner values; ``scaled`` is (P, a, b, c)."""
    low = _pairwise(scaled, torch.minimum).flatten(1)[:, cell_index]
    high = _pairwise(scaled, torch.maximum).flatten(1)[:, cell_index]
    gap = torch.clamp_min(low, 0) + torch.clamp_min(-high, 0)
    return (gap * gap).T.contiguous()


def _search_chunk(padded: torch.Tensor, centre: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor,
                  best: torch.Tensor, plan: _Plan, patch_step: torch.Tensor, limit: float, done: float) -> torch.Tensor:
    """Lowers ``best`` (P,), gamma² so far, of P voxels by searching their cells; returns the new ``best``.

    ``padded`` is the flattened, edge-padded evaluated dose (Gy); ``centre`` (P,) long indexes the voxels
    in it; ``ref`` and ``tol`` (P,) are their reference doses and ΔD (Gy). Offsets whose lower bound of
    gamma² exceeds ``limit`` are skipped, and voxels whose ``best`` is ≤ ``done`` are finished.
    """
    # dose differences in units of ΔD around each voxel; trilinear weights sum to 1, so interpolating
    # them gives (D_eval(r') − D_ref(r)) / ΔD directly
    scaled = (padded[centre[:, None] + patch_step[None]] - ref[:, None]) / tol[:, None]  # (P, K)
    gaps_sq = _gaps_sq(scaled.view(-1, *(2 * plan.reach + 1)), plan.cell_index)
    active = torch.arange(len(best), device=best.device)
    level = -1.0
    for group in plan.groups:
        if group.min_dist_sq > limit:
            break
        if group.min_dist_sq > level:  # a new band: drop the voxels that no farther offset can improve
            level = group.min_dist_sq
            active = active[(best[active] > level) & (best[active] > done)]
            if active.numel() == 0:
                break
        bound = gaps_sq[group.cell, active] + group.min_dist_sq
        rows = active[(bound < best[active]) & (bound <= limit)]
        if rows.numel() == 0:
            continue
        values = scaled.index_select(0, rows)[:, plan.corner_index[group.cell]] @ group.weights  # (S, n) ΔD units
        gamma_sq = torch.addcmul(group.dist_sq[None], values, values)
        best[rows] = torch.minimum(best[rows], gamma_sq.amin(dim=1))
    return best


def _check(reference: np.ndarray, evaluated: np.ndarray) -> None:
    if np.shape(reference) != np.shape(evaluated):
        raise InputError(f"reference {np.shape(reference)} and evaluated {np.shape(evaluated)} doses are on different grids")
    if np.ndim(reference) != 3:
        raise InputError(f"gamma needs 3-D doses, not shape {np.shape(reference)}")


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
    pass_rate_only: bool = False,
    device: str | torch.device = "cpu",
    chunk_points: int = 65536,
    band: float = 0.2,
) -> GammaResult:
    """Gamma of ``evaluated`` against ``reference`` (same (z, y, x) grid, Gy; ``spacing_mm`` in (x, y, z)).

    Returns the gamma map and the pass rate (% of evaluated voxels with gamma ≤ 1). With
    ``pass_rate_only`` the map is not computed (``gamma`` is ``None``) and the pass rate comes much
    faster. ``chunk_points`` voxels are searched at a time (memory about ``chunk_points`` × 3 kB at 3 mm over
    2.5 mm voxels); the lattice offsets are visited in distance bands ``band`` × DTA wide (a speed setting).
    """
    _check(reference, evaluated)
    if max_gamma < 1.0:
        raise InputError(f"max_gamma must be at least 1 (the pass level), not {max_gamma:g}")
    device = torch.device(device)
    ref = torch.as_tensor(np.asarray(reference, np.float32), device=device)
    ev = torch.as_tensor(np.asarray(evaluated, np.float32), device=device)
    peak = float(ref.max())
    if peak <= 0:
        raise InputError("the reference dose is zero everywhere")
    points = torch.nonzero(ref.reshape(-1) >= cutoff_percent / 100.0 * peak).squeeze(1)  # (N,) flat indices
    ref_values = ref.reshape(-1)[points]
    tolerance = ((dose_percent / 100.0) * (ref_values if local else torch.full_like(ref_values, peak))).clamp_min(1e-6)
    best = (((ev.reshape(-1)[points] - ref_values) / tolerance) ** 2).clamp_max(max_gamma**2)
    limit, done = (1.0, 1.0) if pass_rate_only else (max_gamma**2, 0.0)
    radius_mm = (1.0 if pass_rate_only else max_gamma) * dta_mm
    plan = _plan(np.asarray(spacing_mm, dtype=float)[::-1], dta_mm, steps_per_dta, radius_mm, band, device)
    r = [int(v) for v in plan.reach]
    padded = torch.nn.functional.pad(ev[None, None], (r[2], r[2], r[1], r[1], r[0], r[0]), mode="replicate")[0, 0]
    side = padded.shape
    patch_step = torch.as_tensor(plan.patch @ np.array([side[1] * side[2], side[2], 1]), device=device)
    zyx = torch.stack(torch.unravel_index(points, ref.shape), dim=1) + torch.as_tensor(plan.reach, device=device)
    centres = (zyx * torch.as_tensor([side[1] * side[2], side[2], 1], device=device)).sum(dim=1)
    open_ = torch.nonzero(best > done).squeeze(1)
    flat = padded.reshape(-1)
    for start in range(0, open_.numel(), chunk_points):
        rows = open_[start:start + chunk_points]
        best[rows] = _search_chunk(flat, centres[rows], ref_values[rows], tolerance[rows], best[rows].clone(), plan,
                                   patch_step, limit, done)
    rate = float((best <= 1.0).float().mean() * 100.0) if points.numel() else float("nan")
    if pass_rate_only:
        return GammaResult(None, rate, int(points.numel()))
    gamma = torch.full((ref.numel(),), float("nan"), device=device)
    gamma[points] = best.sqrt().clamp_max(max_gamma)
    return GammaResult(gamma.reshape(ref.shape).cpu().numpy(), rate, int(points.numel()))
