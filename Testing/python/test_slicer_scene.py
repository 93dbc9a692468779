"""The Slicer module's scene logic on a real MRML scene (the ``slicer-core`` wheel): scene → Case,
prediction → RT dose volume with the right geometry, DVH chart, scorecard table, the SlicerRT plan
adapter (fake plan objects with SlicerRT's method names) and its RTPLAN-file fallback, and the
Logic's background process (``DoseDiffusionLib.process``): its command line, progress lines, the case
it gives the child, failure and cancel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from case_builders import box_case
from model_builders import tiny_pipeline
from phantoms import make_phantom_case

slicer = pytest.importorskip("slicer")
pytestmark = pytest.mark.peers  # a helper environment: see pyproject's markers
import vtk  # noqa: E402  (after the wheel, which provides it)

MODULE_DIR = Path(__file__).resolve().parents[2] / "DoseDiffusion"
sys.path.insert(0, str(MODULE_DIR))

from DoseDiffusionLib import dependencies, plan_adapter, process, scene  # noqa: E402

from dosediffusion.case import Beam, Case  # noqa: E402
from dosediffusion.io.dicom_rtplan import read_rtplan  # noqa: E402
from dosediffusion.metrics.dose_metrics import case_dvhs  # noqa: E402
from dosediffusion.metrics.scorecard import load_template, score_case  # noqa: E402
from dosediffusion.roles import RoleChoice  # noqa: E402

_factory = slicer.vtkSegmentationConverterFactory.GetInstance()
for _rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
              slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
    _factory.RegisterConverterRule(_rule())


# ----------------------------------------------------------------------------- helpers


def volume_node_for(mrml, array: np.ndarray, grid, name: str = "CT"):
    """A scalar volume node holding ``array`` on ``grid`` (built with VTK, not with scene.py)."""
    node = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size_xyz)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    node.SetAndObserveImageData(image)
    slicer.util.updateVolumeFromArray(node, np.asarray(array, dtype=np.float32))
    ras = np.diag([-1.0, -1.0, 1.0])
    direction = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            direction.SetElement(r, c, (ras @ grid.matrix)[r, c])
    node.SetIJKToRASDirectionMatrix(direction)
    node.SetSpacing(*grid.spacing)
    node.SetOrigin(*(ras @ np.asarray(grid.origin)))
    return node


def oriented_mask(mask: np.ndarray, volume_node, crop: bool = True):
    """A vtkOrientedImageData of ``mask`` in the volume's geometry, cropped to its bounding box
    (as Slicer stores segments: an extent that does not start at 0)."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    if crop and mask.any():
        z, y, x = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        lo, hi = (x[0], y[0], z[0]), (x[-1], y[-1], z[-1])
    else:
        lo, hi = (0, 0, 0), tuple(s - 1 for s in mask.shape[::-1])
    image.SetExtent(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    part = mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1].astype(np.uint8)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(part.ravel()))
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def scene_from_case(case: Case):
    """A scene with the case's CT and its structures as segments (binary labelmaps)."""
    mrml = slicer.vtkMRMLScene()
    ct = volume_node_for(mrml, case.ct, case.grid, "CT")
    segmentation = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "Structures")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    for name, structure in case.structures.items():
        segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name)
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_mask(structure.mask, ct), segmentation, segment_id)
    return mrml, ct, segmentation


def sh_item(sh, node) -> int:
    """The node's subject-hierarchy item (the wheel has no plugin that makes one when a node is added)."""
    return sh.GetItemByDataNode(node) or sh.CreateItem(sh.GetSceneItemID(), node)


def value_at_ras(volume_node, ras) -> float:
    """The voxel value nearest to a RAS point, through the node's own RAS-to-IJK matrix."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(matrix)
    ijk = matrix.MultiplyPoint((*ras, 1.0))[:3]
    i, j, k = (int(round(v)) for v in ijk)
    return float(slicer.util.arrayFromVolume(volume_node)[k, j, i])


@pytest.fixture(scope="module")
def phantom():
    case, expected = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    return case, expected


@pytest.fixture(scope="module")
def predicted(phantom):
    case, _ = phantom
    mrml, ct, segmentation = scene_from_case(case)
    dose_node = volume_node_for(mrml, case.dose, case.grid, "RTDOSE")
    scene_case = scene.case_from_scene(ct, segmentation, prescription=60.0, fractions=30, reference_dose_node=dose_node)
    prediction = tiny_pipeline(seed=3)(scene_case, steps=2, device="cpu")
    return mrml, ct, segmentation, scene_case, prediction


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("position", ["HFS", "HFP", "FFS"])
def test_grid_round_trip_and_ras_lps(position):
    case, _ = make_phantom_case(spacing=(5.0, 4.0, 6.0), position=position, size_mm=(100.0, 80.0, 60.0))
    mrml = slicer.vtkMRMLScene()
    node = volume_node_for(mrml, case.ct, case.grid)
    grid = scene.grid_from_volume_node(node)
    assert grid.same_as(case.grid)
    # the IJK-to-RAS matrix that scene.py builds is the node's
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    expected = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(scene.ijk_to_ras_from_grid(case.grid), expected)
    # a voxel (k, j, i) at LPS point p is at RAS (-px, -py, pz)
    index = np.array([2, 3, 4])
    lps = case.grid.index_to_physical(index)
    ras = (-lps[0], -lps[1], lps[2])
    ijk = np.array(matrix.MultiplyPoint((*ras, 1.0))[:3])
    inverse = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(inverse)
    assert np.allclose(inverse.MultiplyPoint((*ras, 1.0))[:3], index[::-1], atol=1e-6)
    assert np.allclose(scene.lps_from_ras(ras), lps) and ijk.shape == (3,)


def test_grid_of_a_volume_whose_extent_does_not_start_at_zero():
    case = box_case()
    mrml = slicer.vtkMRMLScene()
    node = volume_node_for(mrml, case.ct, case.grid)
    image = node.GetImageData()
    image.SetExtent(2, 2 + case.grid.shape[2] - 1, 0, case.grid.shape[1] - 1, 1, case.grid.shape[0])
    grid = scene.grid_from_volume_node(node)
    shifted = case.grid.index_to_physical(np.array([1.0, 0.0, 2.0]))
    assert np.allclose(grid.origin, shifted) and grid.shape == case.grid.shape


# ----------------------------------------------------------------------------- scene → Case


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_case_from_scene_masks_roles_and_ct(position):
    case, expected = make_phantom_case(spacing=(5.0, 5.0, 5.0), position=position)
    mrml, ct, segmentation = scene_from_case(case)
    built = scene.case_from_scene(ct, segmentation, prescription=60.0, fractions=30)
    assert built.grid.same_as(case.grid)
    assert np.array_equal(built.ct, case.ct)
    assert set(built.structures) == set(case.structures)
    for name, structure in case.structures.items():
        assert np.array_equal(built.structures[name].mask, structure.mask), name
        assert built.structures[name].volume_cc(built.grid) == pytest.approx(structure.volume_cc(case.grid))
    # known volumes: voxel counts of the analytic solids within a voxel layer
    assert built.structures["BODY"].volume_cc(built.grid) == pytest.approx(expected.analytic_cc["BODY"], rel=0.08)
    roles = {n: s.role for n, s in built.structures.items()}
    assert roles == {"PTV_60": "ptv", "SpinalCord": "oar", "Esophagus": "oar", "BODY": "body"}
    assert built.structures["PTV_60"].prescription_gy == 60.0
    assert built.prescription.levels_gy == [60.0] and built.prescription.fractions == 30
    assert built.dose is None and built.beams == []


def test_case_from_scene_user_roles_ignore_and_resampled_dose(phantom):
    case, _ = phantom
    mrml, ct, segmentation = scene_from_case(case)
    # the reference dose on a coarser, shifted grid is resampled onto the CT
    from dosediffusion.geometry import Grid, resample

    coarse = Grid((12, 16, 20), (10.0, 10.0, 10.0), tuple(np.asarray(case.grid.origin) + 2.5))
    dose_node = volume_node_for(mrml, resample(case.dose, case.grid, coarse), coarse, "dose")
    roles = {"PTV_60": RoleChoice("ptv", 66.0), "BODY": RoleChoice("body"), "Esophagus": RoleChoice("ignore"),
             "SpinalCord": RoleChoice("oar")}
    built = scene.case_from_scene(ct, segmentation, roles=roles, reference_dose_node=dose_node)
    assert built.structures["Esophagus"].role == "other"  # ignored by the model, never dropped
    assert built.structures["PTV_60"].prescription_gy == 66.0 and built.prescription.levels_gy == [66.0]
    assert built.dose.shape == case.grid.shape
    expected = resample(resample(case.dose, case.grid, coarse), coarse, case.grid)
    assert np.allclose(built.dose, np.clip(expected, 0, None), atol=1e-3)


def test_roles_table_and_role_flags_give_the_same_case(phantom, phantom_dicom, tmp_path):
    """The Slicer roles table and ``--role`` on a command line go through one rule: the same roles,
    prescriptions and canonical names for the same structure names."""
    import shutil

    import pydicom

    from dosediffusion.io.load import load_case
    from dosediffusion.roles import parse_roles

    rename = {"PTV_60": "OuterTarget", "SpinalCord": "Core"}
    case, _ = phantom
    renamed = Case(**{**case.__dict__, "structures": {rename.get(n, n): type(s)(rename.get(n, n), s.mask)
                                                      for n, s in case.structures.items()}})
    mrml, ct, segmentation = scene_from_case(renamed)
    flags = parse_roles(["OuterTarget=ptv:60", "Core=oar", "Esophagus=ignore"])
    from_scene = scene.case_from_scene(ct, segmentation, roles=flags)
    folder = tmp_path / "dicom"
    shutil.copytree(phantom_dicom[0], folder)
    ds = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    for roi in ds.StructureSetROISequence:
        roi.ROIName = rename.get(roi.ROIName, roi.ROIName)
    ds.save_as(folder / "RTSTRUCT.dcm")
    from_files = load_case(folder, roles=flags)

    def roles(c):
        return {n: (s.role, s.prescription_gy, s.canonical) for n, s in c.structures.items()}

    assert roles(from_scene) == roles(from_files)
    assert roles(from_scene)["OuterTarget"] == ("ptv", 60.0, None) and roles(from_scene)["Esophagus"][0] == "other"
    assert from_scene.prescription.levels_gy == from_files.prescription.levels_gy == [60.0]


def test_shared_labelmap_segments_are_separated():
    """Two segments in one labelmap layer (label values 1 and 2) give two separate masks."""
    case = box_case()
    mrml = slicer.vtkMRMLScene()
    ct = volume_node_for(mrml, case.ct, case.grid)
    segmentation = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    a = segmentation.GetSegmentation().AddEmptySegment("PTV70", "PTV70")
    b = segmentation.GetSegmentation().AddEmptySegment("BODY", "BODY")
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_mask(case.structures["BODY"].mask, ct), segmentation, b)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_mask(case.structures["PTV70"].mask, ct), segmentation, a)
    masks = scene.segment_masks(segmentation, ct)
    assert np.array_equal(masks["PTV70"], case.structures["PTV70"].mask)
    # the body segment keeps its own voxels; where the PTV overwrote it in a shared layer it may
    # differ, but never does it include a voxel outside the body
    assert not (masks["BODY"] & ~case.structures["BODY"].mask).any()


# ----------------------------------------------------------------------------- prediction → scene


def test_predicted_dose_node_geometry_values_and_rt_attributes(predicted):
    mrml, ct, _, scene_case, prediction = predicted
    node = scene.add_dose_to_scene(mrml, prediction.dose_gy, scene_case.grid, "Predicted dose", ct, 60.0)
    assert node.IsA("vtkMRMLScalarVolumeNode")
    ct_matrix, dose_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(ct_matrix)
    node.GetIJKToRASMatrix(dose_matrix)
    assert all(abs(ct_matrix.GetElement(r, c) - dose_matrix.GetElement(r, c)) < 1e-6 for r in range(4) for c in range(4))
    assert np.allclose(slicer.util.arrayFromVolume(node), prediction.dose_gy)
    # the voxel at a known RAS point holds the predicted value there
    index = np.unravel_index(int(np.argmax(prediction.dose_gy)), scene_case.grid.shape)
    lps = scene_case.grid.index_to_physical(np.array(index, dtype=float))
    assert value_at_ras(node, (-lps[0], -lps[1], lps[2])) == pytest.approx(float(prediction.dose_gy.max()))
    assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    study = sh.GetItemParent(sh.GetItemByDataNode(node))
    assert sh.GetItemLevel(study) == "Study"
    assert sh.GetItemAttribute(study, "DicomRtImport.DoseUnitName") == "GY"
    assert sh.GetItemAttribute(study, "DicomRtImport.DoseUnitValue") == "1.0"
    display = node.GetDisplayNode()
    assert display is not None and display.GetApplyThreshold() == 1
    assert display.GetWindowLevelMax() == pytest.approx(max(60.0, float(prediction.dose_gy.max())))


def test_dose_volume_is_marked_before_it_enters_the_scene():
    """Subject hierarchy picks a node's owner plugin when the node is added; SlicerRT's RT dose plugin
    claims it only if the dose attribute is already there."""
    case = box_case()
    mrml = slicer.vtkMRMLScene()
    seen = []
    mrml.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent,
                     lambda caller, event: seen.append([n.GetAttribute("DicomRtImport.DoseVolume")
                                                        for n in _volumes(caller)]))
    node = scene.add_dose_to_scene(mrml, case.dose, case.grid, "dose")
    assert seen and seen[0] == ["1"]  # the first node added is the dose, already marked
    assert node.GetReferenceCount() < 5  # held by the scene, not leaked


def _volumes(mrml):
    return [mrml.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(mrml.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def test_scene_inputs_skip_label_maps_doses_and_predictions():
    case = box_case()
    mrml = slicer.vtkMRMLScene()
    assert scene.find_scene_inputs(mrml) == scene.SceneInputs()
    mrml.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    scene.add_dose_to_scene(mrml, case.dose, case.grid, "an earlier prediction")
    reference = volume_node_for(mrml, case.dose, case.grid, "RTDOSE")
    reference.SetAttribute("DicomRtImport.DoseVolume", "1")
    ct = volume_node_for(mrml, case.ct, case.grid, "CT")
    segmentation = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", "RTSTRUCT")
    found = scene.find_scene_inputs(mrml)
    assert (found.ct, found.segmentation, found.reference_dose, found.plan) == (ct, segmentation, reference, None)


def test_dose_node_on_a_rotated_grid_matches_ras_points():
    """A non-identity direction (FFS: x and z flipped) and a dose known at every point."""
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0), position="FFS")
    mrml = slicer.vtkMRMLScene()
    ct = volume_node_for(mrml, case.ct, case.grid)
    node = scene.add_dose_to_scene(mrml, case.dose, case.grid, "dose", ct)
    # phantom dose = max(x_LPS + 60, 0) Gy inside the body; voxel centres lie at ±2.5 mm + k·5 mm:
    # RAS (-22.5, -2.5, 2.5) is LPS (22.5, 2.5, 2.5) → 82.5 Gy, RAS (17.5, 2.5, -2.5) is LPS x = -17.5 → 42.5 Gy
    assert value_at_ras(node, (-22.5, -2.5, 2.5)) == pytest.approx(82.5, abs=1e-3)
    assert value_at_ras(node, (17.5, 2.5, -2.5)) == pytest.approx(42.5, abs=1e-3)
    assert scene.grid_from_volume_node(node).same_as(case.grid)


def test_dose_reuses_the_ct_study_and_keeps_its_units():
    case = box_case()
    mrml = slicer.vtkMRMLScene()
    ct = volume_node_for(mrml, case.ct, case.grid)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "Study")
    sh.SetItemParent(sh_item(sh, ct), study)
    sh.SetItemAttribute(study, "DicomRtImport.DoseUnitValue", "0.0001")
    node = scene.add_dose_to_scene(mrml, case.dose, case.grid, "dose", ct)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    assert sh.GetItemAttribute(study, "DicomRtImport.DoseUnitValue") == "0.0001"
    assert sh.GetItemAttribute(study, "DicomRtImport.DoseUnitName") == "GY"


def test_prediction_folder_becomes_dose_chart_and_table(predicted, tmp_path):
    """The folder the CLI, the background process and the batch script write is what the module shows."""
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    from dosediffusion.prediction.outputs import read_dvh_csv, write_prediction
    from dosediffusion.prediction.scorecard import choose_scorecard

    mrml, ct, _, scene_case, prediction = predicted
    choice = choose_scorecard("lung_60", scene_case)
    write_prediction(scene_case, prediction, tmp_path / "out", choice, report=False)
    dose_node, chart, table = add_prediction_folder(mrml, tmp_path / "out", ct)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(dose_node), prediction.dose_gy, atol=1e-5)
    curves = read_dvh_csv(tmp_path / "out" / "dvh.csv")
    assert set(curves) == {"predicted", "case"} and chart.GetNumberOfPlotSeriesNodes() == 2 * len(curves["predicted"])
    dvh_table = chart.GetNthPlotSeriesNode(0).GetTableNode().GetTable()
    body = dvh_table.GetColumnByName("BODY (predicted)")
    dose, volume = curves["predicted"]["BODY"]
    assert [body.GetValue(r) for r in range(len(volume))] == pytest.approx(volume, abs=1e-6)
    rows = scene.table_rows(table)
    expected = score_case(scene_case, choice.template, prediction.dose_gy)
    assert rows[-1]["Predicted"] == pytest.approx(expected.total)
    assert rows[-1]["Reference"] == pytest.approx(score_case(scene_case, choice.template).total)


def test_a_rerun_replaces_the_previous_prediction_and_keeps_the_reference(predicted, tmp_path):
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    from dosediffusion.prediction.outputs import write_prediction
    from dosediffusion.prediction.scorecard import choose_scorecard

    _, _, _, scene_case, prediction = predicted
    mrml, ct, segmentation = scene_from_case(scene_case)
    reference = volume_node_for(mrml, scene_case.dose, scene_case.grid, "RTDOSE")
    write_prediction(scene_case, prediction, tmp_path / "out", choose_scorecard("lung_60", scene_case), report=False)

    def names():
        return sorted(mrml.GetNthNode(i).GetName() for i in range(mrml.GetNumberOfNodes())
                      if mrml.GetNthNode(i).GetAttribute(scene.PREDICTION_ATTRIBUTE) == "1")

    first = add_prediction_folder(mrml, tmp_path / "out", ct)
    before, count = names(), mrml.GetNumberOfNodes()
    second = add_prediction_folder(mrml, tmp_path / "out", ct)
    assert names() == before and mrml.GetNumberOfNodes() == count
    assert [n.GetName() for n in second] == [n.GetName() for n in first] == ["Predicted dose", "DoseDiffusion DVH",
                                                                               "DoseDiffusion scorecard"]
    assert all(mrml.GetNodeByID(n.GetID()) is None for n in first if n.GetID() not in {m.GetID() for m in second})
    assert mrml.GetNodeByID(reference.GetID()) is reference and reference.GetImageData() is not None


def test_the_uncertainty_volume_is_shown_and_replaced_with_the_prediction(predicted, tmp_path):
    """``dose_std.nrrd`` → a plain scalar volume beside the dose (same grid, not an RT dose, marked as the
    prediction): a re-run replaces it, and a folder without one leaves none behind."""
    import dataclasses

    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    from dosediffusion.prediction.outputs import write_prediction
    from dosediffusion.prediction.scorecard import choose_scorecard

    _, _, _, scene_case, prediction = predicted
    dose = prediction.dose_gy
    three = dataclasses.replace(prediction, candidates_gy=[dose, dose * np.float32(1.1), dose * np.float32(0.9)])
    mrml, ct, _ = scene_from_case(scene_case)
    color_logic = slicer.vtkMRMLColorLogic()  # the colour nodes a Slicer scene has
    color_logic.SetMRMLScene(mrml)
    choice = choose_scorecard("none", scene_case)
    write_prediction(scene_case, three, tmp_path / "three", choice, report=False)
    write_prediction(scene_case, prediction, tmp_path / "one", choice, report=False)

    def uncertainty_nodes():
        return [n for n in _volumes(mrml) if n.GetName() == "Predicted dose uncertainty (Gy)"]

    dose_node, _, _ = add_prediction_folder(mrml, tmp_path / "three", ct)
    (node,) = uncertainty_nodes()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), 0.1 * dose, rtol=1e-4, atol=1e-5)
    assert scene.grid_from_volume_node(node).same_as(scene.grid_from_volume_node(dose_node))
    assert node.GetAttribute(scene.PREDICTION_ATTRIBUTE) == "1" and not node.GetAttribute("DicomRtImport.DoseVolume")
    assert node.GetDisplayNode().GetColorNodeID() == scene.UNCERTAINTY_COLOR_NODE_ID
    assert node.GetDisplayNode().GetWindowLevelMax() == pytest.approx(0.1 * float(dose.max()), rel=1e-4)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == sh.GetItemParent(sh.GetItemByDataNode(dose_node))
    assert scene.find_scene_inputs(mrml).ct is ct
    count = mrml.GetNumberOfNodes()
    add_prediction_folder(mrml, tmp_path / "three", ct)
    (again,) = uncertainty_nodes()
    assert mrml.GetNumberOfNodes() == count and mrml.GetNodeByID(node.GetID()) is None
    add_prediction_folder(mrml, tmp_path / "one", ct)
    assert uncertainty_nodes() == [] and mrml.GetNodeByID(again.GetID()) is None


def test_dvh_colours_are_the_segments(predicted, tmp_path):
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    from dosediffusion.prediction.outputs import write_prediction
    from dosediffusion.prediction.scorecard import choose_scorecard

    _, _, _, scene_case, prediction = predicted
    mrml, ct, segmentation = scene_from_case(scene_case)
    segment = segmentation.GetSegmentation().GetSegment(segmentation.GetSegmentation().GetSegmentIdBySegmentName("PTV_60"))
    segment.SetColor(0.1, 0.9, 0.3)
    write_prediction(scene_case, prediction, tmp_path / "out", choose_scorecard("none", scene_case), report=False)
    _, chart, table = add_prediction_folder(mrml, tmp_path / "out", ct, segmentation_node=segmentation)
    colours = {chart.GetNthPlotSeriesNode(i).GetYColumnName(): chart.GetNthPlotSeriesNode(i).GetColor()
               for i in range(chart.GetNumberOfPlotSeriesNodes())}
    assert colours["PTV_60 (predicted)"] == pytest.approx((0.1, 0.9, 0.3)) == colours["PTV_60 (reference)"]
    assert table is None  # no scorecard chosen


def test_cancel_ends_the_whole_process_tree():
    """The launcher's child (the real Python in Slicer) ends too; killing the launcher alone would orphan it."""
    import psutil
    from DoseDiffusionLib.process_tree import terminate_process_tree

    launcher_code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
                     "'import time; time.sleep(120)']); print(child.pid, flush=True); time.sleep(120)")

    def launch():
        process = subprocess.Popen([sys.executable, "-c", launcher_code], stdout=subprocess.PIPE, text=True)
        return process, int(process.stdout.readline())

    process, child = launch()
    process.kill()  # the old cancel: the launcher only
    process.wait()
    orphan = psutil.Process(child)
    assert orphan.is_running() and orphan.status() != psutil.STATUS_ZOMBIE
    orphan.kill()
    process, child = launch()
    terminate_process_tree(process.pid)
    process.wait(10)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("arguments, message", [
    (["--steps", "0"], "steps must be between 1 and 50"),
    (["--model", "/nonexistent"], "not a DoseDiffusion pipeline folder"),
    (["--role", "Foo"], "write NAME=ROLE"),
    ([], "No module named 'DICOMLib'"),  # every check passed; the Slicer application is what is missing here
])
def test_the_batch_script_ends_with_an_error_code_whatever_fails(arguments, message, tmp_path):
    script = MODULE_DIR / "Resources" / "batch_predict.py"
    done = subprocess.run([sys.executable, str(script), "--", "--dicom", str(tmp_path), "--out", str(tmp_path / "o"),
                           *arguments], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "batch_predict: error: " in done.stderr and message in done.stderr
    assert not (tmp_path / "o").exists()


def test_the_batch_summary_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("batch_predict", MODULE_DIR / "Resources" / "batch_predict.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    table = batch.summary_table([("P1", "done", "/out/P1", 3.25), ("PATIENT-2", "failed", "no target", 0.5)])
    lines = table.splitlines()
    assert lines[0].split() == ["patient", "outcome", "seconds", "folder", "or", "reason"]
    assert lines[1].split() == ["P1", "done", "3.2", "/out/P1"] and lines[2].split()[:3] == ["PATIENT-2", "failed", "0.5"]


def test_torch_status_names_the_version_and_the_device():
    import torch

    status = dependencies.torch_status()
    assert status.startswith(f"PyTorch {torch.__version__}")
    assert ("CUDA" in status and torch.cuda.is_available()) or "no CUDA GPU" in status


def test_only_missing_packages_are_installed():
    """A package Slicer ships is never upgraded: any installed version counts as there; the rest is
    installed by a pip process of Slicer's Python, in the background."""
    command = dependencies.install_command(["surely-not-a-package-xyz>=1"])
    assert command[0] == dependencies.python_executable() and command[1:4] == ["-m", "pip", "install"]
    assert command[-1] == "surely-not-a-package-xyz>=1"
    assert dependencies.missing_requirements(["numpy>=999", "surely-not-a-package-xyz>=1"]) == [
        "surely-not-a-package-xyz>=1"]
    assert not dependencies.missing_requirements(dependencies.read_requirements())  # this environment has them all


def test_dvh_chart_series_and_table(predicted):
    mrml, _, _, scene_case, prediction = predicted
    pred = {n: d.cumulative(0.1) for n, d in case_dvhs(scene_case, prediction.dose_gy).items()}
    dvhs_ref = case_dvhs(scene_case)
    ref = {n: d.cumulative(0.1) for n, d in dvhs_ref.items()}
    chart = scene.add_dvh_chart(mrml, pred, ref)
    assert chart.IsA("vtkMRMLPlotChartNode")
    assert chart.GetNumberOfPlotSeriesNodes() == 2 * len(pred) == 8
    styles = {}
    for i in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(i)
        assert series.GetXColumnName() == "Dose (Gy)"
        styles[series.GetYColumnName()] = series.GetLineStyle()
        table_node = series.GetTableNode()
    assert styles["PTV_60 (predicted)"] == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert styles["PTV_60 (reference)"] == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    table = table_node.GetTable()
    assert table.GetNumberOfColumns() == 1 + 8
    dose_axis = np.array([table.GetValue(r, 0).ToDouble() for r in range(table.GetNumberOfRows())])
    assert dose_axis[0] == 0.0 and dose_axis[-1] >= max(d[-1] for d, _ in list(pred.values()) + list(ref.values()))
    column = table.GetColumnByName("BODY (reference)")
    volume = np.array([column.GetValue(r) for r in range(table.GetNumberOfRows())])
    dose, expected = ref["BODY"]
    assert np.allclose(volume[:len(expected)], expected, atol=1e-6) and volume[0] == pytest.approx(100.0)
    assert np.all(np.diff(volume) <= 1e-9)


def test_scorecard_table_rows(predicted):
    mrml, _, _, scene_case, prediction = predicted
    template = load_template("lung_60")
    report = score_case(scene_case, template, prediction.dose_gy)
    reference = score_case(scene_case, template)
    node = scene.add_scorecard_table(mrml, report, reference)
    rows = scene.table_rows(node)
    assert len(rows) == len(report.entries) + 1
    assert [r["Structure"] for r in rows[:-1]] == [e.structure for e in report.entries]
    assert rows[-1]["Structure"] == "Total"
    assert rows[-1]["Predicted"] == pytest.approx(report.total)
    assert rows[-1]["Reference"] == pytest.approx(reference.total)
    assert rows[-1]["Max score"] == pytest.approx(report.max_total)
    for row, entry, ref in zip(rows, report.entries, reference.entries, strict=False):
        assert (row["Predicted"] is None) == (entry.value is None)
        if entry.value is not None:
            assert row["Predicted"] == pytest.approx(entry.value) and row["Reference"] == pytest.approx(ref.value)
    without = scene.table_rows(scene.add_scorecard_table(mrml, report))
    assert without[-1]["Reference"] is None


# ----------------------------------------------------------------------------- plan adapter


class FakeBeam(vtk.vtkObject):
    """A stand-in for SlicerRT's vtkMRMLRTBeamNode with its method names (a VTK object, so that it
    can sit in the vtkCollection that GetBeams fills)."""

    def __init__(self, name, gantry, collimator=0.0, couch=0.0, iso_ras=None, weight=1.0, sad=1000.0, scene=None):
        self._name, self._gantry, self._collimator, self._couch = name, gantry, collimator, couch
        self._iso, self._weight, self._sad, self._scene = iso_ras, weight, sad, scene

    def GetName(self):
        return self._name

    def GetGantryAngle(self):
        return self._gantry

    def GetCollimatorAngle(self):
        return self._collimator

    def GetCouchAngle(self):
        return self._couch

    def GetSAD(self):
        return self._sad

    def GetBeamWeight(self):
        return self._weight

    def GetIsocenterPositionFlag(self):
        return self._iso is not None

    def GetIsocenterPosition(self):
        return tuple(self._iso)

    def GetScene(self):
        return self._scene


class FakePlan:
    """SlicerRT's vtkMRMLRTPlanNode methods that the adapter uses."""

    def __init__(self, beams, iso_ras=(10.0, -20.0, 30.0), rx=0.0, scene=None, item=0):
        self.beams, self.iso, self.rx, self.scene, self.item = beams, iso_ras, rx, scene, item

    def GetBeams(self, collection):
        collection.RemoveAllItems()
        for beam in self.beams:
            collection.AddItem(beam)

    def GetIsocenterPosition(self, isocenter):
        isocenter[:] = list(self.iso)
        return True

    def GetRxDose(self):
        return self.rx

    def GetName(self):
        return "Plan"

    def GetScene(self):
        return self.scene

    def GetPlanSubjectHierarchyItemID(self):
        return self.item


class FakeSequence:
    def __init__(self, name, nodes):
        self.name, self.nodes = name, nodes

    def GetName(self):
        return self.name

    def GetNumberOfDataNodes(self):
        return len(self.nodes)

    def GetNthDataNode(self, i):
        return self.nodes[i]


class FakeBrowser:
    def __init__(self, proxy, sequence):
        self.proxy, self.sequence = proxy, sequence

    def GetSequenceNode(self, node):
        return self.sequence if node is self.proxy else None


class FakeScene:
    def __init__(self):
        self.browsers = []

    def GetNumberOfNodesByClass(self, name):
        return len(self.browsers) if name == "vtkMRMLSequenceBrowserNode" else 0

    def GetNthNodeByClass(self, i, name):
        return self.browsers[i]


def test_plan_adapter_static_beams_and_an_arc():
    fake_scene = FakeScene()
    static = [FakeBeam("G0", 0.0, weight=120.0, scene=fake_scene),
              FakeBeam("G90", 90.0, collimator=15.0, couch=350.0, sad=1000.0, scene=fake_scene)]
    arc_angles = [181.0, 221.0, 261.0, 301.0, 341.0, 21.0]
    control_points = [FakeBeam(f"Arc [TREATMENT] : CP{i}", a, collimator=30.0, scene=fake_scene)
                      for i, a in enumerate(arc_angles)]
    proxy = FakeBeam("Arc [TREATMENT] : CP0", 181.0, collimator=30.0, scene=fake_scene)
    fake_scene.browsers.append(FakeBrowser(proxy, FakeSequence("Arc", control_points)))
    counter = [FakeBeam("CCW", a, scene=fake_scene) for a in (30.0, 0.0, 330.0)]
    proxy2 = FakeBeam("CCW : CP0", 30.0, scene=fake_scene)
    fake_scene.browsers.append(FakeBrowser(proxy2, FakeSequence("CCW", counter)))
    plan = FakePlan([*static, proxy, proxy2], iso_ras=(10.0, -20.0, 30.0))
    beams = plan_adapter.beams_from_plan_node(plan)
    assert [b.name for b in beams] == ["G0", "G90", "Arc", "CCW"]
    assert all(b.isocenter_mm == (-10.0, 20.0, 30.0) for b in beams)  # RAS → LPS
    g0, g90, arc, ccw = beams
    assert not g0.is_arc and g0.meterset_weight == 120.0 and g0.control_point_gantry_deg == (0.0,)
    assert (g90.gantry_deg, g90.collimator_deg, g90.couch_deg, g90.sad_mm) == (90.0, 15.0, 350.0, 1000.0)
    assert arc.arc_direction == "CW" and arc.control_point_gantry_deg == tuple(arc_angles)
    assert arc.gantry_deg == 181.0 and arc.arc_stop_deg == 21.0 and arc.collimator_deg == 30.0
    assert ccw.arc_direction == "CC"


def test_plan_adapter_control_point_isocenter_and_read_plan_rx():
    beam = FakeBeam("B", 45.0, iso_ras=(1.0, 2.0, 3.0))
    plan = FakePlan([beam], rx=70.0)
    plan.GetIsocenterPosition = lambda iso: pytest.fail("SlicerRT makes a POI markup when asked: not needed here")
    reading = plan_adapter.read_plan(plan, dicom_database=None)
    assert reading.source == "node" and reading.beams[0].isocenter_mm == (-1.0, -2.0, 3.0)
    assert reading.prescription.levels_gy == [70.0]
    # SlicerRT's untouched default RxDose (1 Gy) is no prescription
    assert plan_adapter.read_plan(FakePlan([beam], rx=1.0), dicom_database=None).prescription.levels_gy == []


class FakeDicomDatabase:
    """ctkDICOMDatabase's lookups used by the adapter."""

    def __init__(self, files: dict[str, str], values: dict[tuple[str, str], str] | None = None):
        self.files, self.values = files, values or {}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")

    def filesForSeries(self, uid):
        return []

    def instanceValue(self, uid, tag):
        return self.values.get((uid, tag), "")


def test_rtplan_fallback_when_the_node_gives_no_beams(phantom_dicom):
    _, _, _, paths = phantom_dicom
    import pydicom

    plan_uid = str(pydicom.dcmread(paths["rtplan"], stop_before_pixels=True).SOPInstanceUID)
    mrml = slicer.vtkMRMLScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    item = sh.CreateFolderItem(sh.GetSceneItemID(), "RTPLAN")
    sh.SetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMInstanceUIDName(), plan_uid)
    plan = FakePlan([], scene=mrml, item=item)
    database = FakeDicomDatabase({plan_uid: str(paths["rtplan"])})
    assert plan_adapter.rtplan_file(plan, database) == Path(paths["rtplan"])
    reading = plan_adapter.read_plan(plan, database)
    beams, prescription, _ = read_rtplan(Path(paths["rtplan"]))
    assert reading.source == "rtplan" and any("RTPLAN" in w for w in reading.warnings)
    assert [(b.name, b.gantry_deg, b.arc_direction, b.isocenter_mm) for b in reading.beams] == \
        [(b.name, b.gantry_deg, b.arc_direction, b.isocenter_mm) for b in beams]
    assert reading.prescription.levels_gy == prescription.levels_gy == [60.0]
    assert reading.prescription.fractions == 30
    # beams read from the node take the file's meterset weights (SlicerRT's import leaves them at 1.0)
    node_beams = [FakeBeam(b.name, b.gantry_deg, iso_ras=(0.0, 0.0, 0.0), scene=FakeScene()) for b in reversed(beams)]
    weighted = plan_adapter.read_plan(FakePlan(node_beams, scene=mrml, item=item), database)
    assert weighted.source == "node" and [b.name for b in weighted.beams] == [b.name for b in reversed(beams)]
    assert [b.meterset_weight for b in weighted.beams] == [b.meterset_weight for b in reversed(beams)] != [1.0] * len(beams)
    renamed = plan_adapter.with_file_weights(
        [Beam("other", 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), meterset_weight=1.0)], beams)
    assert renamed[0][0].meterset_weight == 1.0 and "differ" in renamed[1][0]
    # an unresolved proxy beam (its sequence browser gone) also falls back
    broken = FakePlan([FakeBeam("Arc : CP0", 181.0, scene=FakeScene())], scene=mrml, item=item)
    broken.GetIsocenterPosition = lambda iso: False
    assert plan_adapter.read_plan(broken, database).source == "rtplan"
    # no file: no beams, a warning
    assert plan_adapter.read_plan(FakePlan([], scene=mrml, item=item), FakeDicomDatabase({})).beams == []


def test_case_from_scene_with_plan_and_dicom_identifiers(phantom):
    case, _ = phantom
    mrml, ct, segmentation = scene_from_case(case)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    sh.SetItemUID(sh_item(sh, ct), constants.GetDICOMInstanceUIDName(), "1.2.3.1 1.2.3.2")
    plan_item = sh.CreateFolderItem(sh.GetSceneItemID(), "plan")
    sh.SetItemUID(plan_item, constants.GetDICOMInstanceUIDName(), "1.2.3.99")
    database = FakeDicomDatabase({}, {("1.2.3.1", "0020,0052"): "1.2.3.4.5", ("1.2.3.1", "0010,0020"): "PAT1",
                                      ("1.2.3.1", "0020,000D"): "1.2.3.7"})
    plan = FakePlan([FakeBeam("G0", 0.0), FakeBeam("G180", 180.0)], iso_ras=(0.0, 0.0, 0.0), rx=60.0,
                    scene=mrml, item=plan_item)
    built = scene.case_from_scene(ct, segmentation, plan, dicom_database=database)
    assert [b.gantry_deg for b in built.beams] == [0.0, 180.0] and isinstance(built.beams[0], Beam)
    assert built.prescription.levels_gy == [60.0]
    assert built.meta["FrameOfReferenceUID"] == "1.2.3.4.5" and built.meta["PatientID"] == "PAT1"
    assert built.meta["StudyInstanceUID"] == "1.2.3.7" and built.meta["RTPlanSOPInstanceUID"] == "1.2.3.99"


# ----------------------------------------------------------------------------- background process


def test_progress_lines_and_command():
    event = process.parse_progress_line('{"event": "progress", "case": "c", "fraction": 0.55, "message": "step 5"}\n')
    assert event == process.ProgressEvent("c", 0.55, "step 5")
    assert process.parse_progress_line("cases:  10%|#   | 1/10") is None
    assert process.parse_progress_line("{not json") is None
    # stderr shares the pipe: a progress bar's text (no line end) comes before the JSON on its line
    bar = 'case:  50%|#####     | 1/2 [00:01<00:01, step {1}]{"event": "progress", "case": "case", "fraction": 0.9}\n'
    assert process.parse_progress_line(bar) == process.ProgressEvent("case", 0.9, "")
    assert process.parse_progress_line('{"event": "progress", "case": "c", "fraction": 0.5} and more') is None
    assert process.parse_progress_line('{"event": "log", "fraction": 0.5}') is None
    command = process.predict_command("case.npz", "out", "/models/m", 4, 2, "cpu", "lung_60", python="py")
    assert command[:3] == ["py", str(MODULE_DIR / "DoseDiffusionLib" / "process.py"), "predict"]
    assert command[command.index("--steps") + 1] == "4" and "--progress-json" in command
    assert command[command.index("--scorecard") + 1] == "lung_60" and "--remote" not in command
    remote = process.predict_command("case.npz", "out", remote="https://gpu:8443", token_file="t.txt", python="py")
    assert remote[remote.index("--remote") + 1] == "https://gpu:8443" and remote[-2:] == ["--token-file", "t.txt"]


def test_requirements_file_has_no_torch():
    lines = dependencies.read_requirements()
    assert lines and not any(line.lower().startswith("torch") for line in lines)
    names = {line.split(">")[0].split("=")[0].strip().lower() for line in lines}
    assert {"pydicom", "diffusers", "jsonschema", "safetensors"} <= names
    raw = (MODULE_DIR / "Resources" / "requirements.txt").read_text().lower()
    assert not any(line.strip().startswith("torch") for line in raw.splitlines())


def test_core_package_is_found_from_the_logic_folder_without_an_install():
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        "import DoseDiffusionLib\n"
        "import dosediffusion, dosediffusion.case, dosediffusion.aliases\n"
        "print(dosediffusion.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == MODULE_DIR / "Logic" / "__init__.py"


def popen_launch(command, environment):
    """What ``slicer.util.launchConsoleProcess`` does outside the application (the wheel has no startup
    environment): stdout and stderr in one text pipe, ``environment`` added."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **environment})


def test_the_background_process_predicts_the_scene_case_on_its_dicom_study(phantom, tmp_path):
    """The Logic's background process (``DoseDiffusionLib.process``) receives the scene's case whole: the
    child's RTDOSE is on the CT's patient, study and frame of reference and references its plan, and the
    child's case has the scene's patient position and warnings; progress comes as events, in order."""
    import pydicom

    from dosediffusion.io.load import load_case

    case, _ = phantom
    mrml, ct, segmentation = scene_from_case(case)
    dose_node = volume_node_for(mrml, case.dose, case.grid, "RTDOSE")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    sh.SetItemUID(sh_item(sh, ct), constants.GetDICOMInstanceUIDName(), "1.2.3.1 1.2.3.2")
    plan_item = sh.CreateFolderItem(sh.GetSceneItemID(), "plan")
    sh.SetItemUID(plan_item, constants.GetDICOMInstanceUIDName(), "1.2.3.99")
    identifiers = {"0020,0052": "1.2.3.4.5", "0010,0020": "PAT1", "0020,000D": "1.2.3.7", "0018,5100": "HFS"}
    database = FakeDicomDatabase({}, {("1.2.3.1", tag): value for tag, value in identifiers.items()})
    plan = FakePlan([FakeBeam("G0", 0.0), FakeBeam("G180", 180.0)], iso_ras=(0.0, 0.0, 0.0), rx=60.0,
                    scene=mrml, item=plan_item)
    scene_case = scene.case_from_scene(ct, segmentation, plan, reference_dose_node=dose_node, dicom_database=database)
    scene_case.warnings.append("a warning of the scene")
    model = tiny_pipeline(seed=3).save_pretrained(tmp_path / "model")

    started = process.start_prediction(scene_case, model, steps=2, device="cpu", scorecard="none",
                                       python=sys.executable, launch=popen_launch)
    try:
        child_case = load_case(started.command[3])  # the case file the child reads
        assert child_case.meta == scene_case.meta and child_case.patient_position == "HFS"
        assert "a warning of the scene" in child_case.warnings
        update = started.wait(300)
        assert update.returncode == 0, update.tail
        assert update.result == started.result and update.result.is_dir()
        events = update.events
        assert events and events[-1].fraction == 1.0
        assert [e.fraction for e in events] == sorted(e.fraction for e in events)
        rtdose = pydicom.dcmread(update.result / "RTDOSE.dcm", stop_before_pixels=True)
        assert (rtdose.PatientID, rtdose.StudyInstanceUID, rtdose.FrameOfReferenceUID) == ("PAT1", "1.2.3.7", "1.2.3.4.5")
        assert rtdose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == "1.2.3.99"
        from dosediffusion.prediction.outputs import read_prediction

        read = read_prediction(update.result)
        assert read.grid.same_as(scene_case.grid) and read.dose_gy.max() > 0
        assert "a warning of the scene" in read.summary["warnings"]
    finally:
        started.close()
    assert not started.work.exists()


def test_a_case_that_cannot_be_predicted_starts_no_process(phantom):
    from dosediffusion.errors import InputError

    case, _ = phantom
    mrml, ct, segmentation = scene_from_case(case)
    scene_case = scene.case_from_scene(ct, segmentation, roles={"PTV_60": RoleChoice("ignore")})
    started = []
    with pytest.raises(InputError):
        process.start_prediction(scene_case, "demo", launch=lambda *args: started.append(args))
    assert not started


def test_a_failed_process_reports_its_code_and_last_lines(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    code = "import sys; [print('line', i) for i in range(40)]; sys.exit(3)"
    failed = process.BackgroundProcess([sys.executable, "-c", code], work, work / "out", popen_launch)
    update = failed.wait(60)
    assert update.returncode == 3 and update.result is None
    assert update.tail.splitlines() == [f"line {i}" for i in range(40 - process.TAIL_LINES, 40)]
    assert failed.poll().lines == []  # everything was said once


def test_cancel_ends_the_tree_and_removes_the_work_folder(tmp_path):
    import psutil

    work = tmp_path / "work"
    work.mkdir()
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); print(child.pid, flush=True); time.sleep(120)")
    running = process.BackgroundProcess([sys.executable, "-c", code], work, launch=popen_launch)
    deadline = time.monotonic() + 30
    lines = []
    while not lines and time.monotonic() < deadline:
        lines = running.poll().lines
        time.sleep(0.05)
    child = int(lines[0])
    running.cancel()
    assert running.process.returncode is not None and not work.exists()
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


# ----------------------------------------------------------------------------- two patients (issue 29)

from DoseDiffusionLib import export, slicerrt_dvh, widget_rules  # noqa: E402

from dosediffusion.case import Prescription  # noqa: E402

PATIENTS = {"A": ("PAT-A", "1.2.826.0.1.1", "1.2.826.0.1.2"), "B": ("PAT-B", "1.2.826.0.2.1", "1.2.826.0.2.2")}
"""Patient label → (PatientID, StudyInstanceUID, FrameOfReferenceUID) of the two patients' CTs."""


@pytest.fixture(scope="module")
def two_patients(predicted, phantom_dicom, tmp_path_factory):
    """A scene with two patients (the phantom's CT and structures twice, each in its own DICOM study)
    and, for A, a plan whose RTPLAN (the phantom's, rewritten) prescribes 78 Gy in 39 fractions, its
    target named just "PTV": (scene, {label: (ct, segmentation)}, plan, database, the phantom's scene
    case, its prediction)."""
    import pydicom

    _, _, _, scene_case, prediction = predicted
    rtplan = pydicom.dcmread(phantom_dicom[3]["rtplan"])
    for reference in rtplan.DoseReferenceSequence:
        if "TargetPrescriptionDose" in reference:
            reference.TargetPrescriptionDose = 78.0
    rtplan.FractionGroupSequence[0].NumberOfFractionsPlanned = 39
    rtplan.SOPInstanceUID = plan_uid = pydicom.uid.generate_uid()
    rtplan.file_meta.MediaStorageSOPInstanceUID = plan_uid
    paths = {"rtplan": tmp_path_factory.mktemp("plan78") / "RTPLAN.dcm"}
    rtplan.save_as(paths["rtplan"])
    prostate = {("PTV" if n == "PTV_60" else n): s for n, s in scene_case.structures.items()}
    mrml = slicer.vtkMRMLScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    values, nodes = {}, {}
    for label, (patient_id, study_uid, frame_uid) in PATIENTS.items():
        ct = volume_node_for(mrml, scene_case.ct, scene_case.grid, f"CT {label}")
        segmentation = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode", f"RTSTRUCT {label}")
        for name, structure in prostate.items():
            segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name)
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(oriented_mask(structure.mask, ct),
                                                                                 segmentation, segment_id)
        study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), patient_id), f"Study {label}")
        sh.SetItemParent(sh_item(sh, ct), study)
        instance = f"{study_uid}.100"
        sh.SetItemUID(sh_item(sh, ct), constants.GetDICOMInstanceUIDName(), instance)
        values.update({(instance, "0010,0020"): patient_id, (instance, "0020,000D"): study_uid,
                       (instance, "0020,0052"): frame_uid})
        nodes[label] = (ct, segmentation)
    plan_item = sh.CreateFolderItem(sh.GetSceneItemID(), "RTPLAN A")
    sh.SetItemUID(plan_item, constants.GetDICOMInstanceUIDName(), plan_uid)
    plan = FakePlan([FakeBeam("G0", 0.0, iso_ras=(0.0, 0.0, 0.0)), FakeBeam("G180", 180.0, iso_ras=(0.0, 0.0, 0.0))],
                    scene=mrml, item=plan_item)
    database = FakeDicomDatabase({plan_uid: str(paths["rtplan"])}, values)
    return mrml, nodes, plan, database, scene_case, prediction


def test_the_gui_takes_the_plans_prescription_as_the_batch_does(two_patients):
    """Boxes at automatic (the parameter node's defaults) → the plan's 78 Gy in 39 fractions, the same
    case as the batch script's (no prescription given); a hand-entered 60 Gy is used but warned about."""
    mrml, nodes, plan, database, _, _ = two_patients
    ct, segmentation = nodes["A"]
    gy, fractions = widget_rules.prescription_arguments(widget_rules.AUTOMATIC, widget_rules.AUTOMATIC)
    gui = scene.case_from_scene(ct, segmentation, plan, prescription=gy, fractions=fractions, dicom_database=database)
    batch = scene.case_from_scene(ct, segmentation, plan, dicom_database=database)
    assert (gui.prescription.levels_gy, gui.prescription.fractions) == ([78.0], 39)
    assert batch.prescription == gui.prescription
    assert gui.structures["PTV"].role == "ptv" and gui.structures["PTV"].prescription_gy == 78.0
    assert not any("prescription" in w for w in gui.warnings)
    from dosediffusion.prediction.scorecard import choose_scorecard

    assert "lung_60" not in choose_scorecard("auto", gui).reason
    entered = scene.case_from_scene(ct, segmentation, plan, prescription=60.0, fractions=30, dicom_database=database)
    assert entered.prescription.levels_gy == [60.0] and entered.prescription.fractions == 30
    assert any("60 Gy) is not the plan's (78 Gy)" in w for w in entered.warnings)
    assert any("30 fractions given are not the plan's 39" in w for w in entered.warnings)


def test_the_plan_prescription_note_and_the_roles_suggestions():
    plan = Prescription([66.0, 59.0, 53.0], 33)
    assert widget_rules.plan_prescription_note(plan) == "Plan: 66/59/53 Gy in 33 fractions (used while the boxes are automatic)."
    assert "PTV doses" in widget_rules.plan_prescription_note(None)
    assert "no prescription" in widget_rules.plan_prescription_note(Prescription([], None))
    assert widget_rules.suggestion_levels(0.0, plan) == [66.0, 59.0, 53.0]
    assert widget_rules.suggestion_levels(70.0, plan) == [70.0]
    assert widget_rules.prescription_arguments(70.0, 35) == (70.0, 35)


def test_a_scorecard_file_without_a_file_is_refused():
    with pytest.raises(ValueError, match="no file is chosen"):
        widget_rules.scorecard_option(widget_rules.SCORECARD_FILE, "  ")
    assert widget_rules.scorecard_option(widget_rules.SCORECARD_FILE, "/x/card.json") == "/x/card.json"
    assert widget_rules.scorecard_option("auto", "") == "auto"


def _prediction_folder(case, prediction, folder):
    from dosediffusion.prediction.outputs import write_prediction
    from dosediffusion.prediction.scorecard import choose_scorecard

    write_prediction(case, prediction, folder, choose_scorecard("none", case), report=False)
    return folder


def test_export_goes_to_the_patient_the_dose_was_predicted_for(two_patients, tmp_path):
    """A's prediction is exported on A's patient, study, frame of reference and plan, whatever CT and
    plan are selected afterwards (B's here: the export takes neither)."""
    import pydicom
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    mrml, nodes, plan, database, scene_case, prediction = two_patients
    folder = _prediction_folder(scene_case, prediction, tmp_path / "out")
    dose_a, _, _ = add_prediction_folder(mrml, folder, nodes["A"][0], plan_node=plan)
    dose_b, _, _ = add_prediction_folder(mrml, folder, nodes["B"][0])
    assert scene.prediction_sources(dose_a) == (nodes["A"][0], None)  # FakePlan is no MRML node
    assert scene.prediction_sources(dose_b) == (nodes["B"][0], None)
    written = pydicom.dcmread(export.export_rtdose(dose_a, tmp_path / "A.dcm", database))
    patient_id, study_uid, frame_uid = PATIENTS["A"]
    assert (written.PatientID, written.StudyInstanceUID, written.FrameOfReferenceUID) == (patient_id, study_uid, frame_uid)
    other = pydicom.dcmread(export.export_rtdose(dose_b, tmp_path / "B.dcm", database))
    assert (other.PatientID, other.StudyInstanceUID) == PATIENTS["B"][:2]
    np.testing.assert_allclose(written.pixel_array * float(written.DoseGridScaling),
                               slicer.util.arrayFromVolume(dose_a), atol=float(written.DoseGridScaling))
    with pytest.raises(Exception, match="no predicted dose"):
        export.export_rtdose(None, tmp_path / "none.dcm")


def test_the_exported_plan_reference_is_the_source_plans(two_patients, tmp_path):
    """An MRML plan node (as SlicerRT's is) is referenced by the prediction and exported as its RTPLAN."""
    import pydicom
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    mrml, nodes, _, database, scene_case, prediction = two_patients
    plan_node = mrml.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "RT plan A")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    sh.SetItemUID(sh_item(sh, plan_node), slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMInstanceUIDName(), "1.2.3.78")
    dose, _, _ = add_prediction_folder(mrml, _prediction_folder(scene_case, prediction, tmp_path / "out"),
                                       nodes["A"][0], plan_node=plan_node)
    assert scene.prediction_sources(dose) == (nodes["A"][0], plan_node)
    written = pydicom.dcmread(export.export_rtdose(dose, tmp_path / "A.dcm", database))
    assert written.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == "1.2.3.78"


def test_a_rerun_keeps_the_other_patients_prediction(two_patients, tmp_path):
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    mrml, nodes, _, _, scene_case, prediction = two_patients
    folder = _prediction_folder(scene_case, prediction, tmp_path / "out")
    first_a = add_prediction_folder(mrml, folder, nodes["A"][0])
    b = add_prediction_folder(mrml, folder, nodes["B"][0])
    second_a = add_prediction_folder(mrml, folder, nodes["A"][0])
    assert all(mrml.GetNodeByID(n.GetID()) is None for n in first_a if n is not None)
    assert all(mrml.GetNodeByID(n.GetID()) is n for n in (*b, *second_a) if n is not None)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    study_of = {label: sh.GetItemParent(sh.GetItemByDataNode(ct)) for label, (ct, _) in nodes.items()}
    assert sh.GetItemParent(sh.GetItemByDataNode(b[0])) == study_of["B"]
    assert sh.GetItemParent(sh.GetItemByDataNode(second_a[0])) == study_of["A"]


def test_the_modules_own_chart_leaves_no_orphans_when_slicerrts_replaces_it(predicted, tmp_path):
    from DoseDiffusionLib.prediction_folder import add_prediction_folder, chart_nodes

    _, _, _, scene_case, prediction = predicted
    mrml, ct, _ = scene_from_case(scene_case)
    dose, chart, _ = add_prediction_folder(mrml, _prediction_folder(scene_case, prediction, tmp_path / "out"), ct)
    own = chart_nodes(chart)
    assert len(own) == chart.GetNumberOfPlotSeriesNodes() + 2  # the chart, its series, their one table
    slicerrt_dvh.remove_nodes(mrml, [*own, None])
    left = [mrml.GetNthNode(i) for i in range(mrml.GetNumberOfNodes())]
    assert not [n for n in left if n.IsA("vtkMRMLPlotSeriesNode") or n.IsA("vtkMRMLPlotChartNode")
                or n.GetName() == "DoseDiffusion DVH table"]
    assert mrml.GetNodeByID(dose.GetID()) is dose


def test_no_empty_studies_pile_up_for_a_ct_without_one(predicted, tmp_path):
    from DoseDiffusionLib.prediction_folder import add_prediction_folder

    _, _, _, scene_case, prediction = predicted
    mrml, ct, _ = scene_from_case(scene_case)  # a CT that is in no study (not from DICOM)
    folder = _prediction_folder(scene_case, prediction, tmp_path / "out")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()

    def studies():
        items = vtk.vtkIdList()
        sh.GetItemChildren(sh.GetSceneItemID(), items, True)
        return [items.GetId(i) for i in range(items.GetNumberOfIds()) if sh.GetItemLevel(items.GetId(i)) == study_level]

    for _ in range(3):
        dose, _, _ = add_prediction_folder(mrml, folder, ct)
    (study,) = studies()
    assert sh.GetItemParent(sh.GetItemByDataNode(dose)) == study
    scene.remove_prediction_nodes(mrml, ct)
    assert studies() == [] and sh.GetNumberOfItemChildren(sh.GetSceneItemID()) == 0  # no patient item left


def test_an_exported_prediction_loaded_back_is_never_the_reference():
    case = box_case()
    mrml = slicer.vtkMRMLScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    exported = volume_node_for(mrml, case.dose, case.grid, "RTDOSE")  # SlicerRT's name for a dose
    exported.SetAttribute("DicomRtImport.DoseVolume", "1")
    sh.SetItemUID(sh_item(sh, exported), slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMInstanceUIDName(), "9.9.1")
    named = volume_node_for(mrml, case.dose, case.grid, "900: RTDOSE: DoseDiffusion predicted dose")
    named.SetAttribute("DicomRtImport.DoseVolume", "1")
    reference = volume_node_for(mrml, case.dose, case.grid, "RTDOSE")
    reference.SetAttribute("DicomRtImport.DoseVolume", "1")
    database = FakeDicomDatabase({}, {("9.9.1", "0008,103E"): "DoseDiffusion predicted dose"})
    assert scene.find_scene_inputs(mrml, database).reference_dose is reference
    assert scene.find_scene_inputs(mrml).reference_dose is exported  # without the database it cannot tell


def test_segments_outside_the_dose_grid_are_found(predicted):
    """A clinical RTDOSE covering part of the body: the segments with no voxel in it are the ones
    SlicerRT's ComputeDvh would abort on; they are left out of its selection."""
    _, _, _, scene_case, _ = predicted
    mrml, ct, segmentation = scene_from_case(scene_case)
    dose = _half_dose(mrml, scene_case.grid)  # the PTV at the centre is inside
    inside, outside = slicerrt_dvh.segments_in_dose(segmentation, dose)
    names = {segmentation.GetSegmentation().GetSegment(i).GetName() for i in inside}
    assert "Esophagus" in outside and names == {"PTV_60", "SpinalCord", "BODY"}
    assert slicerrt_dvh.segments_in_dose(segmentation, ct)[1] == []


# ----------------------------------------------------------------------------- background processes (issue 29)


def _launcher():
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); print(child.pid, flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return process, int(process.stdout.readline())


def test_cancel_ends_the_whole_tree_without_psutil(monkeypatch):
    """Slicer 5.10 has no psutil, and the first background process is the pip that installs it."""
    from DoseDiffusionLib import process_tree

    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil → ImportError
    process, child = _launcher()
    assert child in process_tree.descendants(process.pid)
    process_tree.terminate_process_tree(process.pid, timeout_s=5.0)
    process.wait(10)
    assert not process_tree._running(child)


def test_the_log_reader_decodes_utf8_on_a_cp1252_pipe():
    """tqdm's "▏" and "→" written as UTF-8 by the child (PYTHONUTF8) on a pipe opened with Windows'
    code page: every line arrives, none stops the reader."""
    from DoseDiffusionLib.process_output import start_reader

    code = "import sys; sys.stdout.buffer.write('50%|\u258f | 1/2 \u2192 next\\n'.encode() + b'bad \\xff byte\\n' + b'done\\n')"

    def launch():
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, encoding="cp1252")

    with pytest.raises(UnicodeDecodeError):  # what the locale's decoding does to the old reader
        launch().stdout.read()
    lines: list[str] = []
    process = launch()
    start_reader(process.stdout, lines.append).join(30)
    assert lines == ["50%|\u258f | 1/2 \u2192 next\n", "bad \ufffd byte\n", "done\n"]
    process.wait(10)


def test_the_install_keeps_every_installed_version(tmp_path):
    import numpy

    path = dependencies.write_installed_constraints(tmp_path / "constraints.txt")
    lines = path.read_text().splitlines()
    assert f"numpy=={numpy.__version__}" in lines and all("==" in line for line in lines)
    command = dependencies.install_command(["surely-not-a-package-xyz>=1"], path)
    assert command[command.index("-c") + 1] == str(path) and command[-1] == "surely-not-a-package-xyz>=1"
    assert "-c" not in dependencies.install_command(["x"])


def test_slicer_packaging_only_where_it_installs():
    class Packaging:
        @staticmethod
        def pip_install(args, interactive=True):
            return None

    assert dependencies.uses_slicer_packaging((5, 12), Packaging)
    assert not dependencies.uses_slicer_packaging((5, 10), Packaging)  # 5.10 has no skip_packages/constraints
    assert not dependencies.uses_slicer_packaging((5, 12), None)


def test_a_restart_is_asked_for_when_an_imported_package_changed():
    import numpy

    before = {"numpy": numpy.__version__, "surely-not-imported-xyz": "1.0"}
    after = {"numpy": "999.0", "surely-not-imported-xyz": "2.0", "new-package": "1.0"}
    assert dependencies.restart_needed(before, after) == ["numpy"]
    assert dependencies.restart_needed(before, dict(before)) == []
    assert dependencies.restart_needed(before, after, modules={}) == []


class SlicerRtDvhLogic:
    """SlicerRT's DVH logic as its sources define the calls the module makes (no SlicerRT here):
    ``ComputeDvh(parameters)`` computes each selected segment (all when none is selected) and returns
    "Dose volume and the structure do not overlap" at the first one with no voxel in the dose, else
    "", adding a DVH table per segment referenced from the metrics table by
    ``AssembleDvhNodeReference``; ``AddDvhToChart`` adds a plot series named after the segment."""

    def __init__(self, mrml):
        self.mrml, self.computed = mrml, []

    def parameters_node(self, name):
        node = self.mrml.AddNewNodeByClass("vtkMRMLScriptedModuleNode", name)
        state = {"selected": [], "metrics": self.mrml.AddNewNodeByClass("vtkMRMLTableNode", f"{name} metrics"),
                 "chart": self.mrml.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")}
        node.SetAndObserveDoseVolumeNode = lambda dose: state.update(dose=dose)
        node.SetAndObserveSegmentationNode = lambda segmentation: state.update(segmentation=segmentation)
        node.SetSelectedSegmentIDs = lambda ids: state.update(selected=list(ids))
        node.GetMetricsTableNode = lambda: state["metrics"]
        node.GetChartNode = lambda: state["chart"]
        node.AssembleDvhNodeReference = lambda segment_id: f"DVH_{state['dose'].GetID()}_{segment_id}"
        node.state = state
        return node

    def ComputeDvh(self, parameters):  # noqa: N802 (SlicerRT's name)
        state = parameters.state
        segmentation = state["segmentation"].GetSegmentation()
        ids = state["selected"] or [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        inside, _ = slicerrt_dvh.segments_in_dose(state["segmentation"], state["dose"])
        for segment_id in ids:
            if segment_id not in inside:
                return "Dose volume and the structure do not overlap"
            table = self.mrml.AddNewNodeByClass("vtkMRMLTableNode", f"{segment_id}_DvhTable")
            table.SetAttribute("segment", segment_id)
            state["metrics"].SetNodeReferenceID(parameters.AssembleDvhNodeReference(segment_id), table.GetID())
            self.computed.append((state["dose"].GetName(), segment_id))
        return ""

    def AddDvhToChart(self, chart, table):  # noqa: N802
        series = self.mrml.AddNewNodeByClass("vtkMRMLPlotSeriesNode", table.GetAttribute("segment"))
        series.SetAndObserveTableNodeID(table.GetID())
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return series


class SceneWithSlicerRt:
    """The real MRML scene, with SlicerRT's parameter node class made by :class:`SlicerRtDvhLogic`."""

    def __init__(self, mrml, logic):
        self.mrml, self.logic = mrml, logic

    def AddNewNodeByClass(self, class_name, name=""):  # noqa: N802
        if class_name == "vtkMRMLDoseVolumeHistogramNode":
            return self.logic.parameters_node(name)
        return self.mrml.AddNewNodeByClass(class_name, name)

    def __getattr__(self, name):
        return getattr(self.mrml, name)


def _half_dose(mrml, grid):
    """A dose grid on the +x half of ``grid`` (the phantom's Esophagus, at x = -40 mm, is outside it)."""
    from dosediffusion.geometry import Grid

    half = grid.shape[2] // 2
    crop = Grid((grid.shape[0], grid.shape[1], grid.shape[2] - half), grid.spacing,
                tuple(np.asarray(grid.origin) + grid.matrix[:, 0] * grid.spacing[0] * half), grid.direction)
    return volume_node_for(mrml, np.ones(crop.shape, np.float32), crop, "clinical RTDOSE")


def test_slicerrt_dvhs_skip_a_segment_outside_the_reference_dose_and_keep_the_rest(predicted):
    _, _, _, scene_case, _ = predicted
    mrml, ct, segmentation = scene_from_case(scene_case)
    predicted_dose = volume_node_for(mrml, scene_case.dose, scene_case.grid, "Predicted dose")
    reference = _half_dose(mrml, scene_case.grid)
    logic = SlicerRtDvhLogic(mrml)
    made = slicerrt_dvh.add_slicerrt_dvhs(SceneWithSlicerRt(mrml, logic), logic,
                                          [(predicted_dose, "predicted"), (reference, "reference")], segmentation, ct)
    assert made.chart is not None and made.warnings == ["Esophagus: no voxel in the reference dose, no SlicerRT DVH"]
    names = sorted(made.chart.GetNthPlotSeriesNode(i).GetName() for i in range(made.chart.GetNumberOfPlotSeriesNodes()))
    assert names == sorted([f"{n} (predicted)" for n in scene_case.structures] +
                           [f"{n} (reference)" for n in scene_case.structures if n != "Esophagus"])
    styles = {made.chart.GetNthPlotSeriesNode(i).GetName(): made.chart.GetNthPlotSeriesNode(i).GetLineStyle()
              for i in range(made.chart.GetNumberOfPlotSeriesNodes())}
    assert styles["BODY (predicted)"] == slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
    assert styles["BODY (reference)"] == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    assert made.chart.GetTitle() == slicerrt_dvh.CHART_TITLE
    series = made.chart.GetNthPlotSeriesNode(0)
    assert series.GetAttribute(scene.PREDICTION_ATTRIBUTE) == "1" and scene.prediction_sources(series)[0] is ct
    # without the selection, SlicerRT's ComputeDvh would have returned its error for the whole reference dose
    parameters = logic.parameters_node("all segments")
    parameters.SetAndObserveDoseVolumeNode(reference)
    parameters.SetAndObserveSegmentationNode(segmentation)
    assert logic.ComputeDvh(parameters) == "Dose volume and the structure do not overlap"


def test_when_slicerrt_fails_anyway_its_nodes_go_and_the_modules_chart_stays(predicted):
    _, _, _, scene_case, _ = predicted
    mrml, ct, segmentation = scene_from_case(scene_case)
    dose = volume_node_for(mrml, scene_case.dose, scene_case.grid, "Predicted dose")
    logic = SlicerRtDvhLogic(mrml)
    logic.ComputeDvh = lambda parameters: "Failed to resample dose volume"  # another of SlicerRT's errors
    before = mrml.GetNumberOfNodes()
    made = slicerrt_dvh.add_slicerrt_dvhs(SceneWithSlicerRt(mrml, logic), logic, [(dose, "predicted")], segmentation, ct)
    assert made.chart is None and "Failed to resample dose volume" in made.warnings[0]
    assert mrml.GetNumberOfNodes() == before  # the parameter node, metrics table and chart were removed
