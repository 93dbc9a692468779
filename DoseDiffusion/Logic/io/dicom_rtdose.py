"""RTDOSE → dose in Gy on the CT grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from dosediffusion.errors import DicomError, GeometryError
from dosediffusion.geometry import Grid, resample
from dosediffusion.io.dicom_scan import read_dataset


def rtdose_grid(ds: pydicom.Dataset, path: Path) -> Grid:
    """The dose grid of an RTDOSE: GridFrameOffsetVector gives the frame positions along the slice
    normal, relative to ImagePositionPatient (first value 0) or, in the older form, absolute."""
    try:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        frames = int(ds.get("NumberOfFrames", 1))
        offsets = np.asarray(ds.GridFrameOffsetVector if frames > 1 else [0.0], dtype=float)
    except (AttributeError, TypeError, ValueError) as error:
        raise DicomError(f"RTDOSE without usable geometry ({error})", path) from None
    normal = np.cross(iop[:3], iop[3:])
    if len(offsets) != frames:
        raise DicomError(f"GridFrameOffsetVector has {len(offsets)} values for {frames} frames", path)
    if offsets[0] != 0.0:  # absolute z positions (allowed for HFS axial grids)
        offsets = offsets - float(np.dot(ipp, normal))
    steps = np.diff(offsets)
    if frames > 1 and (np.any(np.abs(steps) < 1e-6) or np.ptp(steps) > 1e-3 * max(abs(steps).max(), 1.0)):
        raise DicomError("RTDOSE frames are not evenly spaced", path)
    step = float(steps[0]) if frames > 1 else 1.0
    direction = np.column_stack([iop[:3], iop[3:], normal * np.sign(step)]).ravel()
    return Grid((frames, int(ds.Rows), int(ds.Columns)), (col_spacing, row_spacing, abs(step)), ipp + offsets[0] * normal,
                direction)


def read_rtdose_volume(path: Path, frame_of_reference: str | None) -> tuple[np.ndarray, Grid, list[str]]:
    """The RTDOSE at ``path`` in Gy (stored values × DoseGridScaling) on its own grid, with warnings;
    refused when it is on another frame of reference than ``frame_of_reference`` (None: not checked)."""
    ds = read_dataset(path)
    warnings = []
    if str(ds.get("Modality", "RTDOSE")).upper() != "RTDOSE":
        raise DicomError(f"not an RTDOSE (Modality {ds.get('Modality')})", path)
    if frame_of_reference is not None and str(ds.get("FrameOfReferenceUID", "")) != frame_of_reference:
        raise GeometryError(f"RTDOSE is on frame of reference {ds.get('FrameOfReferenceUID')}, the CT on "
                            f"{frame_of_reference}: it is another patient's or another scan's dose", path)
    units = str(ds.get("DoseUnits", "")).upper()
    if units != "GY":
        raise DicomError(f"RTDOSE in units {units or 'unknown'!r}; only absolute dose (GY) is supported", path)
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as error:  # noqa: BLE001
        raise DicomError(f"cannot read RTDOSE pixel data ({error.__class__.__name__}: {error})", path) from None
    grid = rtdose_grid(ds, path)
    dose = pixels.reshape(grid.shape) * np.float32(float(ds.get("DoseGridScaling", 1.0)))
    summation = str(ds.get("DoseSummationType", ""))
    if summation and summation.upper() != "PLAN":
        warnings.append(f"{path.name}: RTDOSE summation type is {summation}, not PLAN")
    return dose, grid, warnings


def read_rtdose(path: Path, ct_grid: Grid, frame_of_reference: str) -> tuple[np.ndarray, list[str]]:
    """The RTDOSE at ``path`` in Gy, resampled (linearly) onto ``ct_grid``; zero outside the dose grid."""
    dose, grid, warnings = read_rtdose_volume(path, frame_of_reference)
    if not np.allclose(grid.matrix, ct_grid.matrix, atol=1e-4):
        warnings.append(f"{path.name}: dose grid orientation differs from the CT's: resampled")
    return np.clip(resample(dose, grid, ct_grid), 0.0, None).astype(np.float32), warnings
