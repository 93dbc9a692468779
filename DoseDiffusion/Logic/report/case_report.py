"""The one-page prediction report: axial, coronal and sagittal dose overlays on the CT, with several
candidates the same three planes of the per-voxel uncertainty (the candidates' standard deviation)
in a second row, the DVHs (predicted solid, the case's own dose dashed when it has one) and the
scorecard table.

Views are planes of the (z, y, x) arrays through the high PTV's centre (the dose maximum without
a PTV), drawn with the voxel spacing as aspect ratio; the dose ('jet') and the uncertainty
('magma', its own scale) are colour washes above 5 % of their maximum with the high PTV outlined in
white. Units: Gy, %.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np

from dosediffusion.case import Case
from dosediffusion.metrics.dvh import DVH
from dosediffusion.metrics.scorecard import ScoreReport
from dosediffusion.report.plots import draw_dvhs, draw_scorecard, new_figure, save_figure

CT_WINDOW_HU = (-500.0, 500.0)


def _centre(case: Case, dose: np.ndarray) -> tuple[int, int, int]:
    ptvs = sorted((s for s in case.with_role("ptv") if s.mask.any()), key=lambda s: -(s.prescription_gy or 0))
    if ptvs:
        return tuple(int(round(v)) for v in np.argwhere(ptvs[0].mask).mean(axis=0))
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dose)), dose.shape))


def _views(case: Case, centre: tuple[int, int, int]):
    """(title, slicer, aspect) of the axial, coronal and sagittal planes through ``centre``."""
    sx, sy, sz = case.grid.spacing
    z, y, x = centre
    return (("axial", (z, slice(None), slice(None)), sy / sx),
            ("coronal", (slice(None), y, slice(None)), sz / sx),
            ("sagittal", (slice(None), slice(None), x), sz / sy))


def _draw_planes(axes_row, case: Case, volume: np.ndarray, centre: tuple[int, int, int], cmap: str, label: str,
                 title_suffix: str = "") -> None:
    """Three planes through ``centre`` of ``volume`` ((z, y, x), unit in ``label``) washed in ``cmap``
    over the CT on ``axes_row`` (three axes), one colour scale from 0 to the volume's maximum."""
    top = max(float(volume.max()), 1e-6)
    ptvs = [s for s in case.with_role("ptv") if s.mask.any()]
    outline = max(ptvs, key=lambda s: s.prescription_gy or 0).mask if ptvs else None
    image = None
    for axes, (title, index, aspect) in zip(axes_row, _views(case, centre), strict=True):
        origin = "upper" if title == "axial" else "lower"
        axes.imshow(case.ct[index], cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1], aspect=aspect, origin=origin)
        wash = np.ma.masked_less(volume[index], 0.05 * top)
        image = axes.imshow(wash, cmap=cmap, vmin=0, vmax=top, alpha=0.45, aspect=aspect, origin=origin)
        if outline is not None and outline[index].any():
            axes.contour(outline[index].astype(float), levels=[0.5], colors="white", linewidths=0.8, origin=origin)
        axes.set_title(title + title_suffix + (f" (slice {centre})" if title == "axial" else ""), fontsize=9)
        axes.set_axis_off()
    axes_row[-1].figure.colorbar(image, ax=list(axes_row), label=label, shrink=0.8)


def draw_dose_views(axes_row, case: Case, dose_gy: np.ndarray) -> None:
    """Three dose-on-CT planes on ``axes_row`` (three axes) with a shared dose colour scale."""
    _draw_planes(axes_row, case, dose_gy, _centre(case, dose_gy), "jet", "Dose (Gy)")


def draw_uncertainty_views(axes_row, case: Case, std_gy: np.ndarray, dose_gy: np.ndarray) -> None:
    """The planes of :func:`draw_dose_views` (through the same centre, found from ``dose_gy``) of the
    per-voxel standard deviation ``std_gy`` (Gy) on its own colour scale."""
    _draw_planes(axes_row, case, std_gy, _centre(case, dose_gy), "magma", "Std over candidates (Gy)",
                 " uncertainty")


def case_report_figure(case: Case, dose_gy: np.ndarray, dvhs_pred: Mapping[str, DVH],
                       dvhs_ref: Mapping[str, DVH] | None = None, score: ScoreReport | None = None,
                       score_ref: ScoreReport | None = None, template: dict | None = None, title: str = "",
                       std_gy: np.ndarray | None = None):
    """The report figure (see the module docstring); ``std_gy`` (Gy, the dose's grid) adds the row of
    uncertainty planes."""
    rows = 2 if std_gy is None else 3
    figure = new_figure(16.0, 11.0 if std_gy is None else 15.0)
    grid = figure.add_gridspec(rows, 6, height_ratios=(1.0, 1.25) if std_gy is None else (1.0, 1.0, 1.25))
    draw_dose_views([figure.add_subplot(grid[0, 2 * i : 2 * i + 2]) for i in range(3)], case, dose_gy)
    if std_gy is not None:
        draw_uncertainty_views([figure.add_subplot(grid[1, 2 * i : 2 * i + 2]) for i in range(3)], case, std_gy, dose_gy)
    dvh_axes = figure.add_subplot(grid[-1, :3] if score is not None else grid[-1, :])
    draw_dvhs(dvh_axes, dvhs_pred, dvhs_ref, title="Cumulative DVHs", labels=("pred.", "case"))
    if score is not None:
        draw_scorecard(figure.add_subplot(grid[-1, 3:]), score, score_ref, template=template,
                       labels=("pred.", "case"))
    figure.suptitle(title or f"{case.case_id}: predicted dose", fontsize=12)
    return figure


def plot_case_report(path: str | PathLike, case: Case, dose_gy: np.ndarray, dvhs_pred: Mapping[str, DVH],
                     dvhs_ref: Mapping[str, DVH] | None = None, score: ScoreReport | None = None,
                     score_ref: ScoreReport | None = None, template: dict | None = None, title: str = "",
                     std_gy: np.ndarray | None = None) -> Path:
    """Write :func:`case_report_figure` to ``path`` (PNG/SVG/PDF, atomically)."""
    figure = case_report_figure(case, dose_gy, dvhs_pred, dvhs_ref, score, score_ref, template, title, std_gy)
    return save_figure(figure, path)
