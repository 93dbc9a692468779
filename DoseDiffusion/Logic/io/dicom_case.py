"""A DICOM RT folder (or list of files) → :class:`~dosediffusion.case.Case`.

One CT series, and at most one RTSTRUCT, RTPLAN and RTDOSE on the CT's frame of reference; where a
folder holds several, pick by UID or get an error listing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Case, Prescription
from dosediffusion.errors import DicomError
from dosediffusion.io.dicom_ct import read_ct_series
from dosediffusion.io.dicom_rtdose import read_rtdose
from dosediffusion.io.dicom_rtplan import read_rtplan
from dosediffusion.io.dicom_rtstruct import read_rtstruct
from dosediffusion.io.dicom_scan import choose_object, choose_series, scan
from dosediffusion.roles import RoleChoice, assign_roles, case_prescription

#: Identifiers copied from the CT into ``Case.meta`` (DICOM keywords), for writers that reference them.
META_KEYWORDS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDate",
    "StudyTime", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "PatientPosition",
)


def read_dicom_case(
    path: str | PathLike | list,
    *,
    series_uid: str | None = None,
    struct_uid: str | None = None,
    plan_uid: str | None = None,
    dose_uid: str | None = None,
    aliases: AliasTable | None = None,
    roles: Mapping[str, RoleChoice] | None = None,
    allow_slice_gaps: bool = False,
) -> Case:
    """Read a case from DICOM files; see the module docstring for how objects are chosen (``aliases``,
    ``roles``: see :func:`~dosediffusion.roles.assign_roles`; ``allow_slice_gaps``: interpolate across
    missing CT slices instead of refusing them)."""
    source = path if not isinstance(path, (list, tuple)) else (Path(path[0]).parent if path else ".")
    index = scan(path)
    series = choose_series(index, series_uid, source)
    first = series[0][1]
    if "FrameOfReferenceUID" not in first:
        raise DicomError("CT without FrameOfReferenceUID", series[0][0])
    frame = str(first.FrameOfReferenceUID)
    ct, grid, warnings = read_ct_series(series, allow_gaps=allow_slice_gaps)
    meta = {k: str(first.get(k)) for k in META_KEYWORDS if first.get(k) not in (None, "")}
    meta["CTSeriesInstanceUID"] = str(first.SeriesInstanceUID)

    structures = {}
    chosen = choose_object(index.structs, struct_uid, frame, "RTSTRUCT", "--struct-uid", source)
    if chosen:
        structures, found = read_rtstruct(chosen[0], grid, frame)
        warnings += found
        meta["RTStructSOPInstanceUID"] = str(chosen[1].SOPInstanceUID)
    beams, prescription = [], Prescription()
    chosen = choose_object(index.plans, plan_uid, frame, "RTPLAN", "--plan-uid", source)
    if chosen:
        beams, prescription, found = read_rtplan(chosen[0])
        warnings += found
        meta["RTPlanSOPInstanceUID"] = str(chosen[1].SOPInstanceUID)
        meta["RTPlanSOPClassUID"] = str(chosen[1].SOPClassUID)
    dose = None
    chosen = choose_object(index.doses, dose_uid, frame, "RTDOSE", "--dose-uid", source)
    if chosen:
        dose, found = read_rtdose(chosen[0], grid, frame)
        warnings += found
    warnings += assign_roles(structures, prescription.levels_gy, aliases, roles)
    prescription = case_prescription(prescription, structures)
    return Case(
        case_id=meta.get("PatientID") or Path(source).name,
        grid=grid,
        ct=ct,
        structures=structures,
        beams=beams,
        prescription=prescription,
        dose=dose,
        meta=meta,
        warnings=warnings,
    )
