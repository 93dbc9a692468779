"""The one-page prediction report: axial, coronal and sagittal dose overlays on the CT, with several
candidates the same three planes of the per-voxel uncertainty (the candidates' standard deviation)
in a second row, the DVHs (predicted solid, the case's own dose dashed when it has one) and the
scorecard table.

Views are planes of the (z, y, x) arrays through the high PTV's centre (:func:`~dosediffusion.roles.high_ptv`; the dose maximum
without a prescribed PTV), drawn with the voxel spacing as aspect ratio, each with its position in mm, orientation
letters and a 5 cm bar (:mod:`.plane_marks`), every target and OAR outlined in its DVH colour with a
legend. The dose ('jet', 0 to its maximum) is washed above 5 % of its maximum; the uncertainty
('magma') on a square-root scale up to the 99th percentile inside the body (so that the std in the
lungs shows beside the larger one at the field edges; higher values saturate) and washed above 2 %
of that. The
title names the model, and the demo model is marked "not for clinical use". Units: Gy, %.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dosediffusion.case import Case
from dosediffusion.metrics.dvh import DVH
from dosediffusion.metrics.scorecard import ScoreReport
from dosediffusion.report.plane_marks import mark_plane, plane_position
from dosediffusion.report.plots import draw_dvhs, draw_scorecard, new_figure, save_figure, structure_colours
from dosediffusion.roles import high_ptv

if TYPE_CHECKING:
    from dosediffusion.prediction.model_folder import ModelDescription

CT_WINDOW_HU = (-500.0, 500.0)
#: The uncertainty's colour scale is a square root: 1.8 Gy of 10 Gy sits at 42 % of the colours, not 18 %.
UNCERTAINTY_GAMMA = 0.5
DEMO_WARNING = "Demo model, not for clinical use (trained on synthetic cases)"


def _centre(case: Case, dose: np.ndarray) -> tuple[int, int, int]:
    """The voxel (z, y, x) the views go through: the high PTV's centre, else the dose maximum."""
    high = high_ptv(case)
    if high is not None:
        return tuple(int(round(v)) for v in np.argwhere(high.mask).mean(axis=0))
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dose)), dose.shape))


def _views(case: Case, centre: tuple[int, int, int]):
    """(title, fixed array axis, slicer, aspect) of the axial, coronal and sagittal planes through ``centre``."""
    sx, sy, sz = case.grid.spacing
    z, y, x = centre
    return (("axial", 0, (z, slice(None), slice(None)), sy / sx),
            ("coronal", 1, (slice(None), y, slice(None)), sz / sx),
            ("sagittal", 2, (slice(None), slice(None), x), sz / sy))


def outlined_structures(case: Case) -> dict[str, tuple]:
    """Every non-empty target and OAR → its colour, the one its DVH has (:func:`structure_colours` over the
    case's non-empty structures, in the DVHs' order)."""
    colours = structure_colours([n for n, s in case.structures.items() if s.mask.any()])
    return {n: colours[n] for n, s in case.structures.items() if s.role in ("ptv", "oar") and s.mask.any()}


def _draw_planes(axes_row, case: Case, volume: np.ndarray, centre: tuple[int, int, int], cmap: str, label: str,
                 scale: tuple[float, float], title_suffix: str = "", gamma: float = 1.0) -> None:
    """Three planes through ``centre`` of ``volume`` ((z, y, x), unit in ``label``) washed in ``cmap``
    over the CT on ``axes_row`` (three axes): one colour scale (0 to ``scale[0]``, a power law of
    ``gamma`` < 1 spreading its low end), washed above ``scale[1]``; the targets and OARs outlined, the
    planes marked."""
    from matplotlib.colors import PowerNorm

    top, floor = scale
    norm = PowerNorm(gamma, vmin=0, vmax=top)
    outlines = outlined_structures(case)
    image = None
    for axes, (title, fixed, index, aspect) in zip(axes_row, _views(case, centre), strict=True):
        origin = "upper" if title == "axial" else "lower"
        axes.imshow(case.ct[index], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], aspect=aspect, origin=origin)
        wash = np.ma.masked_less(volume[index], floor)
        image = axes.imshow(wash, cmap=cmap, norm=norm, alpha=0.45 if gamma == 1.0 else 0.65, aspect=aspect,
                            origin=origin)
        for name, colour in outlines.items():
            plane = case.structures[name].mask[index]
            if plane.any():
                axes.contour(plane.astype(float), levels=[0.5], colors=[colour], linewidths=0.9, origin=origin)
        mark_plane(axes, case.grid, fixed, volume[index].shape, origin)
        axes.set_title(f"{title}{title_suffix} at {plane_position(case.grid, centre, fixed)}", fontsize=9)
        axes.set_axis_off()
    axes_row[-1].figure.colorbar(image, ax=list(axes_row), label=label, shrink=0.8,
                                 extend="max" if top < float(volume.max()) else "neither")


def draw_dose_views(axes_row, case: Case, dose_gy: np.ndarray) -> None:
    """Three dose-on-CT planes on ``axes_row`` (three axes) with a shared dose colour scale."""
    top = max(float(dose_gy.max()), 1e-6)
    _draw_planes(axes_row, case, dose_gy, _centre(case, dose_gy), "jet", "Dose (Gy)", (top, 0.05 * top))


def uncertainty_scale(case: Case, std_gy: np.ndarray) -> tuple[float, float]:
    """(top, floor) of the uncertainty's colour scale: the 99th percentile of ``std_gy`` inside the body
    (everywhere without one), and 2 % of it."""
    inside = std_gy[case.body.mask] if case.body is not None and case.body.mask.any() else std_gy.ravel()
    top = max(float(np.percentile(inside, 99)), 1e-6)
    return top, 0.02 * top


def draw_uncertainty_views(axes_row, case: Case, std_gy: np.ndarray, dose_gy: np.ndarray) -> None:
    """The planes of :func:`draw_dose_views` (through the same centre, found from ``dose_gy``) of the
    per-voxel standard deviation ``std_gy`` (Gy) on its own scale (:func:`uncertainty_scale`)."""
    _draw_planes(axes_row, case, std_gy, _centre(case, dose_gy), "magma", "Std over candidates (Gy)",
                 uncertainty_scale(case, std_gy), " uncertainty", gamma=UNCERTAINTY_GAMMA)


def _structure_legend(figure, case: Case) -> None:
    """A legend of the outlines under the figure."""
    from matplotlib.lines import Line2D

    outlines = outlined_structures(case)
    handles = [Line2D([], [], color=c, linewidth=2, label=name) for name, c in outlines.items()]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize="small",
                      frameon=False, title="outlines", title_fontsize="small")


def case_report_figure(case: Case, dose_gy: np.ndarray, dvhs_pred: Mapping[str, DVH],
                       dvhs_ref: Mapping[str, DVH] | None = None, score: ScoreReport | None = None,
                       score_ref: ScoreReport | None = None, template: dict | None = None, title: str = "",
                       std_gy: np.ndarray | None = None, model: ModelDescription | None = None):
    """The report figure (see the module docstring); ``std_gy`` (Gy, the dose's grid) adds the row of
    uncertainty planes; ``model`` is named in the title."""
    rows = 2 if std_gy is None else 3
    figure = new_figure(16.0, 11.0 if std_gy is None else 15.0)
    grid = figure.add_gridspec(rows, 6, height_ratios=(1.0, 1.25) if std_gy is None else (1.0, 1.0, 1.25))
    draw_dose_views([figure.add_subplot(grid[0, 2 * i : 2 * i + 2]) for i in range(3)], case, dose_gy)
    if std_gy is not None:
        draw_uncertainty_views([figure.add_subplot(grid[1, 2 * i : 2 * i + 2]) for i in range(3)], case, std_gy, dose_gy)
    dvh_axes = figure.add_subplot(grid[-1, :2] if score is not None else grid[-1, :])
    draw_dvhs(dvh_axes, dvhs_pred, dvhs_ref, title="Cumulative DVHs", labels=("pred.", "case"))
    if score is not None:
        draw_scorecard(figure.add_subplot(grid[-1, 2:]), score, score_ref, template=template,
                       labels=("pred.", "case"))
    _structure_legend(figure, case)
    by = "" if model is None else (" by the demo model" if model.demo else f" by {model.kind} {model.version} "
                                                                          f"({model.folder.name})")
    figure.suptitle(title or f"{case.case_id}: predicted dose{by}", fontsize=12)
    if model is not None and model.demo:
        figure.supxlabel(DEMO_WARNING, color="red", fontsize=11, fontweight="bold")
    return figure


def plot_case_report(path: str | PathLike, case: Case, dose_gy: np.ndarray, dvhs_pred: Mapping[str, DVH],
                     dvhs_ref: Mapping[str, DVH] | None = None, score: ScoreReport | None = None,
                     score_ref: ScoreReport | None = None, template: dict | None = None, title: str = "",
                     std_gy: np.ndarray | None = None, model: ModelDescription | None = None) -> Path:
    """Write :func:`case_report_figure` to ``path`` (PNG/SVG/PDF, atomically)."""
    figure = case_report_figure(case, dose_gy, dvhs_pred, dvhs_ref, score, score_ref, template, title, std_gy, model)
    return save_figure(figure, path)
