"""An analytic dose from a case's beams: the ray-traced prior (Gy on the CT grid).

Each beam direction (a static beam, or an arc's control points thinned to at least
:attr:`PriorDoseConfig.arc_step_deg` apart, the synthetic plans' engine's rule) is a point source at the
beam's SAD from its isocentre (:func:`~dosediffusion.conditioning.beam_geometry.source_position`, couch
included, in the case's own patient position). Its fluence in the isocentre plane is the projection of
every target seen from the source (each projected voxel covering its own footprint), weighted by the
target's prescription relative to the highest, and blurred by a Gaussian penumbra of standard deviation
:attr:`PriorDoseConfig.penumbra_mm`, so that the 50 % edge lies on the target's projected edge. The dose
of one direction at a voxel at distance ``t`` (mm, along the beam axis from the source) and radiological
depth ``w`` (mm of water-equivalent tissue from the source) is

    fluence(projection) · (SAD / t)² · exp(−μ · w) · (1 − (1 − s) · exp(−w / b))

(inverse square, attenuation, a build-up from the surface fraction ``s`` over ``b`` mm). Radiological
depth is the integral (trapezoid rule) of the relative electron density (from HU, piecewise linear:
0 for air, 1 for water, 1 + HU / 1950 above water) along divergent rays from the source, sampled on a
beam-aligned grid and interpolated at the voxels. Every direction has the same weight (the plan's
monitor units do not say how an optimised fluence is shaped). The sum over directions is zero outside
the case's dose support and scaled so that D97 of the highest target is its prescription. No scatter
kernel: the shape of the beams' paths, not a calculated dose.

Runs with torch on CPU or on the device given; the result is a numpy array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dosediffusion.case import Beam, Case
from dosediffusion.conditioning.beam_geometry import source_direction, source_position
from dosediffusion.conditioning.plates import beam_angles, beam_frame
from dosediffusion.errors import InputError
from dosediffusion.roles import high_ptv


@dataclass(frozen=True)
class PriorDoseConfig:
    """Parameters of :func:`prior_dose`.

    Attributes:
        mu_per_mm: linear attenuation coefficient of water (1/mm).
        penumbra_mm: Gaussian standard deviation of the fluence edge in the isocentre plane (mm).
        buildup_mm: build-up length ``b`` (mm of water).
        surface_fraction: relative dose at zero depth ``s`` (before attenuation).
        arc_step_deg: an arc's control points are thinned to at least this many degrees apart.
        ray_spacing_mm: spacing of the depth rays in the isocentre plane (mm); None: the largest voxel size.
        depth_step_mm: step along each ray (mm along the beam axis); None: the smallest voxel size.
    """

    mu_per_mm: float = 0.0045
    penumbra_mm: float = 4.0
    buildup_mm: float = 5.0
    surface_fraction: float = 0.4
    arc_step_deg: float = 20.0
    ray_spacing_mm: float | None = None
    depth_step_mm: float | None = None


def relative_electron_density(ct_hu: torch.Tensor) -> torch.Tensor:
    """Relative electron density from HU: 1 + HU/1000 up to water, 1 + HU/1950 above; never negative."""
    return torch.where(ct_hu <= 0, 1.0 + ct_hu / 1000.0, 1.0 + ct_hu / 1950.0).clamp(min=0.0)


def beam_directions(beams: list[Beam], arc_step_deg: float) -> list[tuple[float, float, tuple, float]]:
    """(gantry °, couch °, isocentre (x, y, z) mm, SAD mm) of each static beam and of an arc's control
    points thinned to at least ``arc_step_deg`` apart (:func:`~dosediffusion.conditioning.plates.beam_angles`)."""
    return [(g, c, iso, beam.sad_mm) for beam in beams for g, c, iso in beam_angles([beam], arc_step_deg=arc_step_deg)]


@dataclass(frozen=True)
class _Scene:
    """What every direction shares: the dose-support voxels, the targets, the density and the grid's
    patient ↔ index transform (all torch, on one device, float32)."""

    points: torch.Tensor  # (N, 3) patient points (x, y, z) mm of the voxels that get a dose
    targets: list[tuple[torch.Tensor, float]]  # (points (M, 3), weight relative to the highest Rx)
    density: torch.Tensor  # (1, 1, nz, ny, nx) relative electron density
    corners: torch.Tensor  # (8, 3) patient points of the grid's corners
    origin: torch.Tensor  # (3,)
    to_index: torch.Tensor  # (3, 3): index (x, y, z) = (p − origin) @ to_index
    size_xyz: torch.Tensor  # (3,) voxels along x, y, z
    voxel_mm: tuple[float, float]  # smallest and largest voxel size


def _scene(case: Case, targets: list[tuple[np.ndarray, float]], support: np.ndarray, device) -> _Scene:
    grid = case.grid

    def points_of(mask: np.ndarray) -> torch.Tensor:
        return torch.tensor(grid.index_to_physical(np.argwhere(mask)), dtype=torch.float32, device=device)

    ct = torch.as_tensor(np.asarray(case.ct, dtype=np.float32), device=device)
    corners = np.array([[z, y, x] for z in (0, grid.shape[0] - 1) for y in (0, grid.shape[1] - 1)
                        for x in (0, grid.shape[2] - 1)], dtype=float)
    as_tensor = lambda a: torch.tensor(np.asarray(a, dtype=float), dtype=torch.float32, device=device)  # noqa: E731
    return _Scene(points=points_of(support), targets=[(points_of(m), w) for m, w in targets],
                  density=relative_electron_density(ct)[None, None], corners=as_tensor(grid.index_to_physical(corners)),
                  origin=as_tensor(grid.origin), to_index=as_tensor(grid.matrix / np.asarray(grid.spacing)),
                  size_xyz=as_tensor(grid.size_xyz), voxel_mm=(min(grid.spacing), max(grid.spacing)))


def _gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``image`` (H, W) blurred by a separable Gaussian of ``sigma_px`` pixels (zeros beyond the border)."""
    radius = max(1, math.ceil(3 * sigma_px))
    axis = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(axis**2) / (2 * sigma_px**2))
    kernel = kernel / kernel.sum()
    out = F.conv2d(image[None, None], kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return F.conv2d(out, kernel.view(1, 1, 1, -1), padding=(0, radius))[0, 0]


def _fluence(scene: _Scene, src, axis, u, v, sad: float, config: PriorDoseConfig):
    """The fluence image in the isocentre plane: (image (H, W) over a, W over b), lower corner (a, b) mm
    and pixel mm; None when every target lies behind the source."""
    pixel = scene.voxel_mm[0] / 2.0
    projected = []
    for points, weight in scene.targets:
        rel = points - src
        t = rel @ axis
        rel, t = rel[t > 1.0], t[t > 1.0]
        if t.numel():
            projected.append(((rel @ u) * sad / t, (rel @ v) * sad / t, weight))
    if not projected:
        return None
    # each projected voxel centre covers its footprint: half the largest voxel on every side
    half = math.ceil(scene.voxel_mm[1] / 2 / pixel)
    close = 2  # a further closing (pixels) for gaps where magnification spreads the centres apart
    border = (half + close + 2) * pixel + 4 * config.penumbra_mm
    lo_a = pixel * math.floor((min(float(a.min()) for a, _, _ in projected) - border) / pixel)
    lo_b = pixel * math.floor((min(float(b.min()) for _, b, _ in projected) - border) / pixel)
    size_a = math.ceil((max(float(a.max()) for a, _, _ in projected) + border - lo_a) / pixel) + 1
    size_b = math.ceil((max(float(b.max()) for _, b, _ in projected) + border - lo_b) / pixel) + 1
    fluence = torch.zeros((size_a, size_b), dtype=torch.float32, device=src.device)
    for a, b, weight in projected:
        hit = torch.zeros((1, 1, size_a, size_b), dtype=torch.float32, device=src.device)
        hit[0, 0, ((a - lo_a) / pixel).round().long(), ((b - lo_b) / pixel).round().long()] = 1.0
        hit = F.max_pool2d(hit, 2 * (half + close) + 1, 1, half + close)
        hit = -F.max_pool2d(-hit, 2 * close + 1, 1, close)
        fluence = torch.maximum(fluence, weight * hit[0, 0])
    return _gaussian_blur(fluence, config.penumbra_mm / pixel), (lo_a, lo_b), pixel


def _sample2d(image: torch.Tensor, ba: torch.Tensor, lower: tuple[float, float], pixel: float) -> torch.Tensor:
    """Bilinear values of ``image`` (H over a, W over b; zero beyond it) at isocentre-plane points ``ba``
    (N, 2) mm, (b, a) order; ``lower`` (a, b) mm is the centre of pixel [0, 0], ``pixel`` its size (mm)."""
    h, w = image.shape
    lo = torch.tensor([lower[1], lower[0]], dtype=ba.dtype, device=ba.device)
    per_mm = torch.tensor([2.0 / (pixel * max(w - 1, 1)), 2.0 / (pixel * max(h - 1, 1))], dtype=ba.dtype, device=ba.device)
    where = ((ba - lo) * per_mm - 1.0).view(1, 1, -1, 2)
    return F.grid_sample(image[None, None], where, align_corners=True, padding_mode="zeros").view(-1)


def _direction_dose(scene: _Scene, gantry: float, couch: float, isocenter, sad: float, position: str,
                    config: PriorDoseConfig) -> torch.Tensor:
    """One direction's relative dose at every point of ``scene.points`` (N,); zero where it reaches none."""
    device = scene.points.device
    source = source_position(isocenter, gantry, couch, sad, position)
    src = torch.tensor(source, dtype=torch.float32, device=device)
    axis, u, v = (torch.tensor(w, dtype=torch.float32, device=device)
                  for w in beam_frame(source, np.asarray(isocenter, dtype=float)))
    # (t, b, a) of every point in one product: distance along the axis, then the isocentre-plane projection
    frame = torch.stack([axis, v, u], dim=1)
    tba = torch.addmm(-(src @ frame)[None], scene.points, frame)
    t = tba[:, 0]
    dose = torch.zeros_like(t)
    made = _fluence(scene, src, axis, u, v, sad, config)
    if made is None:
        return dose
    image, (lo_a, lo_b), pixel = made
    ba = tba[:, 1:] * (sad / t.clamp(min=1.0))[:, None]
    fluence = _sample2d(image, ba, (lo_a, lo_b), pixel) * (t > 1.0)
    reached = torch.nonzero(fluence > 1e-4).view(-1)
    if not reached.numel():
        return dose
    t, b, a, fluence = t[reached], ba[reached, 0], ba[reached, 1], fluence[reached]
    # radiological depth along divergent rays through a grid of (a, b) in the isocentre plane
    ray_mm = config.ray_spacing_mm or scene.voxel_mm[1]
    step = config.depth_step_mm or scene.voxel_mm[0]
    ray_a = torch.arange(float(a.min()) - ray_mm, float(a.max()) + 2 * ray_mm, ray_mm, device=device)
    ray_b = torch.arange(float(b.min()) - ray_mm, float(b.max()) + 2 * ray_mm, ray_mm, device=device)
    t0 = max(float(((scene.corners - src) @ axis).min()), 1.0)  # the rays start outside the grid
    s = torch.arange(t0, float(t.max()) + 2 * step, step, device=device)
    ray = axis + (ray_a[:, None, None] * u + ray_b[None, :, None] * v) / sad  # (na, nb, 3), per mm of t
    # the samples src + s · ray as grid_sample's (x, y, z) in [−1, 1], (na, nb, ns, 3)
    per_index = 2.0 / (scene.size_xyz - 1).clamp(min=1)
    start = (src - scene.origin) @ scene.to_index * per_index - 1.0
    where = torch.addcmul(start, s[None, None, :, None], (ray @ scene.to_index * per_index)[:, :, None, :])[None]
    rho = F.grid_sample(scene.density, where, align_corners=True, padding_mode="zeros")[0, 0]  # (na, nb, ns)
    path = step * ray.norm(dim=-1, keepdim=True)  # mm travelled per step along each ray
    depth = (torch.cumsum(rho, dim=-1) - 0.5 * (rho + rho[..., :1])) * path  # trapezoid rule from s[0]
    lookup = torch.stack([(t - t0) / step / max(len(s) - 1, 1) * 2 - 1,
                          (b - float(ray_b[0])) / ray_mm / max(len(ray_b) - 1, 1) * 2 - 1,
                          (a - float(ray_a[0])) / ray_mm / max(len(ray_a) - 1, 1) * 2 - 1], dim=-1)
    w = F.grid_sample(depth[None, None], lookup.view(1, 1, 1, -1, 3), align_corners=True,
                      padding_mode="border").view(-1)
    buildup = 1.0 - (1.0 - config.surface_fraction) * torch.exp(-w / config.buildup_mm)
    dose[reached] = fluence * (sad / t) ** 2 * torch.exp(-config.mu_per_mm * w) * buildup
    return dose


def _targets(case: Case) -> tuple[list[tuple[np.ndarray, float]], float]:
    """(mask, prescription relative to the highest) of every non-empty target with a prescription, the high
    PTV (:func:`~dosediffusion.roles.high_ptv`) first, and its prescription (Gy)."""
    high = high_ptv(case)
    if high is None:
        raise InputError("the prior dose needs a target (a PTV with a prescription and voxels); the case has none",
                         case.case_id)
    others = [s for s in case.with_role("ptv") if s.prescription_gy and s.mask.any() and s is not high]
    high_rx = float(high.prescription_gy)
    return [(s.mask, s.prescription_gy / high_rx) for s in (high, *others)], high_rx


def prior_dose(case: Case, config: PriorDoseConfig = PriorDoseConfig(), device: str | torch.device = "cpu") -> np.ndarray:
    """The ray-traced prior dose of ``case`` (see the module docstring).

    Returns:
        float32 Gy on ``case.grid`` (z, y, x): zero outside ``case.dose_support()``, D97 of the highest
        prescribed PTV equal to its prescription.

    Raises:
        InputError: no beams, no PTV with a prescription, a patient position the beam geometry does not
            know, the highest target outside the dose support, or beams that reach no target.
    """
    if not case.beams:
        raise InputError("the prior dose needs the plan's beams; the case has none", case.case_id)
    targets, high_rx = _targets(case)
    position = case.patient_position
    try:
        source_direction(0.0, 0.0, position)
    except InputError as error:
        raise InputError(f"the prior dose cannot place the beams: {error.problem}", case.case_id) from None
    support = case.dose_support()
    support = np.ones(case.grid.shape, dtype=bool) if support is None else np.asarray(support, dtype=bool)
    high = targets[0][0] & support
    if not high.any():
        raise InputError("the highest prescribed PTV lies outside the dose support: no prior dose", case.case_id)
    scene = _scene(case, targets, support, device)
    total = torch.zeros(len(scene.points), dtype=torch.float32, device=device)
    for gantry, couch, isocenter, sad in beam_directions(case.beams, config.arc_step_deg):
        total += _direction_dose(scene, gantry, couch, isocenter, sad, position, config)
    dose = np.zeros(case.grid.shape, dtype=np.float32)
    dose[support] = total.cpu().numpy()
    d97 = float(np.percentile(dose[high], 3))
    if d97 <= 0:
        raise InputError("the beams reach no target (every target lies behind the sources or off their paths): "
                         "check the beams' isocentre", case.case_id)
    return dose * np.float32(high_rx / d97)
