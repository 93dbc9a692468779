"""Beams of a SlicerRT RT plan node as core :class:`~dosediffusion.case.Beam` objects.

SlicerRT's classes are not imported: the node is used only through the methods SlicerRT defines
(``Beams/MRML/vtkMRMLRTPlanNode.h``, ``vtkMRMLRTBeamNode.h``), so any object with those method names
works (the tests use such fakes):

- plan: ``GetBeams(vtkCollection)``, ``GetIsocenterPosition(double[3])`` (RAS, mm; the isocenter
  markup), ``GetRxDose()`` (Gy), ``GetScene()``, ``GetPlanSubjectHierarchyItemID()``;
- beam: ``GetName()``, ``GetGantryAngle()``, ``GetCollimatorAngle()``, ``GetCouchAngle()`` (degrees,
  IEC 61217 as DICOM stores them), ``GetSAD()`` (mm), ``GetBeamWeight()``,
  ``GetIsocenterPositionFlag()``/``GetIsocenterPosition()`` (a control point's own isocenter, RAS).

A dynamic beam (an arc, or any beam with more than two control points) is imported by SlicerRT as a
vtkMRMLSequenceNode named after the beam holding one beam node per control point (``"<name> [..] :
CP<i>"``), browsed by a vtkMRMLSequenceBrowserNode whose proxy beam node is the one in the plan
(``DicomRtImportExport/Logic/vtkSlicerDicomRtImportExportModuleLogic.cxx``, LoadDynamicBeamSequence).
Its control-point gantry angles are read from that sequence; the rotation direction follows from
their order (``CW``: the gantry angle increases). Isocenters are converted from RAS to LPS.

When the node's beams cannot be read (no beams, a proxy beam without its sequence) and the plan was
loaded from DICOM, its RTPLAN file (found through the subject hierarchy's DICOM instance UID and
Slicer's DICOM database) is read with :func:`dosediffusion.io.dicom_rtplan.read_rtplan` instead.

Two node values are SlicerRT defaults that its DICOM import never sets: a beam's ``BeamWeight`` (1.0)
and the plan's ``RxDose`` (1.0 Gy). For a plan loaded from DICOM the meterset weights and the
prescription therefore come from its RTPLAN file; a plan's ``RxDose`` of exactly 1 Gy is taken as unset.
The plan's isocenter is asked for only when a beam has none of its own: SlicerRT's
``GetIsocenterPosition`` makes the plan's points-of-interest markup when it does not exist yet.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from dosediffusion.case import Beam, Prescription

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

#: DICOM tags of the CT read from Slicer's DICOM database for the RTDOSE we write (keyword → tag).
_CT_TAGS = {
    "PatientName": "0010,0010", "PatientID": "0010,0020", "PatientBirthDate": "0010,0030", "PatientSex": "0010,0040",
    "StudyInstanceUID": "0020,000D", "StudyDate": "0008,0020", "StudyTime": "0008,0030", "StudyID": "0020,0010",
    "AccessionNumber": "0008,0050", "ReferringPhysicianName": "0008,0090", "FrameOfReferenceUID": "0020,0052",
    "CTSeriesInstanceUID": "0020,000E", "PatientPosition": "0018,5100",
}
RT_PLAN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.5"
#: vtkMRMLRTPlanNode's RxDose before anyone sets it (``double RxDose{ 1.0 }``), Gy.
SLICERRT_DEFAULT_RX_GY = 1.0


@dataclass
class PlanReading:
    """What was read from a plan: beams (LPS isocenters), prescription, where from, and warnings."""

    beams: list[Beam]
    prescription: Prescription = field(default_factory=Prescription)
    source: str = "node"  # "node" or "rtplan"
    warnings: list[str] = field(default_factory=list)


class UnresolvedBeamError(RuntimeError):
    """A beam whose geometry cannot be read from the node (e.g. a proxy beam without its sequence)."""


def _lps(point_ras) -> tuple[float, float, float]:
    return tuple(float(v) for v in _LPS_FROM_RAS @ np.asarray(point_ras, dtype=float))


def _nodes_of_class(scene, class_name: str) -> list[Any]:
    if scene is None:
        return []
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def beam_sequence(beam) -> Any | None:
    """The control-point sequence of a SlicerRT proxy beam (None for a static beam)."""
    for browser in _nodes_of_class(beam.GetScene(), "vtkMRMLSequenceBrowserNode"):
        sequence = browser.GetSequenceNode(beam)
        if sequence is not None:
            return sequence
    return None


def arc_direction(angles: list[float]) -> str | None:
    """``CW`` when the gantry angles mostly increase (mod 360), ``CC`` when they decrease, None when constant."""
    steps = [(b - a) % 360.0 for a, b in zip(angles, angles[1:], strict=False) if abs((b - a) % 360.0) > 1e-6]
    if not steps:
        return None
    clockwise = sum(1 for s in steps if s < 180.0)
    return "CW" if clockwise >= len(steps) - clockwise else "CC"


def _beam_from_node(beam, plan_isocenter_ras: Callable[[], list[float] | None]) -> Beam:
    sequence = beam_sequence(beam)
    name = beam.GetName()
    points = [beam]
    if sequence is not None:
        points = [sequence.GetNthDataNode(i) for i in range(sequence.GetNumberOfDataNodes())]
        if not points:
            raise UnresolvedBeamError(f"beam {name!r}: its control-point sequence is empty")
        name = sequence.GetName() or name
    first = points[0]
    angles = [float(p.GetGantryAngle()) for p in points]
    direction = arc_direction(angles) if len(points) > 1 else None
    isocenter = list(first.GetIsocenterPosition()) if first.GetIsocenterPositionFlag() else plan_isocenter_ras()
    if isocenter is None:
        raise UnresolvedBeamError(f"beam {name!r}: no isocenter in the beam or the plan")
    return Beam(
        name=name,
        gantry_deg=angles[0],
        collimator_deg=float(first.GetCollimatorAngle()),
        couch_deg=float(first.GetCouchAngle()),
        isocenter_mm=_lps(isocenter),
        control_point_gantry_deg=tuple(angles) if direction else (angles[0],),
        arc_direction=direction,
        meterset_weight=float(first.GetBeamWeight()),
        sad_mm=float(first.GetSAD()),
        radiation_type="PROTON" if first.IsA("vtkMRMLRTIonBeamNode") else "PHOTON",
    )


def beams_from_plan_node(plan_node) -> list[Beam]:
    """The beams of a SlicerRT RT plan node, isocenters in LPS mm (see the module docstring)."""
    collection = vtk.vtkCollection()
    plan_node.GetBeams(collection)

    @functools.cache
    def plan_isocenter() -> list[float] | None:
        isocenter = [0.0, 0.0, 0.0]
        return isocenter if plan_node.GetIsocenterPosition(isocenter) else None

    return [_beam_from_node(collection.GetItemAsObject(i), plan_isocenter) for i in range(collection.GetNumberOfItems())]


def with_file_weights(beams: list[Beam], file_beams: list[Beam]) -> tuple[list[Beam], list[str]]:
    """``beams`` (from the node) with the meterset weights of the RTPLAN file's beams of the same
    names; unchanged, with a warning, when the names do not match."""
    weights = {b.name: b.meterset_weight for b in file_beams}
    if sorted(weights) != sorted(b.name for b in beams):
        return beams, ["the plan's beams differ from its RTPLAN file's: meterset weights are SlicerRT's (1.0)"]
    return [dataclasses.replace(b, meterset_weight=weights[b.name]) for b in beams], []


def _subject_hierarchy(node):
    scene = node.GetScene() if node is not None else None
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None


def _item(sh, node) -> int:
    if hasattr(node, "GetPlanSubjectHierarchyItemID"):
        return node.GetPlanSubjectHierarchyItemID()
    return sh.GetItemByDataNode(node)


def _database(dicom_database):
    return dicom_database if dicom_database is not None else getattr(slicer, "dicomDatabase", None)


def rtplan_file(plan_node, dicom_database=None) -> Path | None:
    """The RTPLAN file a plan node was loaded from: its subject-hierarchy item's DICOM instance UID
    (``DICOMInstanceUID``, set by SlicerRT's import) looked up with ``fileForInstance``, else its
    series UID (``DICOM``) with ``filesForSeries``; None when there is no database or no file."""
    database = _database(dicom_database)
    sh = _subject_hierarchy(plan_node)
    if database is None or sh is None:
        return None
    item = _item(sh, plan_node)
    if not item:
        return None
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    path = None
    instance = sh.GetItemUID(item, constants.GetDICOMInstanceUIDName())
    if instance:
        path = database.fileForInstance(instance.split()[0])
    if not path:
        series = sh.GetItemUID(item, constants.GetDICOMUIDName())
        files = list(database.filesForSeries(series)) if series else []
        path = files[0] if files else None
    return Path(path) if path and Path(path).is_file() else None


def read_plan(plan_node, dicom_database=None) -> PlanReading:
    """Beams and prescription of ``plan_node``: from the node's beams (with the RTPLAN file's meterset
    weights when there is a file), or from its RTPLAN file when those cannot be read. The prescription
    (levels, fractions) comes from the file when there is one, else from the plan's ``RxDose`` unless that
    is SlicerRT's default."""
    warnings: list[str] = []
    path = rtplan_file(plan_node, dicom_database)
    file_reading = None
    if path is not None:
        from dosediffusion.io.dicom_rtplan import read_rtplan

        beams, prescription, file_warnings = read_rtplan(path)
        file_reading = PlanReading(beams, prescription, "rtplan", file_warnings)
    try:
        beams = beams_from_plan_node(plan_node)
        problem = None if beams else "the plan node has no beams"
    except (UnresolvedBeamError, AttributeError, TypeError) as error:
        beams, problem = [], str(error)
    rx = float(plan_node.GetRxDose()) if hasattr(plan_node, "GetRxDose") else 0.0
    rx_set = rx > 0 and rx != SLICERRT_DEFAULT_RX_GY
    prescription = file_reading.prescription if file_reading else Prescription([rx] if rx_set else [])
    if problem is None:
        if file_reading is not None:
            beams, weight_warnings = with_file_weights(beams, file_reading.beams)
            warnings = file_reading.warnings + weight_warnings
        return PlanReading(beams, prescription, "node", warnings)
    if file_reading is not None:
        return PlanReading(file_reading.beams, prescription, "rtplan",
                           [f"plan {plan_node.GetName()!r}: {problem}; beams read from its RTPLAN file {path.name}"]
                           + file_reading.warnings)
    return PlanReading([], prescription, "node", [f"plan {plan_node.GetName()!r}: {problem}; predicting without beams"])


def dicom_meta(volume_node, plan_node=None, dicom_database=None) -> dict[str, str]:
    """DICOM identifiers for the RTDOSE written later: the CT's patient, study and frame of
    reference (from Slicer's DICOM database through the CT's instance UIDs, else the subject
    hierarchy's study/patient UIDs) and the plan's SOP instance UID."""
    meta: dict[str, str] = {}
    sh = _subject_hierarchy(volume_node)
    if sh is None:
        return meta
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    item = sh.GetItemByDataNode(volume_node)
    database = _database(dicom_database)
    if item:
        instances = (sh.GetItemUID(item, constants.GetDICOMInstanceUIDName()) or "").split()
        if instances and database is not None:
            for keyword, tag in _CT_TAGS.items():
                value = database.instanceValue(instances[0], tag)
                if value:
                    meta[keyword] = str(value)
        study = sh.GetItemAncestorAtLevel(item, constants.GetDICOMLevelStudy())
        if study and sh.GetItemUID(study, constants.GetDICOMUIDName()):
            meta.setdefault("StudyInstanceUID", sh.GetItemUID(study, constants.GetDICOMUIDName()))
        patient = sh.GetItemAncestorAtLevel(item, constants.GetDICOMLevelPatient())
        if patient and sh.GetItemUID(patient, constants.GetDICOMUIDName()):
            meta.setdefault("PatientID", sh.GetItemUID(patient, constants.GetDICOMUIDName()))
    if plan_node is not None:
        plan_sh = _subject_hierarchy(plan_node)
        plan_item = _item(plan_sh, plan_node) if plan_sh is not None else 0
        instance = plan_sh.GetItemUID(plan_item, constants.GetDICOMInstanceUIDName()) if plan_item else ""
        if instance:
            meta["RTPlanSOPInstanceUID"] = instance.split()[0]
            meta["RTPlanSOPClassUID"] = RT_PLAN_SOP_CLASS
    return meta
