"""A dose array → RTDOSE (multi-frame, GY, PHYSICAL), valid by ``dciodvfy``."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.dicom_common import RT_DOSE, RT_PLAN, ensure_identifiers, new_dataset, save

_MAX_STORED = 2**16 - 1


def write_rtdose(
    dose_gy: np.ndarray,
    grid: Grid,
    path: str | PathLike,
    meta: dict[str, str],
    *,
    description: str = "DoseDiffusion predicted dose",
) -> Path:
    """Write ``dose_gy`` ((z, y, x) on ``grid``, Gy, total over all fractions) as an RTDOSE file.

    The file is on ``meta``'s study and frame of reference (the CT's; new UIDs when ``meta`` has
    none) and references the plan ``meta["RTPlanSOPInstanceUID"]`` when given, with
    DoseSummationType PLAN. (A case without a plan gets no reference; dciodvfy then reports the
    missing conditional ReferencedRTPlanSequence: no other summation type goes without a reference.) Values are
    stored as 16-bit unsigned integers with DoseGridScaling = max / (2¹⁶ − 1): each stored value is
    within half a scaling step (max / 131070, 0.5 mGy at 70 Gy) of the input. (32-bit storage
    would be finer, but the reference validator dciodvfy cannot read 32-bit RTDOSE pixel data.)

    Raises:
        InputError: a dose that is not finite or negative, or not on ``grid``; a non-axial grid.
    """
    dose = np.asarray(dose_gy, dtype=np.float64)
    if dose.shape != grid.shape:
        raise InputError(f"dose shape {dose.shape} does not match its grid {grid.shape}", path)
    if not np.all(np.isfinite(dose)):
        raise InputError("dose has NaN or infinite values", path)
    if dose.min() < 0:
        raise InputError(f"dose has negative values (min {dose.min():.3g} Gy)", path)
    normal = grid.matrix[:, 2]
    if not np.allclose(np.cross(grid.matrix[:, 0], grid.matrix[:, 1]), normal, atol=1e-4):
        raise InputError("dose grid has a left-handed orientation; RTDOSE frames must follow the slice normal", path)
    meta = ensure_identifiers(meta)
    ds = new_dataset(RT_DOSE, "RTDOSE", meta, generate_uid(), series_number=900, description=description)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [f"{v:.6f}" for v in grid.origin]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*grid.matrix[:, 0], *grid.matrix[:, 1])]
    ds.PixelSpacing = [f"{grid.spacing[1]:.6f}", f"{grid.spacing[0]:.6f}"]  # row (y), column (x)
    ds.SliceThickness = f"{grid.spacing[2]:.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = grid.shape[0]
    ds.FrameIncrementPointer = Tag("GridFrameOffsetVector")
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseComment = description[:64]
    ds.GridFrameOffsetVector = [f"{k * grid.spacing[2]:.6f}" for k in range(grid.shape[0])]
    peak = float(dose.max())
    scaling = peak / _MAX_STORED if peak > 0 else 1.0
    ds.DoseGridScaling = f"{scaling:.10e}"
    stored = np.rint(dose / float(ds.DoseGridScaling)).clip(0, _MAX_STORED).astype("<u2")
    if "RTPlanSOPInstanceUID" in meta:
        ds.DoseSummationType = "PLAN"
        ref = Dataset()
        ref.ReferencedSOPClassUID = meta.get("RTPlanSOPClassUID", RT_PLAN)
        ref.ReferencedSOPInstanceUID = meta["RTPlanSOPInstanceUID"]
        ds.ReferencedRTPlanSequence = [ref]
    else:  # a beam-free prediction: DICOM wants a plan reference here that does not exist
        ds.DoseSummationType = "PLAN"
    ds.PixelData = stored.tobytes()
    return save(ds, path)
