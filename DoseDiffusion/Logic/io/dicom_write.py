"""Writers for a case's CT series, RTSTRUCT and RTPLAN (and all of it with :func:`write_case_dicom`).

Objects written together share the study and frame of reference of ``case.meta`` (new UIDs when
it has none) and reference each other (RTSTRUCT → CT series, RTDOSE → RTPLAN). A folder is
written into a temporary sibling and renamed at the end, so it never holds half a case.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.io.atomic import atomic_folder
from dosediffusion.io.dicom_common import CT_IMAGE, RT_PLAN, RT_STRUCTURE_SET, ensure_identifiers, new_dataset, save
from dosediffusion.io.rtdose_write import write_rtdose

_ROI_COLOURS = {"ptv": ["255", "0", "0"], "oar": ["0", "128", "255"], "body": ["0", "255", "0"], "other": ["255", "255", "0"]}
_INTERPRETED = {"ptv": "PTV", "oar": "ORGAN", "body": "EXTERNAL", "other": ""}
#: The source's own objects' UIDs (and its plan's SOP class) in ``Case.meta``, which written objects never reuse.
_INSTANCE_UIDS = ("CTSeriesInstanceUID", "RTStructSOPInstanceUID", "RTPlanSOPInstanceUID", "RTPlanSOPClassUID")


def _ds(number: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{number:.8g}"


def write_ct_series(case: Case, folder: str | PathLike, meta: dict[str, str]) -> list[tuple[Path, str]]:
    """One CT image file per axial slice (int16 HU, rescale slope 1, intercept 0); returns each
    file's path and SOPInstanceUID."""
    folder = Path(folder)
    grid = case.grid
    hu = np.rint(np.clip(case.ct, -32768, 32767)).astype(np.int16)
    iop = [_ds(v) for v in (*grid.matrix[:, 0], *grid.matrix[:, 1])]
    paths = []
    for k in range(grid.shape[0]):
        ds = new_dataset(CT_IMAGE, "CT", meta, meta["CTSeriesInstanceUID"], description="CT")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = ds.InstanceCreationDate, ds.InstanceCreationTime
        ds.PatientOrientation = ""
        ds.PatientPosition = meta.get("PatientPosition", "HFS")
        ds.KVP = "120"
        ds.AcquisitionNumber = ""
        ds.Laterality = ""
        ds.ImagePositionPatient = [_ds(v) for v in grid.index_to_physical(np.array([k, 0, 0]))]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[0])]
        ds.SliceThickness = _ds(grid.spacing[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = hu[k].astype("<i2").tobytes()
        paths.append((save(ds, folder / f"CT.{k + 1:04d}.dcm"), str(ds.SOPInstanceUID)))
    return paths


def write_rtstruct(case: Case, path: str | PathLike, meta: dict[str, str], ct_sop_uids: list[str]) -> Path:
    """The case's structures as CLOSED_PLANAR contours (``Structure.contours``, patient mm) on the
    CT images ``ct_sop_uids``; its SOPInstanceUID is ``meta["RTStructSOPInstanceUID"]`` when given. An
    empty structure (no voxel) is an ROI without contours, which reads back as the same empty structure."""
    missing = [name for name, s in case.structures.items() if not s.contours and s.mask.any()]
    if missing:
        raise InputError(f"structures without contours cannot be written to RTSTRUCT: {', '.join(missing)}", path)
    ds = new_dataset(RT_STRUCTURE_SET, "RTSTRUCT", meta, generate_uid(), series_number=2, description="Structures",
                     sop_instance_uid=meta.get("RTStructSOPInstanceUID"))
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "DoseDiffusion"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    series = Dataset()
    series.SeriesInstanceUID = meta["CTSeriesInstanceUID"]
    series.ContourImageSequence = []
    for uid in ct_sop_uids:
        image = Dataset()
        image.ReferencedSOPClassUID = CT_IMAGE
        image.ReferencedSOPInstanceUID = uid
        series.ContourImageSequence.append(image)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired), as TPSs write
    study.ReferencedSOPInstanceUID = meta["StudyInstanceUID"]
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = meta["FrameOfReferenceUID"]
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, structure) in enumerate(case.structures.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = meta["FrameOfReferenceUID"]
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = _ROI_COLOURS[structure.role]
        if structure.contours:  # an empty structure's item has no ContourSequence (Type 3)
            item.ContourSequence = []
        for points in structure.contours or ():
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [_ds(v) for v in np.asarray(points, dtype=float).ravel()]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = _INTERPRETED[structure.role]
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    return save(ds, path)


def write_rtplan(case: Case, path: str | PathLike, meta: dict[str, str]) -> Path:
    """The case's beams (arcs with one control point per gantry angle), fractions and prescription;
    its SOPInstanceUID is ``meta["RTPlanSOPInstanceUID"]`` when given."""
    if not case.beams:
        raise InputError("the case has no beams to write as an RTPLAN", path)
    ds = new_dataset(RT_PLAN, "RTPLAN", meta, generate_uid(), series_number=3, description="Plan",
                     sop_instance_uid=meta.get("RTPlanSOPInstanceUID"))
    ds.InstanceNumber = 1
    ds.RTPlanLabel = "DoseDiffusion"
    ds.RTPlanDate, ds.RTPlanTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    if "RTStructSOPInstanceUID" in meta:
        ds.RTPlanGeometry = "PATIENT"
        structure_set = Dataset()
        structure_set.ReferencedSOPClassUID = RT_STRUCTURE_SET
        structure_set.ReferencedSOPInstanceUID = meta["RTStructSOPInstanceUID"]
        ds.ReferencedStructureSetSequence = [structure_set]
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    ds.DoseReferenceSequence = []
    for k, level in enumerate(case.prescription.levels_gy, start=1):
        ref = Dataset()
        ref.DoseReferenceNumber = k
        ref.DoseReferenceStructureType = "SITE"
        ref.DoseReferenceType = "TARGET"
        ref.TargetPrescriptionDose = _ds(level)
        ds.DoseReferenceSequence.append(ref)
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = case.prescription.fractions or 1
    group.NumberOfBeams = len(case.beams)
    group.NumberOfBrachyApplicationSetups = 0
    group.ReferencedBeamSequence = []
    ds.BeamSequence = []
    for number, beam in enumerate(case.beams, start=1):
        ref = Dataset()
        ref.ReferencedBeamNumber = number
        if beam.meterset_weight is not None:
            ref.BeamMeterset = _ds(beam.meterset_weight)
        group.ReferencedBeamSequence.append(ref)
        item = Dataset()
        item.BeamNumber = number
        item.BeamName = beam.name
        item.BeamType = "DYNAMIC" if beam.is_arc else "STATIC"
        item.RadiationType = beam.radiation_type
        item.TreatmentMachineName = "DoseDiffusion"
        item.PrimaryDosimeterUnit = "MU"
        item.SourceAxisDistance = _ds(beam.sad_mm)
        item.TreatmentDeliveryType = "TREATMENT"
        item.NumberOfWedges = item.NumberOfCompensators = item.NumberOfBoli = item.NumberOfBlocks = 0
        item.FinalCumulativeMetersetWeight = "1"
        item.BeamLimitingDeviceSequence = []
        for jaw in ("ASYMX", "ASYMY"):
            device = Dataset()
            device.RTBeamLimitingDeviceType = jaw
            device.NumberOfLeafJawPairs = 1
            item.BeamLimitingDeviceSequence.append(device)
        angles = beam.control_point_gantry_deg
        n = len(angles) if beam.is_arc else 2
        item.NumberOfControlPoints = n
        item.ControlPointSequence = []
        for i in range(n):
            cp = Dataset()
            cp.ControlPointIndex = i
            cp.CumulativeMetersetWeight = _ds(i / (n - 1))
            if i == 0 or beam.is_arc:
                cp.GantryAngle = _ds(angles[i] if beam.is_arc else beam.gantry_deg)
                cp.GantryRotationDirection = beam.arc_direction if beam.is_arc and i < n - 1 else "NONE"
            if i == 0:
                cp.NominalBeamEnergy = "6"
                cp.BeamLimitingDeviceAngle = _ds(beam.collimator_deg)
                cp.BeamLimitingDeviceRotationDirection = "NONE"
                cp.PatientSupportAngle = _ds(beam.couch_deg)
                cp.PatientSupportRotationDirection = "NONE"
                cp.TableTopEccentricAngle = "0"
                cp.TableTopEccentricRotationDirection = "NONE"
                cp.IsocenterPosition = [_ds(v) for v in beam.isocenter_mm]
            item.ControlPointSequence.append(cp)
        ds.BeamSequence.append(item)
    ds.FractionGroupSequence = [group]
    ds.ApprovalStatus = "UNAPPROVED"
    return save(ds, path)


def write_case_dicom(case: Case, folder: str | PathLike, *, replace: bool = False) -> dict[str, Path | list[Path]]:
    """Write CT, RTSTRUCT (if structures), RTPLAN (if beams) and RTDOSE (if dose) into ``folder``
    (created; an existing one is an error, or with ``replace`` replaced whole once all is written).
    The objects keep the case's patient, study and frame of reference; each is a new instance, so the
    CT is a new series (a case read from DICOM keeps its source's UIDs in ``case.meta``: reusing them
    would put two sets of slices in one series). Returns the written paths by kind."""
    folder = Path(folder)
    if folder.exists() and not replace:
        raise InputError("output folder exists already", folder)
    meta = ensure_identifiers({k: v for k, v in case.meta.items() if k not in _INSTANCE_UIDS})
    meta["CTSeriesInstanceUID"] = generate_uid()
    with atomic_folder(folder, replace=replace) as staging:
        ct = write_ct_series(case, staging, meta)
        written: dict[str, Path | list[Path]] = {"ct": [p for p, _ in ct]}
        if case.structures:
            meta["RTStructSOPInstanceUID"] = generate_uid()
            written["rtstruct"] = write_rtstruct(case, staging / "RTSTRUCT.dcm", meta, [uid for _, uid in ct])
        if case.beams:
            meta["RTPlanSOPInstanceUID"] = generate_uid()
            written["rtplan"] = write_rtplan(case, staging / "RTPLAN.dcm", meta)
        if case.dose is not None:
            written["rtdose"] = write_rtdose(case.dose, case.grid, staging / "RTDOSE.dcm", meta)
    return {k: ([folder / p.name for p in v] if isinstance(v, list) else folder / v.name) for k, v in written.items()}
