"""A CT series → HU array (z, y, x) and its Grid.

Slices are sorted by their position along the slice normal (the cross product of the
ImageOrientationPatient rows), pixel values are rescaled with RescaleSlope/RescaleIntercept.
Duplicate positions, mixed orientations or pixel sizes, gantry tilt and unreadable pixel data are
errors naming the file. A gap between neighbouring slices wider than :data:`GAP_FACTOR` times the
smallest spacing (a missing slice) is refused, naming the missing positions, unless the caller allows
gaps (``--allow-slice-gaps``). Slice spacing that otherwise varies by more than 1 % (or with gaps
allowed) is resampled to the smallest spacing found, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from dosediffusion.errors import DicomError, GeometryError
from dosediffusion.geometry import Grid
from dosediffusion.io.dicom_scan import read_dataset


def _orientation(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    try:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    except AttributeError as error:
        raise DicomError(f"CT slice without {str(error).split()[-1]}", path) from None
    if iop.shape != (6,) or ipp.shape != (3,):
        raise DicomError("CT slice with malformed ImageOrientationPatient or ImagePositionPatient", path)
    return iop


#: A gap between slices wider than this many times the smallest spacing is a missing slice.
GAP_FACTOR = 1.5


def _check_gaps(positions: np.ndarray, gaps: np.ndarray, path: Path) -> None:
    """Refuse a series with a missing slice: a gap wider than :data:`GAP_FACTOR` × the smallest spacing."""
    step = float(gaps.min())
    wide = np.flatnonzero(gaps > GAP_FACTOR * step)
    if len(wide):
        missing = [positions[i] + k * step for i in wide for k in range(1, int(round(gaps[i] / step)))]
        where = ", ".join(f"{z:.2f}" for z in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise GeometryError(f"CT series has a gap: {len(missing) or 1} slice(s) missing at {where} mm along the "
                            f"slice normal (spacing {step:.2f} mm); add them, or pass --allow-slice-gaps to "
                            f"interpolate across the gap", path)


def read_ct_series(items: list[tuple[Path, pydicom.Dataset]], *,
                   allow_gaps: bool = False) -> tuple[np.ndarray, Grid, list[str]]:
    """The series' HU volume (float32, (z, y, x)), its grid and warnings; ``allow_gaps``: interpolate
    across missing slices instead of refusing them."""
    first_path, first = items[0]
    iop = _orientation(first, first_path)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    pixel = tuple(float(v) for v in first.PixelSpacing)  # (row spacing = y, column spacing = x)
    shape2d = (int(first.Rows), int(first.Columns))
    slices = []
    for path, ds in items:
        if not np.allclose(_orientation(ds, path), iop, atol=1e-4):
            raise GeometryError("CT slices with different orientations in one series", path)
        if (int(ds.Rows), int(ds.Columns)) != shape2d or not np.allclose([float(v) for v in ds.PixelSpacing], pixel):
            raise GeometryError("CT slices with different sizes or pixel spacing in one series", path)
        slices.append((float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)), path, ds))
    slices.sort(key=lambda s: s[0])
    positions = np.array([s[0] for s in slices])
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        dup = slices[int(np.argmin(gaps)) + 1][1]
        raise GeometryError(f"duplicate CT slice position {positions[int(np.argmin(gaps)) + 1]:.2f} mm", dup)
    # a tilted gantry shifts each slice's origin within its plane
    origins = np.array([np.asarray(s[2].ImagePositionPatient, dtype=float) for s in slices])
    if len(slices) > 1:
        in_plane = (origins - origins[0]) - np.outer(positions - positions[0], normal)
        if np.abs(in_plane).max() > 0.01 * max(pixel):
            raise GeometryError("CT slices are not stacked along the slice normal (gantry tilt is not supported)", first_path)
    if len(gaps) and not allow_gaps:
        _check_gaps(positions, gaps, first_path)

    volume = np.empty((len(slices), *shape2d), dtype=np.float32)
    for k, (_, path, _) in enumerate(slices):
        try:
            ds = read_dataset(path)
            pixels = ds.pixel_array.astype(np.float32)
        except DicomError:
            raise
        except Exception as error:  # noqa: BLE001 - pixel decoding fails in many ways; all are the file's
            raise DicomError(f"cannot read CT pixel data ({error.__class__.__name__}: {error})", path) from None
        if pixels.shape != shape2d:
            raise DicomError(f"CT pixel data has shape {pixels.shape}, the header says {shape2d}", path)
        volume[k] = pixels * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))

    warnings: list[str] = []
    thickness = float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness", 1.0) or 1.0)
    direction = np.column_stack([row, col, normal]).ravel()
    spacing = (pixel[1], pixel[0], thickness)
    if len(gaps) and (gaps.max() - gaps.min()) > 0.01 * gaps.min():
        uniform = float(gaps.min())
        warnings.append(
            f"non-uniform CT slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm): resampled to {uniform:.2f} mm"
        )
        n = int(round((positions[-1] - positions[0]) / uniform)) + 1
        target = Grid((n, *shape2d), (pixel[1], pixel[0], uniform), origins[0], direction)
        volume = _resample_stack(volume, positions, target)
        return volume, target, warnings
    return volume, Grid(volume.shape, spacing, origins[0], direction), warnings


def _resample_stack(volume: np.ndarray, positions: np.ndarray, target: Grid) -> np.ndarray:
    """Linear interpolation between slices at uneven positions onto the target's even ones."""
    wanted = positions[0] + np.arange(target.shape[0]) * target.spacing[2]
    upper = np.clip(np.searchsorted(positions, wanted, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    t = ((wanted - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    t = np.clip(t, 0.0, 1.0)[:, None, None]
    return (volume[lower] * (1 - t) + volume[upper] * t).astype(np.float32)

