"""A prediction's output folder as scene nodes.

The background process, the Python console and the batch script all write the same folder
(``dosediffusion.prediction.outputs.write_prediction``); the module reads it back with the core's
``read_prediction`` and shows what is in it instead of computing DVHs and scores again: the dose →
an RT dose volume, the uncertainty (with several candidates) → a scalar volume of the per-voxel
uncertainty named after the dose (:func:`uncertainty_node_name`), the DVH table → the DVH chart
(predicted solid, the case's own dose dashed), the scorecards → the scorecard table.
"""

from __future__ import annotations

from pathlib import Path

from dosediffusion.prediction.outputs import read_prediction

from .scene import (
    add_dose_to_scene,
    add_dvh_chart,
    add_scorecard_table,
    add_uncertainty_to_scene,
    mark_prediction_sources,
    remove_prediction_nodes,
    segment_colors,
)


def uncertainty_node_name(dose_name: str) -> str:
    """The name of the uncertainty volume shown with the dose node called ``dose_name``."""
    return f"{dose_name} uncertainty (Gy)"


def add_prediction_folder(scene, folder: str | Path, reference_volume_node=None, prescription_gy: float | None = None,
                          segmentation_node=None, name: str = "Predicted dose", plan_node=None):
    """Add the folder's dose (on the grid it was written on: the CT's), its uncertainty volume (when
    the folder has one: named :func:`uncertainty_node_name`), DVH chart and scorecard table (None when
    the folder has no scorecard) to ``scene``, in place of the previous prediction
    of the same CT ``reference_volume_node`` (other patients' predictions and the reference dose
    stay); every node references that CT and ``plan_node`` (:func:`.scene.mark_prediction_sources`:
    the export uses them). The dose's colour scale follows ``prescription_gy`` (default: the highest
    level of the folder's summary), each DVH the colour of its segment in ``segmentation_node``.
    Returns the dose node, the chart and the table. A folder that cannot be read is refused (the
    core's ``InputError``, naming the file) before the scene changes."""
    read = read_prediction(folder)
    levels = read.summary.get("prescription", {}).get("levels_gy") or [None]
    remove_prediction_nodes(scene, reference_volume_node)
    dose_node = add_dose_to_scene(scene, read.dose_gy, read.grid, name, reference_volume_node,
                                  prescription_gy or levels[0])
    made = [dose_node]
    if read.dose_std_gy is not None:
        made.append(add_uncertainty_to_scene(scene, read.dose_std_gy, read.grid, uncertainty_node_name(name), dose_node))
    chart = add_dvh_chart(scene, read.dvhs.get("predicted", {}), read.dvhs.get("case"),
                          colors=segment_colors(segmentation_node))
    made += chart_nodes(chart)
    table = None
    if read.score is not None:
        table = add_scorecard_table(scene, read.score, read.score_case)
        made.append(table)
    for node in made:
        mark_prediction_sources(node, reference_volume_node, plan_node)
    return dose_node, chart, table


def chart_nodes(chart) -> list:
    """``chart``, its plot series and the tables they plot (each once)."""
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    tables = {s.GetTableNode().GetID(): s.GetTableNode() for s in series if s.GetTableNode() is not None}
    return [chart, *series, *tables.values()]
