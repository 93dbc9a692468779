"""RTSTRUCT → structures (masks on the CT grid, with their contours)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dosediffusion.case import Structure
from dosediffusion.errors import DicomError, GeometryError
from dosediffusion.geometry import Grid
from dosediffusion.io.dicom_scan import read_dataset
from dosediffusion.io.rasterize import rasterize


def read_rtstruct(path: Path, grid: Grid, frame_of_reference: str) -> tuple[dict[str, Structure], list[str]]:
    """Structures of the RTSTRUCT at ``path`` rasterised on ``grid`` (the CT's), and warnings.

    Raises:
        DicomError: no ReferencedFrameOfReferenceSequence, or malformed contour data.
        GeometryError: the structure set is on another frame of reference than the CT, or a
            structure's contours all lie outside the CT image.
    """
    ds = read_dataset(path)
    refs = ds.get("ReferencedFrameOfReferenceSequence")
    if not refs or "FrameOfReferenceUID" not in refs[0]:
        raise DicomError("RTSTRUCT without ReferencedFrameOfReferenceSequence: cannot tell which CT it belongs to", path)
    if str(refs[0].FrameOfReferenceUID) != frame_of_reference:
        raise GeometryError(f"RTSTRUCT is on frame of reference {refs[0].FrameOfReferenceUID}, "
                            f"the CT on {frame_of_reference}", path)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    structures: dict[str, Structure] = {}
    empty, off_plane, clipped, points_only = [], [], [], []
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        name = names.get(number, f"ROI {number}")
        polygons = []
        for contour in item.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if kind != "CLOSED_PLANAR":
                points_only.append(name)
                continue
            data = np.asarray(contour.ContourData, dtype=float)
            if data.size % 3 or data.size < 9:
                raise DicomError(f"structure {name!r} has a contour with {data.size} coordinates "
                                 "(need 3 per point, at least 3 points)", path)
            polygons.append(data.reshape(-1, 3))
        if not polygons:
            empty.append(name)
            structures[name] = Structure(name, np.zeros(grid.shape, bool))
            continue
        mask, report = rasterize(polygons, grid)
        if report.beyond == len(polygons) or (report.outside and not mask.any()):
            raise GeometryError(f"structure {name!r}: its contours lie outside the CT image", path)
        if report.beyond or report.outside:
            clipped.append(name)
        if report.off_plane:
            off_plane.append(name)
        if not mask.any():
            empty.append(name)
        structures[name] = Structure(name, mask, contours=polygons)
    for name in names.values():
        if name not in structures:
            empty.append(name)
            structures[name] = Structure(name, np.zeros(grid.shape, bool))
    warnings = []
    for label, found in (
        ("empty structures (no contours, or smaller than a voxel)", empty),
        ("structures partly outside the CT image (clipped)", clipped),
        ("structures with contours between CT slices (put on the nearest slice)", off_plane),
        ("non-planar contours ignored (POINT/OPEN)", points_only),
    ):
        if found:
            warnings.append(f"{path.name}: {label}: {', '.join(sorted(set(found)))}")
    return structures, warnings
