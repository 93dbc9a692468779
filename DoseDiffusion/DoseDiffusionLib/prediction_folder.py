"""A prediction's output folder (``dosediffusion.prediction.outputs``) as scene nodes.

The background process, the Python console and the batch script all write the same folder; the
module shows what is in it instead of computing DVHs and scores again: ``dose.nrrd`` → an RT dose
volume, ``dose_std.nrrd`` (with several candidates) → a scalar volume of the per-voxel uncertainty
named after the dose (:func:`uncertainty_node_name`), ``dvh.csv`` → the DVH chart (predicted solid,
the case's own dose dashed), ``scorecard.json`` → the scorecard table.
"""

from __future__ import annotations

import json
from pathlib import Path

from dosediffusion.errors import InputError
from dosediffusion.io.volume_sidecar import read_volume
from dosediffusion.metrics.scorecard import ScoreReport
from dosediffusion.prediction.outputs import DOSE_STD_FILE, read_dvh_csv

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
    the folder has ``dose_std.nrrd``: named :func:`uncertainty_node_name`), DVH chart and scorecard
    table (None when the folder has no scorecard) to ``scene``, in place of the previous prediction
    of the same CT ``reference_volume_node`` (other patients' predictions and the reference dose
    stay); every node references that CT and ``plan_node`` (:func:`.scene.mark_prediction_sources`:
    the export uses them). The dose's colour scale follows ``prescription_gy`` (default: the highest
    level of the folder's ``summary.json``), each DVH the colour of its segment in
    ``segmentation_node``. Returns the dose node, the chart and the table."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"not a prediction folder ({error})", folder) from None
    levels = summary.get("prescription", {}).get("levels_gy") or [None]
    dose, grid = read_volume(folder / "dose.nrrd")
    remove_prediction_nodes(scene, reference_volume_node)
    dose_node = add_dose_to_scene(scene, dose, grid, name, reference_volume_node, prescription_gy or levels[0])
    made = [dose_node]
    if (folder / DOSE_STD_FILE).is_file():
        std, std_grid = read_volume(folder / DOSE_STD_FILE)
        made.append(add_uncertainty_to_scene(scene, std, std_grid, uncertainty_node_name(name), dose_node))
    curves = read_dvh_csv(folder / "dvh.csv")
    chart = add_dvh_chart(scene, curves.get("predicted", {}), curves.get("case"), colors=segment_colors(segmentation_node))
    made += chart_nodes(chart)
    table = None
    if (folder / "scorecard.json").is_file():
        document = json.loads((folder / "scorecard.json").read_text())
        reference = ScoreReport.from_dict(document["case"]) if "case" in document else None
        table = add_scorecard_table(scene, ScoreReport.from_dict(document["predicted"]), reference)
        made.append(table)
    for node in made:
        mark_prediction_sources(node, reference_volume_node, plan_node)
    return dose_node, chart, table


def chart_nodes(chart) -> list:
    """``chart``, its plot series and the tables they plot (each once)."""
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    tables = {s.GetTableNode().GetID(): s.GetTableNode() for s in series if s.GetTableNode() is not None}
    return [chart, *series, *tables.values()]
