"""Figures for reports: cumulative DVHs and scorecard tables (needs the optional ``report`` extra, matplotlib)."""

from dosediffusion.report.plots import (
    check_plot_path,
    dvh_figure,
    plot_dvhs,
    plot_scorecard,
    require_matplotlib,
    scorecard_figure,
)

__all__ = ["check_plot_path", "dvh_figure", "plot_dvhs", "plot_scorecard", "require_matplotlib", "scorecard_figure"]
