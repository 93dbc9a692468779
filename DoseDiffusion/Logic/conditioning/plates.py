"""Beam plate and angle plate: the plan's geometry drawn on the CT grid.

Definitions follow the GDP-HMM challenge (public ``toolkit.py`` and ``data_loader.py``), so that a
user's challenge data and our DICOM plans give the same inputs:

- **Beam plate**: for each beam, the voxels that rays from the source through the PTV pass
  through, from where they enter the image to where they leave it, weighted by the inverse square
  of the distance to the source relative to the isocenter's (``(SAD / depth)²``), summed over
  beams; for an arc every ``arc_stride``-th control point is a beam (the challenge takes every
  other one), or, with ``arc_step_deg``, the control points thinned to at least that many degrees
  apart (the synthetic plans' engine's rule, which the prior dose uses too). The challenge traces rays through PTV-surface voxel centres, then dilates (4³) and
  erodes (3³) the drawn voxels; here the PTV is projected into the beam's-eye view at the
  isocenter plane and every voxel whose ray falls inside that aperture, grown by ``margin_mm``, is
  in the beam: the same set computed without tracing, and correct for couch rotation, which the
  challenge ignores. The challenge's 4³ dilation then 3³ erosion grows the drawn rays by one voxel
  towards lower indices and none towards higher ones; the default margin, one voxel on every side,
  is the symmetric version: in our tests both plates agree to within one voxel at every face.
- **Angle plate**: on the axial slices ``[iso_z − 5, iso_z + 5)`` around the isocenter, a line of
  ``line_width_px`` (4) pixels from the isocenter towards each beam's source (every control point
  for arcs), value 1, drawn to the edge of the image (the challenge draws it with ``cv2.line``
  from the isocenter at ``gantry − 90°`` in index space; for a couch rotation the in-plane
  projection of the source direction is drawn).

Distances are in mm in patient space, so anisotropic voxels and any orthonormal image direction
are handled. Both functions run with torch, on CPU or GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dosediffusion.case import Beam
from dosediffusion.conditioning.beam_geometry import source_position
from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid


def arc_stride_for(beam: Beam, arc_step_deg: float) -> int:
    """The smallest stride through ``beam``'s control points that puts them at least ``arc_step_deg``
    apart (1 for a static beam)."""
    angles = beam.control_point_gantry_deg
    if not beam.is_arc or len(angles) < 2:
        return 1
    step = abs((angles[1] - angles[0] + 180.0) % 360.0 - 180.0)
    return max(1, math.ceil(arc_step_deg / max(step, 1e-6) - 1e-9))


def beam_angles(beams: list[Beam], arc_stride: int = 2,
                arc_step_deg: float | None = None) -> list[tuple[float, float, tuple[float, float, float]]]:
    """(gantry, couch, isocenter) of each static beam and of an arc's control points: every
    ``arc_stride``-th, or with ``arc_step_deg`` every :func:`arc_stride_for`-th."""
    out = []
    for beam in beams:
        stride = arc_stride if arc_step_deg is None else arc_stride_for(beam, arc_step_deg)
        angles = beam.control_point_gantry_deg[::stride] if beam.is_arc else (beam.gantry_deg,)
        out += [(float(a), beam.couch_deg, beam.isocenter_mm) for a in angles]
    return out


def _affine(grid: Grid, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(origin (3,), step (3, 3)): patient point = origin + step[k] * index_k, k over (z, y, x)."""
    step = grid.matrix * np.asarray(grid.spacing)  # column k: mm per index along x, y, z
    columns = np.stack([step[:, 2], step[:, 1], step[:, 0]])  # rows: z, y, x index axes
    return torch.tensor(grid.origin, dtype=torch.float64, device=device), torch.tensor(columns, dtype=torch.float64, device=device)


def _linear_field(coef: torch.Tensor, const: float, shape: tuple[int, int, int]) -> torch.Tensor:
    """``const + Σ_k coef[k]·index_k`` over the grid (float32), broadcast from three axes.

    Axes along which the field does not change keep size 1 (a coplanar beam's depth is the same
    on every axial slice), so later arithmetic runs on the smallest shape that holds the field.
    """
    field = torch.full((1, 1, 1), const, dtype=torch.float64, device=coef.device)
    for k, n in enumerate(shape):
        if abs(float(coef[k])) > 1e-12:
            view = [1, 1, 1]
            view[k] = n
            field = field + (coef[k] * torch.arange(n, device=coef.device, dtype=torch.float64)).view(view)
    return field.float()


def beam_frame(source: np.ndarray, isocenter: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit beam axis (source → isocenter) and two unit vectors spanning the beam's-eye view."""
    axis = isocenter - source
    axis /= np.linalg.norm(axis)
    up = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    v = up - axis * (up @ axis)
    v /= np.linalg.norm(v)
    return axis, np.cross(v, axis), v


def beam_plate(
    ptv: np.ndarray,
    grid: Grid,
    beams: list[Beam],
    *,
    arc_stride: int = 2,
    arc_step_deg: float | None = None,
    inverse_square: bool = True,
    margin_mm: float | None = None,
    patient_position: str = "HFS",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Sum over beams of the voxels each beam's PTV aperture passes through.

    Args:
        ptv: boolean target mask on ``grid`` (z, y, x): the union of all PTVs.
        beams: static beams and arcs; an arc contributes every ``arc_stride``-th control point, or with
            ``arc_step_deg`` its control points thinned to at least that many degrees apart.
        inverse_square: weight each beam's voxels by ``(SAD / depth)²`` (1 at the isocenter).
        margin_mm: growth of the aperture at the isocenter plane (default: the smallest voxel size).

    Returns:
        float32 (z, y, x): 0 outside every beam; a voxel inside n beams without weighting holds n.
    """
    ptv = np.asarray(ptv, dtype=bool)
    if ptv.shape != grid.shape:
        raise InputError(f"PTV mask shape {ptv.shape} does not match the grid {grid.shape}")
    if not ptv.any():
        raise InputError("the beam plate needs a PTV, and the PTV mask is empty")
    origin, step = _affine(grid, device)
    pixel = min(grid.spacing) / 2.0  # beam's-eye-view sampling at the isocenter plane
    margin = min(grid.spacing) if margin_mm is None else margin_mm
    ptv_points = torch.tensor(grid.index_to_physical(np.argwhere(ptv)), dtype=torch.float64, device=device)
    plate = torch.zeros(grid.shape, dtype=torch.float32, device=device)
    for gantry, couch, iso in beam_angles(beams, arc_stride, arc_step_deg):
        iso = np.asarray(iso, dtype=float)
        source = source_position(iso, gantry, couch, 1000.0, patient_position)
        sad = float(np.linalg.norm(iso - source))
        axis, u, v = (torch.tensor(a, dtype=torch.float64, device=device) for a in beam_frame(source, iso))
        src = torch.tensor(source, dtype=torch.float64, device=device)
        # the aperture: PTV points projected to the isocenter plane, on a pixel grid
        rel = ptv_points - src
        scale = sad / (rel @ axis)
        pu, pv = (rel @ u) * scale, (rel @ v) * scale
        # pixel centres at whole multiples of `pixel` from the beam axis, so that rounding (half to
        # even) treats points mirrored about the axis alike; a border beyond the closing stays zero
        border = margin + max(grid.spacing) + 2 * pixel
        lo_u = pixel * np.floor((float(pu.min()) - border) / pixel)
        lo_v = pixel * np.floor((float(pv.min()) - border) / pixel)
        size_u = int(np.ceil((float(pu.max()) + border - lo_u) / pixel)) + 1
        size_v = int(np.ceil((float(pv.max()) + border - lo_v) / pixel)) + 1
        aperture = torch.zeros((size_v, size_u), dtype=torch.float32, device=device)
        aperture[((pv - lo_v) / pixel).round().long(), ((pu - lo_u) / pixel).round().long()] = 1.0
        # close the gaps between projected voxel centres and add the margin
        reach = int(np.ceil(max(grid.spacing) / pixel / 2 + margin / pixel))
        kernel = 2 * reach + 1
        aperture = torch.nn.functional.max_pool2d(aperture[None, None], kernel, 1, reach)[0, 0]
        shrink = int(np.ceil(max(grid.spacing) / pixel / 2))
        if shrink:
            aperture = -torch.nn.functional.max_pool2d(-aperture[None, None], 2 * shrink + 1, 1, shrink)[0, 0]
        # every voxel's ray, through the same plane; out-of-aperture indices land on the zero border
        depth = _linear_field(step @ axis, float((origin - src) @ axis), grid.shape)
        scale = sad / depth.clamp_min(1.0)  # the image lies in front of the source (SAD 1 m)
        per_pixel = scale / pixel
        iu = (_linear_field(step @ u, float((origin - src) @ u), grid.shape) * per_pixel).sub_(lo_u / pixel).round_()
        iv = (_linear_field(step @ v, float((origin - src) @ v), grid.shape) * per_pixel).sub_(lo_v / pixel).round_()
        flat = iv.clamp_(0, size_v - 1).mul_(size_u) + iu.clamp_(0, size_u - 1)
        hit = aperture.view(-1)[flat.long()]
        plate.add_(hit.mul_(scale.square()) if inverse_square else hit)
    return plate.cpu().numpy()


def angle_plate(
    grid: Grid,
    beams: list[Beam],
    *,
    half_slices: int = 5,
    line_width_px: float = 4.0,
    patient_position: str = "HFS",
) -> np.ndarray:
    """Lines from the isocenter towards each source on the axial slices around the isocenter.

    Returns:
        float32 (z, y, x) with 1 on the lines in slices ``[iso_z − half_slices, iso_z + half_slices)``
        and 0 elsewhere (all zero without beams).
    """
    plate = np.zeros(grid.shape, dtype=np.float32)
    if not beams:
        return plate
    iso = np.asarray(beams[0].isocenter_mm, dtype=float)
    iz, iy, ix = grid.physical_to_index(iso)
    _, ny, nx = grid.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    dy, dx = y - iy, x - ix  # index offsets in the axial plane
    drawn = np.zeros((ny, nx), dtype=bool)
    for beam in beams:
        for gantry in beam.control_point_gantry_deg:
            direction = source_position(iso, gantry, beam.couch_deg, 1.0, patient_position) - iso
            # the source direction in index units of this slice (x, y index axes)
            dir_idx = (grid.physical_to_index(iso + direction) - np.array([iz, iy, ix]))[1:]
            norm = np.hypot(*dir_idx)
            if norm < 1e-9:
                continue  # a beam along the cranio-caudal axis has no in-plane direction
            ty, tx = dir_idx / norm
            along = dy * ty + dx * tx
            across = np.abs(dx * ty - dy * tx)
            drawn |= (along >= 0) & (across <= line_width_px / 2)
    z0 = max(int(iz) - half_slices, 0)
    z1 = min(int(iz) + half_slices, grid.shape[0])
    plate[z0:z1] = drawn
    return plate
