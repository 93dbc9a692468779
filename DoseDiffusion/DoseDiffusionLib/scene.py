"""MRML scene ↔ DoseDiffusion core: a :class:`~dosediffusion.case.Case` from scene nodes, and the
prediction back into the scene (RT dose volume, its uncertainty volume, DVH chart, scorecard table).

Coordinates: Slicer's nodes are in RAS, the core's :class:`~dosediffusion.geometry.Grid` and beams
in DICOM LPS (x → patient left, y → posterior); the two differ by the flip ``diag(-1, -1, 1)``.
A volume's IJK-to-RAS matrix has the voxel spacing (mm) times the RAS direction of each index
axis in its columns; arrays are ``(k, j, i)`` = ``(z, y, x)`` in both. Doses are in Gy.

Only the MRML/VTK classes of ``slicer`` are used here (they exist in the ``slicer-core`` wheel);
no Qt, ctk, ``slicer.app``, ``slicer.modules`` or ``slicer.mrmlScene``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from dosediffusion.aliases import AliasTable
from dosediffusion.case import Case, Prescription, Structure
from dosediffusion.errors import GeometryError, InputError
from dosediffusion.geometry import Grid, resample
from dosediffusion.roles import RoleChoice, assign_roles, case_prescription

#: RAS ↔ LPS (its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

# SlicerRT's names (SlicerRtCommon/vtkSlicerRtCommon.cxx)
DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"
DOSE_UNIT_VALUE_ATTRIBUTE = "DicomRtImport.DoseUnitValue"
DOSE_COLOR_TABLE_NAME = "Dose_ColorTable"
#: Our marker on nodes this module made (predicted dose and its uncertainty, DVH chart and table, scorecard).
PREDICTION_ATTRIBUTE = "DoseDiffusion.Prediction"
#: Node-reference roles from a prediction's nodes to the CT and the plan it was predicted from (kept
#: through scene save and load): a re-run replaces that CT's prediction only, and the export writes
#: the RTDOSE on that CT's patient, study and frame of reference, whatever the selectors show then.
SOURCE_CT_ROLE = "DoseDiffusion.SourceCT"
SOURCE_PLAN_ROLE = "DoseDiffusion.SourcePlan"
#: SeriesDescription of the RTDOSE the module writes (``dosediffusion.io.rtdose_write``'s default):
#: such a dose loaded back from DICOM is a prediction, never the reference dose.
EXPORTED_PREDICTION_DESCRIPTION = "DoseDiffusion predicted dose"
SERIES_DESCRIPTION_TAG = "0008,103E"
#: Slicer's built-in black–red–yellow–white heat scale (a PET colour node), for the uncertainty (std) volume.
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"


# ----------------------------------------------------------------------------- geometry


def lps_from_ras(point: Sequence[float]) -> tuple[float, float, float]:
    """A RAS point (mm) → the same point in LPS (mm)."""
    return tuple(float(v) for v in LPS_FROM_RAS @ np.asarray(point, dtype=float))


ras_from_lps = lps_from_ras  # the flip is its own inverse


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_from_grid(grid: Grid) -> np.ndarray:
    """The 4×4 IJK-to-RAS matrix of ``grid`` (index (i, j, k) = (x, y, z) → RAS mm)."""
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_FROM_RAS @ grid.matrix * np.asarray(grid.spacing)
    matrix[:3, 3] = LPS_FROM_RAS @ np.asarray(grid.origin)
    return matrix


def grid_from_volume_node(volume_node) -> Grid:
    """The LPS :class:`Grid` of a scalar volume node's voxels (its IJK-to-RAS matrix and extent).

    Raises:
        InputError: the node has no image data.
        GeometryError: the volume's axes are not orthogonal (a sheared volume).
    """
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None:
        raise InputError(f"volume {getattr(volume_node, 'GetName', lambda: None)()!r} has no image data")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix_to_numpy(matrix)
    extent = image.GetExtent()
    first = np.array([extent[0], extent[2], extent[4]], dtype=float)
    axes = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise GeometryError(f"volume {volume_node.GetName()!r} has a zero voxel size")
    direction_lps = LPS_FROM_RAS @ (axes / spacing)
    origin_lps = LPS_FROM_RAS @ (axes @ first + ijk_to_ras[:3, 3])
    nx, ny, nz = image.GetDimensions()
    return Grid((nz, ny, nx), tuple(spacing), tuple(origin_lps), tuple(direction_lps.ravel()))


def set_volume_geometry(volume_node, grid: Grid) -> None:
    """Give ``volume_node`` the origin, spacing and axis directions of ``grid`` (LPS → RAS)."""
    ras_direction = LPS_FROM_RAS @ grid.matrix
    direction = np.eye(4)
    direction[:3, :3] = ras_direction
    volume_node.SetIJKToRASDirectionMatrix(_numpy_to_matrix(direction))
    volume_node.SetSpacing(*grid.spacing)
    volume_node.SetOrigin(*(LPS_FROM_RAS @ np.asarray(grid.origin)))


def _array_from_image(image) -> np.ndarray:
    """Voxels of a vtkImageData as a (z, y, x) numpy array (a copy)."""
    nx, ny, nz = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return np.zeros((nz, ny, nx))
    return np.array(numpy_support.vtk_to_numpy(scalars)).reshape(nz, ny, nx)


def array_from_volume_node(volume_node) -> np.ndarray:
    """The voxels of a scalar volume node as a (z, y, x) array (a copy, the node's type)."""
    image = volume_node.GetImageData()
    if image is None:
        raise InputError(f"volume {volume_node.GetName()!r} has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume {volume_node.GetName()!r} has {image.GetNumberOfScalarComponents()} components, "
                         "a CT or dose needs one")
    return _array_from_image(image)


def _has_transform(node) -> bool:
    return node is not None and node.GetParentTransformNode() is not None


# ----------------------------------------------------------------------------- segments


def _reference_image(volume_node) -> Any:
    """An empty vtkOrientedImageData with the voxel geometry (extent, IJK-to-RAS) of ``volume_node``."""
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volume_node.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    reference.SetImageToWorldMatrix(matrix)
    return reference


def segment_names(segmentation_node) -> list[str]:
    """Names of the segments in ``segmentation_node``, in its order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def segment_colors(segmentation_node) -> dict[str, tuple[float, float, float]]:
    """Segment name → its RGB colour in [0, 1] (empty without a segmentation)."""
    if segmentation_node is None:
        return {}
    segmentation = segmentation_node.GetSegmentation()
    return {(s := segmentation.GetNthSegment(i)).GetName(): tuple(s.GetColor())
            for i in range(segmentation.GetNumberOfSegments())}


def segment_masks(segmentation_node, volume_node, names: Sequence[str] | None = None,
                  warnings: list[str] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks (z, y, x) on ``volume_node``'s voxels of the segments called ``names`` (default: all).

    Each segment's binary labelmap (converted from its source representation where needed, with
    the segmentation's parent transform applied) is resampled onto the volume's geometry by
    nearest neighbour; its voxels are those holding the segment's label value (segments may share
    one labelmap layer). Segments that cannot be converted are left out with a warning.
    """
    warnings = warnings if warnings is not None else []
    segmentation = segmentation_node.GetSegmentation()
    reference = _reference_image(volume_node)
    nx, ny, nz = volume_node.GetImageData().GetDimensions()
    wanted = set(names) if names is not None else None
    masks: dict[str, np.ndarray] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        name = segment.GetName()
        if wanted is not None and name not in wanted:
            continue
        labelmap = slicer.vtkOrientedImageData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
                segmentation_node, segment_id, labelmap):
            warnings.append(f"segment {name!r} could not be converted to a binary labelmap: left out")
            continue
        extent = labelmap.GetExtent()
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            masks[name] = np.zeros((nz, ny, nx), dtype=bool)
            continue
        resampled = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, resampled):
            warnings.append(f"segment {name!r} could not be resampled onto the CT: left out")
            continue
        values = _array_from_image(resampled)
        if values.shape != (nz, ny, nx):
            warnings.append(f"segment {name!r} resampled to {values.shape}, not the CT's {(nz, ny, nx)}: left out")
            continue
        masks[name] = values == segment.GetLabelValue()
    return masks


# ----------------------------------------------------------------------------- scene → Case


def case_from_scene(
    volume_node,
    segmentation_node,
    plan_node=None,
    roles: Mapping[str, RoleChoice] | None = None,
    prescription: float | Sequence[float] | None = None,
    fractions: int | None = None,
    reference_dose_node=None,
    case_id: str | None = None,
    dicom_database=None,
    aliases: AliasTable | None = None,
) -> Case:
    """The :class:`Case` of a CT volume node, its segmentation and (optional) RT plan and dose.

    Args:
        volume_node: the CT (vtkMRMLScalarVolumeNode, HU); its voxels become the case grid.
        segmentation_node: structures (vtkMRMLSegmentationNode); masks are exported onto the CT.
        plan_node: a SlicerRT vtkMRMLRTPlanNode (beams, see :mod:`.plan_adapter`), or None.
        roles: segment name → :class:`dosediffusion.roles.RoleChoice` (the roles table, or the batch
            script's ``--role``); segments not named here get the role of ``aliases`` (default: the
            shipped alias table), as every reader does (:func:`dosediffusion.roles.assign_roles`).
            Every segment is in the case: ``ignore`` and unknown names as ``other``, which the model
            does not use.
        prescription: prescribed dose level(s) in Gy (total); None: the plan's, else the PTV doses.
        fractions: number of fractions; None: the plan's.
        reference_dose_node: the plan's own dose (Gy), resampled onto the CT grid; or None.
        case_id: label of the case (default: the CT node's name).
        dicom_database: Slicer's ``ctkDICOMDatabase`` to find the RTPLAN file and identifiers
            (default: ``slicer.dicomDatabase`` when the application has one).
    """
    from .plan_adapter import dicom_meta, read_plan

    warnings: list[str] = []
    grid = grid_from_volume_node(volume_node)
    if _has_transform(volume_node) or _has_transform(reference_dose_node):
        warnings.append("a parent transform of the CT or dose volume is ignored: harden it to include it")
    ct = array_from_volume_node(volume_node).astype(np.float32)

    names = segment_names(segmentation_node)
    levels = ([float(prescription)] if isinstance(prescription, (int, float)) else
              [float(v) for v in prescription or ()])
    plan_reading = read_plan(plan_node, dicom_database) if plan_node is not None else None
    if plan_reading is not None:
        warnings += plan_reading.warnings + prescription_override_warnings(levels, fractions, plan_reading.prescription)
        if not levels:
            levels = list(plan_reading.prescription.levels_gy)
        if fractions is None:
            fractions = plan_reading.prescription.fractions
    masks = segment_masks(segmentation_node, volume_node, names, warnings)
    structures = {name: Structure(name, masks[name]) for name in names if name in masks}
    warnings += [f"segment {name!r} is empty on the CT grid" for name, s in structures.items() if not s.mask.any()]
    warnings += assign_roles(structures, levels, aliases, roles)

    dose = None
    if reference_dose_node is not None:
        dose_grid = grid_from_volume_node(reference_dose_node)
        dose = resample(array_from_volume_node(reference_dose_node).astype(np.float32), dose_grid, grid)
        dose = np.clip(dose, 0.0, None).astype(np.float32)
    meta = dicom_meta(volume_node, plan_node, dicom_database)
    return Case(
        case_id=case_id or volume_node.GetName() or "case",
        grid=grid,
        ct=ct,
        structures=structures,
        beams=list(plan_reading.beams) if plan_reading is not None else [],
        prescription=case_prescription(Prescription(levels, fractions), structures),
        dose=dose,
        meta=meta,
        warnings=warnings,
    )


def prescription_override_warnings(levels: Sequence[float], fractions: int | None, plan: Prescription) -> list[str]:
    """A warning for each of ``levels`` (Gy) and ``fractions`` that was given and is not the plan's
    (the given values are used; an empty ``levels`` or None ``fractions`` takes the plan's)."""
    warnings = []
    if levels and plan.levels_gy and sorted(levels, reverse=True) != plan.levels_gy:
        warnings.append(f"the prescription given ({_gy(levels)}) is not the plan's ({_gy(plan.levels_gy)}): "
                        f"{_gy(levels)} is used; set it to automatic (0) to use the plan's")
    if fractions is not None and plan.fractions is not None and int(fractions) != int(plan.fractions):
        warnings.append(f"the {fractions} fractions given are not the plan's {plan.fractions}: {fractions} are used")
    return warnings


def _gy(levels: Sequence[float]) -> str:
    return "/".join(f"{v:g}" for v in sorted(levels, reverse=True)) + " Gy"


@dataclass
class SceneInputs:
    """The nodes a prediction starts from, as found in a scene (None where there is none)."""

    ct: Any = None
    segmentation: Any = None
    plan: Any = None
    reference_dose: Any = None


def _first_node(scene, class_name: str, keep=lambda node: True) -> Any:
    nodes = (scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name)))
    return next((node for node in nodes if keep(node)), None)


def is_exported_prediction(volume_node, dicom_database=None) -> bool:
    """True for a dose this module exported, loaded back from DICOM: its series description (from the
    DICOM database through the node's instance UIDs, else in the node's name, which SlicerRT takes
    from it) is :data:`EXPORTED_PREDICTION_DESCRIPTION`."""
    if EXPORTED_PREDICTION_DESCRIPTION.lower() in (volume_node.GetName() or "").lower():
        return True
    scene = volume_node.GetScene()
    sh = _subject_hierarchy(scene) if scene is not None and dicom_database is not None else None
    item = sh.GetItemByDataNode(volume_node) if sh is not None else 0
    if not item:
        return False
    uids = (sh.GetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMInstanceUIDName()) or "").split()
    return bool(uids) and str(dicom_database.instanceValue(uids[0], SERIES_DESCRIPTION_TAG)).strip() == \
        EXPORTED_PREDICTION_DESCRIPTION


def find_scene_inputs(scene, dicom_database=None) -> SceneInputs:
    """The first CT-like volume (a scalar volume that is neither an RT dose, nor a label map, nor one of
    this module's predictions), the first segmentation, the first SlicerRT plan and the first RT dose
    that is not a prediction, in the scene or exported by this module and loaded back
    (:func:`is_exported_prediction`; ``dicom_database``: Slicer's, to read the series description):
    the reference. What a freshly loaded DICOM RT patient gives."""

    def volume(dose: bool):
        def keep(v) -> bool:
            is_dose = bool(v.GetAttribute(DOSE_VOLUME_ATTRIBUTE))
            if v.IsA("vtkMRMLLabelMapVolumeNode") or v.GetAttribute(PREDICTION_ATTRIBUTE) or is_dose != dose:
                return False
            return not (dose and is_exported_prediction(v, dicom_database))

        return _first_node(scene, "vtkMRMLScalarVolumeNode", keep)

    return SceneInputs(ct=volume(dose=False), segmentation=_first_node(scene, "vtkMRMLSegmentationNode"),
                       plan=_first_node(scene, "vtkMRMLRTPlanNode"), reference_dose=volume(dose=True))


# ----------------------------------------------------------------------------- Case → scene


def _subject_hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def _dose_color_table(scene):
    """SlicerRT's default dose colour table (made by its Isodose logic), else a built-in rainbow, else None."""
    node = scene.GetFirstNodeByName(DOSE_COLOR_TABLE_NAME)
    if node is None and hasattr(slicer, "vtkSlicerIsodoseModuleLogic"):
        node = slicer.vtkSlicerIsodoseModuleLogic.CreateDefaultDoseColorTable(scene)
    if node is None:
        node = scene.GetNodeByID("vtkMRMLColorTableNodeRainbow")
    return node


def study_item_for_dose(scene, reference_volume_node=None, name: str = "DoseDiffusion") -> int:
    """The subject-hierarchy study item a dose belongs in: the reference volume's study, else a new
    patient/study pair named ``name``, marked :data:`PREDICTION_ATTRIBUTE` so that it is removed with
    the last prediction in it (:func:`remove_prediction_nodes`). Returns 0 when the scene has no
    subject hierarchy."""
    sh = _subject_hierarchy(scene)
    if sh is None:
        return 0
    level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    if reference_volume_node is not None:
        item = sh.GetItemByDataNode(reference_volume_node)
        if item:
            study = sh.GetItemAncestorAtLevel(item, level)
            if study:
                return study
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), name)
    study = sh.CreateStudyItem(patient, name)
    for item in (patient, study):
        sh.SetItemAttribute(item, PREDICTION_ATTRIBUTE, "1")
    return study


def mark_prediction_sources(node, ct_node=None, plan_node=None) -> None:
    """Reference from ``node`` (a node of a prediction) to the CT and plan it was predicted from
    (:data:`SOURCE_CT_ROLE`, :data:`SOURCE_PLAN_ROLE`; a plan that is not an MRML node is not referenced)."""
    node.SetNodeReferenceID(SOURCE_CT_ROLE, ct_node.GetID() if ct_node is not None else None)
    plan_id = plan_node.GetID() if plan_node is not None and hasattr(plan_node, "GetID") else None
    node.SetNodeReferenceID(SOURCE_PLAN_ROLE, plan_id)


def prediction_sources(node) -> tuple[Any, Any]:
    """The (CT, plan) nodes a prediction's ``node`` was predicted from (None where not referenced)."""
    return node.GetNodeReference(SOURCE_CT_ROLE), node.GetNodeReference(SOURCE_PLAN_ROLE)


def remove_prediction_nodes(scene, source_ct_node=None) -> int:
    """Remove the nodes this module made for the prediction of ``source_ct_node`` (marked
    :data:`PREDICTION_ATTRIBUTE` and referencing that CT, :func:`mark_prediction_sources`; with None,
    those referencing no CT): dose and uncertainty volumes with their display nodes, DVH tables, chart
    and series, scorecard table, then the subject-hierarchy studies this module made that are left
    empty. Other patients' predictions, the CT, the structures and the reference dose stay. Returns
    how many nodes were removed."""
    marked = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    marked = [node for node in marked if node is not None and node.GetAttribute(PREDICTION_ATTRIBUTE) == "1"
              and node.GetNodeReference(SOURCE_CT_ROLE) is source_ct_node]
    sh = _subject_hierarchy(scene)
    for node in marked:
        for i in reversed(range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0)):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                scene.RemoveNode(display)
        item = sh.GetItemByDataNode(node) if sh is not None else 0
        if item:  # its item first: without Slicer's subject hierarchy logic an item outlives its node
            sh.RemoveItem(item, False, False)
        scene.RemoveNode(node)
    _remove_empty_prediction_items(scene)
    return len(marked)


def _remove_empty_prediction_items(scene) -> None:
    """Remove the studies, then the patients, that :func:`study_item_for_dose` made and that hold nothing now."""
    sh = _subject_hierarchy(scene)
    if sh is None:
        return
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    for level in (constants.GetDICOMLevelStudy(), constants.GetDICOMLevelPatient()):
        items = vtk.vtkIdList()
        sh.GetItemChildren(sh.GetSceneItemID(), items, True)
        for item in [items.GetId(i) for i in range(items.GetNumberOfIds())]:
            if (sh.GetItemLevel(item) == level and sh.GetItemAttribute(item, PREDICTION_ATTRIBUTE) == "1"
                    and sh.GetNumberOfItemChildren(item) == 0):
                sh.RemoveItem(item)


def _add_volume_node(scene, array: np.ndarray, grid: Grid, name: str, attributes: Mapping[str, str]):
    """A new vtkMRMLScalarVolumeNode named ``name`` holding ``array`` ((z, y, x) float32 on ``grid``), given
    ``attributes`` before it enters the scene (subject hierarchy picks the item's owner plugin when the
    node is added: SlicerRT's RT dose plugin for a dose volume, as its own RTDOSE import does)."""
    values = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if values.shape != grid.shape:
        raise GeometryError(f"volume {name!r} has shape {values.shape}, its grid {grid.shape}")
    node = scene.CreateNodeByClass("vtkMRMLScalarVolumeNode")
    node.SetName(name)  # a re-run removes the previous prediction first (remove_prediction_nodes): same names
    for key, value in attributes.items():
        node.SetAttribute(key, value)
    scene.AddNode(node)
    node.UnRegister(None)  # the scene holds it now
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size_xyz)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = values.ravel()
    node.SetAndObserveImageData(image)
    set_volume_geometry(node, grid)
    return node


def _place_in_study(scene, node, reference_volume_node=None) -> int:
    """Put ``node`` in :func:`study_item_for_dose`'s study; returns the study item (0 without a subject hierarchy)."""
    sh = _subject_hierarchy(scene)
    if sh is None:
        return 0
    study = study_item_for_dose(scene, reference_volume_node)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(sh.GetSceneItemID(), node)
    sh.SetItemParent(item, study)
    return study


def _display(scene, node, color, top: float, upper: float) -> None:
    """A display node for ``node``: colour node ``color`` (None: the default), window 0 … ``top``,
    voxels under 0.5 % of ``top`` or above ``upper`` hidden."""
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    if color is not None:
        display.SetAndObserveColorNodeID(color.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.AutoThresholdOff()
    display.SetLowerThreshold(0.005 * top)
    display.SetUpperThreshold(upper)
    display.SetApplyThreshold(1)
    node.SetAndObserveDisplayNodeID(display.GetID())


def add_dose_to_scene(scene, dose_gy: np.ndarray, grid: Grid, name: str = "Predicted dose",
                      reference_volume_node=None, prescription_gy: float | None = None):
    """Add ``dose_gy`` ((z, y, x) on ``grid``, Gy) as an RT dose volume; returns the vtkMRMLScalarVolumeNode.

    The node is marked the way SlicerRT marks loaded RTDOSE (``DicomRtImport.DoseVolume`` = 1), put in
    the reference volume's subject-hierarchy study (a new one when it has none) whose
    ``DicomRtImport.DoseUnitName``/``DoseUnitValue`` are set to ``GY``/``1.0`` unless already set,
    and displayed with SlicerRT's ``Dose_ColorTable`` (window 0 … max(prescription, max dose),
    voxels under 0.5 % of that range hidden).
    """
    node = _add_volume_node(scene, dose_gy, grid, name, {DOSE_VOLUME_ATTRIBUTE: "1", PREDICTION_ATTRIBUTE: "1"})
    study = _place_in_study(scene, node, reference_volume_node)
    if study:
        sh = _subject_hierarchy(scene)
        if not sh.GetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE):
            sh.SetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE, "GY")
        if not sh.GetItemAttribute(study, DOSE_UNIT_VALUE_ATTRIBUTE):
            sh.SetItemAttribute(study, DOSE_UNIT_VALUE_ATTRIBUTE, "1.0")
    dose_max = float(np.max(dose_gy)) if np.size(dose_gy) else 0.0
    top = max(dose_max, float(prescription_gy or 0.0), 1e-3)
    _display(scene, node, _dose_color_table(scene), top, max(top * 10.0, dose_max + 1.0))
    return node


def add_uncertainty_to_scene(scene, std_gy: np.ndarray, grid: Grid, name: str = "Predicted dose uncertainty (Gy)",
                             reference_volume_node=None):
    """Add the per-voxel uncertainty ``std_gy`` ((z, y, x) on ``grid``: the standard deviation over the
    candidates, Gy) as a plain scalar volume (not an RT dose), marked as this module's prediction (a
    re-run replaces it), in the study of ``reference_volume_node`` (pass the predicted dose's node to
    keep the two together), displayed with the ``PET-Heat`` colour node when the scene has it (window
    0 … its maximum, voxels under 0.5 % of that hidden). Returns the node."""
    node = _add_volume_node(scene, std_gy, grid, name, {PREDICTION_ATTRIBUTE: "1"})
    _place_in_study(scene, node, reference_volume_node)
    std_max = float(np.max(std_gy)) if np.size(std_gy) else 0.0
    top = max(std_max, 1e-3)
    _display(scene, node, scene.GetNodeByID(UNCERTAINTY_COLOR_NODE_ID), top, top + 1.0)
    return node


def _prediction_node(scene, class_name: str, name: str):
    """A new node of this module's prediction, named exactly ``name`` and marked :data:`PREDICTION_ATTRIBUTE`."""
    node = scene.AddNewNodeByClass(class_name)
    node.SetName(name)
    node.SetAttribute(PREDICTION_ATTRIBUTE, "1")
    return node


def _column(table, name: str, values: Sequence, kind: str = "double"):
    array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
    array.SetName(name)
    for value in values:
        if kind == "double":
            array.InsertNextValue(float("nan") if value is None else float(value))
        else:
            array.InsertNextValue("" if value is None else str(value))
    table.AddColumn(array)
    return array


Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]


def dvh_columns(curves_pred: Curves, curves_ref: Curves | None = None,
                step_gy: float = 0.1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A common dose axis (Gy, ``step_gy`` steps from 0 past the highest dose) and, per curve
    ``"<structure> (predicted)"``/``"<structure> (reference)"``, the cumulative volume (%) on it."""
    curves = {f"{n} (predicted)": c for n, c in curves_pred.items()}
    curves.update({f"{n} (reference)": c for n, c in (curves_ref or {}).items()})
    top = max((float(dose[-1]) for dose, _ in curves.values() if len(dose)), default=0.0)
    axis = np.arange(0.0, top + 2 * step_gy, step_gy)
    return axis, {label: np.interp(axis, dose, volume, right=0.0) for label, (dose, volume) in curves.items()}


def add_dvh_chart(scene, curves_pred: Curves, curves_ref: Curves | None = None,
                  name: str = "DoseDiffusion DVH", colors: Mapping[str, Sequence[float]] | None = None):
    """A DVH plot chart: one vtkMRMLTableNode (``Dose (Gy)`` + one volume-% column per curve) and a
    vtkMRMLPlotSeriesNode per structure and source, predicted solid, reference dashed.

    ``curves_pred``/``curves_ref``: structure name → (dose in Gy, cumulative volume in %), as a
    prediction folder's DVH table holds them (``read_prediction(...).dvhs``); ``colors``: structure
    name → RGB in [0, 1] (e.g. the segment colours). Returns the chart node.
    """
    axis, columns = dvh_columns(curves_pred, curves_ref)
    table_node = _prediction_node(scene, "vtkMRMLTableNode", f"{name} table")
    table = table_node.GetTable()
    _column(table, "Dose (Gy)", axis)
    for label, values in columns.items():
        _column(table, label, values)
    table.SetNumberOfRows(len(axis))
    table_node.Modified()

    chart = _prediction_node(scene, "vtkMRMLPlotChartNode", name)
    chart.SetTitle("Dose-volume histograms")
    chart.SetXAxisTitle("Dose (Gy)")
    chart.SetYAxisTitle("Volume (%)")
    palette = _palette(sorted(set(curves_pred) | set(curves_ref or {})))
    palette.update({k: tuple(v) for k, v in (colors or {}).items()})
    for label in columns:
        structure, source = label.rsplit(" (", 1)
        series = _prediction_node(scene, "vtkMRMLPlotSeriesNode", label)
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("Dose (Gy)")
        series.SetYColumnName(label)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid if source.startswith("predicted")
                            else slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
        series.SetColor(*palette.get(structure, (0.2, 0.2, 0.2)))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def _palette(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Distinct colours (golden-angle hues) for ``names``."""
    import colorsys

    return {n: colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.85) for i, n in enumerate(names)}


SCORECARD_COLUMNS = ("Structure", "Metric", "Unit", "Predicted", "Predicted score", "Reference", "Reference score",
                     "Max score", "Predicted verdict", "Hard limit")


def scorecard_rows(report, reference_report=None) -> list[dict[str, Any]]:
    """Rows of the scorecard table: one per entry, then ``Total``; values None where not evaluable."""
    reference = list(reference_report.entries) if reference_report is not None else [None] * len(report.entries)
    rows = []
    for entry, ref in zip(report.entries, reference, strict=True):
        rows.append({"Structure": entry.structure, "Metric": entry.measured, "Unit": entry.unit,
                     "Predicted": entry.value, "Predicted score": entry.score,
                     "Reference": ref.value if ref else None, "Reference score": ref.score if ref else None,
                     "Max score": entry.max_score,
                     "Predicted verdict": entry.verdict,
                     "Hard limit": "yes" if entry.hard else ""})
    rows.append({"Structure": "Total", "Metric": report.template, "Unit": "points", "Predicted": report.total,
                 "Predicted score": report.total,
                 "Reference": reference_report.total if reference_report is not None else None,
                 "Reference score": reference_report.total if reference_report is not None else None,
                 "Max score": report.max_total, "Predicted verdict": "", "Hard limit": ""})
    return rows


def add_scorecard_table(scene, report, reference_report=None, name: str = "DoseDiffusion scorecard"):
    """A vtkMRMLTableNode of a :class:`~dosediffusion.metrics.scorecard.ScoreReport` (predicted) beside
    the reference dose's (same template) when given: columns :data:`SCORECARD_COLUMNS`, one row per
    entry and a last ``Total`` row. Doses in Gy or %Rx, volumes in % or cc as the entry's unit says."""
    rows = scorecard_rows(report, reference_report)
    node = _prediction_node(scene, "vtkMRMLTableNode", name)
    table = node.GetTable()
    text = {"Structure", "Metric", "Unit", "Predicted verdict", "Hard limit"}
    for column in SCORECARD_COLUMNS:
        _column(table, column, [row[column] for row in rows], "string" if column in text else "double")
    table.SetNumberOfRows(len(rows))
    node.Modified()
    return node


def table_rows(table_node) -> list[dict[str, Any]]:
    """The rows of a table node as dicts (numbers as float, NaN → None); for tests and export."""
    table = table_node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            value = column.GetValue(r)
            if isinstance(value, float) and math.isnan(value):
                value = None
            row[column.GetName()] = value
        rows.append(row)
    return rows
