"""SlicerRT's DVHs of the predicted and the reference dose, in one chart, that never abort the results.

SlicerRT's ``vtkSlicerDoseVolumeHistogramModuleLogic::ComputeDvh(parameterNode)`` computes every
selected segment (all of them when none is selected) and returns an error string at the first
segment with no voxel in the dose ("Dose volume and the structure do not overlap"), common with a
clinical RTDOSE that covers only part of the body; it then also leaves its logic's modified events
disabled (``SetDisableModifiedEvent(1)`` without the matching reset, which Python cannot reach). So
only the segments that overlap the dose are selected (``SetSelectedSegmentIDs``,
:func:`segments_in_dose`); the others get a warning. Should SlicerRT still fail, the module shows
its own chart (the core's DVHs) and warns. SlicerRT names each curve by its segment only
(``AddDvhToChart``); the curves are renamed "<segment> (<dose label>)", predicted solid and
reference dashed, so that the legend tells them apart. SlicerRT's classes are used only through
``slicer.modules.dosevolumehistogram.logic()`` and the node class name: nothing here runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import slicer

from .scene import PREDICTION_ATTRIBUTE, mark_prediction_sources, segment_masks

#: The chart's title: which DVH engine drew it (the scorecard is the core's).
CHART_TITLE = "DVH (SlicerRT's engine; the scorecard uses DoseDiffusion's DVHs)"


def segments_in_dose(segmentation_node, dose_node) -> tuple[list[str], list[str]]:
    """(IDs of the segments with at least one voxel on ``dose_node``'s grid, names of the others):
    the segments resampled onto the dose grid by nearest neighbour (:func:`.scene.segment_masks`)."""
    masks = segment_masks(segmentation_node, dose_node)
    segmentation = segmentation_node.GetSegmentation()
    inside, outside = [], []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        name = segmentation.GetSegment(segment_id).GetName()
        mask = masks.get(name)
        if mask is not None and mask.any():
            inside.append(segment_id)
        else:
            outside.append(name)
    return inside, outside


@dataclass
class SlicerRtDvhs:
    """What :func:`add_slicerrt_dvhs` made: the chart (None when SlicerRT drew nothing) and the warnings."""

    chart: Any = None
    warnings: list[str] = field(default_factory=list)


def add_slicerrt_dvhs(scene, logic, doses: Sequence[tuple[Any, str]], segmentation_node, ct_node=None,
                      plan_node=None) -> SlicerRtDvhs:
    """SlicerRT's DVHs of each ``(dose node, label)`` in ``doses`` (the predicted dose first) for the
    segments inside that dose, in one chart; every node made is marked as this module's prediction
    of ``ct_node`` and ``plan_node`` (a re-run replaces it). ``logic``: SlicerRT's DVH module logic."""
    result, chart, made = SlicerRtDvhs(), None, []
    segmentation = segmentation_node.GetSegmentation()
    for index, (dose, label) in enumerate(doses):
        inside, outside = segments_in_dose(segmentation_node, dose)
        if outside:
            result.warnings.append(f"{', '.join(outside)}: no voxel in the {label} dose, no SlicerRT DVH")
        if not inside:
            continue
        parameters = scene.AddNewNodeByClass("vtkMRMLDoseVolumeHistogramNode", f"DVH {dose.GetName()}")
        parameters.SetAndObserveDoseVolumeNode(dose)
        parameters.SetAndObserveSegmentationNode(segmentation_node)
        parameters.SetSelectedSegmentIDs(inside)
        error = logic.ComputeDvh(parameters)
        metrics = parameters.GetMetricsTableNode()
        made += [parameters, metrics, parameters.GetChartNode()]
        tables = [metrics.GetNodeReference(parameters.AssembleDvhNodeReference(i)) for i in inside]
        made += [t for t in tables if t is not None]
        if error:
            remove_nodes(scene, made)
            result.warnings.append(f"SlicerRT could not compute the DVHs of the {label} dose ({error}): "
                                   "the chart shows DoseDiffusion's DVHs")
            return SlicerRtDvhs(None, result.warnings)
        chart = chart or parameters.GetChartNode()
        for segment_id, table in zip(inside, tables, strict=True):
            if table is None:
                continue
            series = logic.AddDvhToChart(chart, table)
            series.SetName(f"{segmentation.GetSegment(segment_id).GetName()} ({label})")
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid if index == 0
                                else slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            made.append(series)
    if chart is not None:
        chart.SetTitle(CHART_TITLE)
    for node in made:
        node.SetAttribute(PREDICTION_ATTRIBUTE, "1")
        mark_prediction_sources(node, ct_node, plan_node)
    result.chart = chart
    return result


def remove_nodes(scene, nodes) -> None:
    """Remove ``nodes`` from ``scene`` (those still there; None is skipped): e.g. the module's own
    chart, its series and table when SlicerRT's chart replaces it."""
    for node in nodes:
        if node is not None and scene.GetNodeByID(node.GetID()) is not None:
            scene.RemoveNode(node)
