"""DVH plots and scorecard tables as image files (PNG; SVG and PDF by the file's extension).

Figures are :class:`matplotlib.figure.Figure` objects drawn on an Agg canvas: no ``pyplot``, no
global backend or state is touched, so this also runs inside 3D Slicer. matplotlib is optional
(``pip install dosediffusion[report]``) and imported only when a figure is made. Every ``plot_*``
function writes its file atomically and returns the figure, for tests and further drawing.

Units: dose in Gy, relative volume in %, figure sizes in inches at :data:`DPI` dots per inch.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

from dosediffusion.errors import InputError
from dosediffusion.io.atomic import atomic_write
from dosediffusion.io.output_place import check_output_place
from dosediffusion.metrics.dvh import DVH
from dosediffusion.metrics.scorecard import EntryResult, ScoreReport, goal_label, metric_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
DVH_SIZE_IN = (8.0, 5.0)
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
INSTALL_HINT = "pip install dosediffusion[report]"
RESULT_COLOURS = {"pass": "#c8e6c9", "fail": "#ffe0b2", "FAIL (hard)": "#ef9a9a", "not evaluable": "#e0e0e0"}
HEADER_COLOUR = "#d6dbe4"
ROW_HEIGHT_IN = 0.28


def require_matplotlib() -> None:
    """Raise an :class:`InputError` naming the ``report`` extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise InputError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from None


def new_figure(width_in: float, height_in: float) -> Figure:
    """An empty figure of ``width_in`` × ``height_in`` inches on its own Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _image_format(path: Path) -> str:
    """The image format of ``path`` from its extension (``.png``, ``.svg``, ``.pdf``)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        kind = path.suffix or "(none)"
        raise InputError(f"unsupported plot file type {kind!r}; use one of {', '.join(FORMATS)}", path)
    return fmt


def check_plot_path(path: str | PathLike) -> Path:
    """``path`` as a Path if a figure can be written there: matplotlib importable, a known extension.

    Commands call this before any long computation, so that a missing extra or a place that cannot be
    written fails at once.
    """
    require_matplotlib()
    path = Path(path)
    _image_format(path)
    return check_output_place(path, folder=False, option="the figure")


def save_figure(figure: Figure, path: str | PathLike) -> Path:
    """Write ``figure`` to ``path`` atomically at :data:`DPI`; the format follows the extension."""
    path = Path(path)
    fmt = _image_format(path)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=DPI))


# --- DVH plot -------------------------------------------------------------------------------------------------------


def structure_colours(names: list[str]) -> dict[str, tuple]:
    """One colour per structure name: tab10, or tab20 beyond ten structures (cycled beyond twenty)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _draw_dvh(axes, dvh: DVH, colour, linestyle: str, label: str, bin_width_gy: float) -> None:
    """One cumulative DVH: dose bin edges (Gy) against the volume receiving at least that dose (%)."""
    dose_gy, volume_percent = dvh.cumulative(bin_width_gy)
    axes.plot(dose_gy, volume_percent, color=colour, linestyle=linestyle, linewidth=1.5, label=label)


def _dvh_legend(axes, colours: dict[str, tuple], labels: tuple[str, str] | None) -> None:
    """Legend: one colour per structure, then (with a reference) the two line styles."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=2, label=name) for name, c in colours.items()]
    if labels is not None:
        handles += [Line2D([], [], color="black", linestyle="-", label=labels[0]),
                    Line2D([], [], color="black", linestyle="--", label=labels[1])]
    axes.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)


def draw_dvhs(
    axes,
    dvhs_pred: Mapping[str, DVH],
    dvhs_ref: Mapping[str, DVH] | None = None,
    *,
    title: str = "Cumulative dose-volume histograms",
    labels: tuple[str, str] = ("predicted", "reference"),
    bin_width_gy: float = 0.1,
) -> None:
    """Cumulative DVHs (dose Gy, volume %) of ``dvhs_pred`` (solid) and ``dvhs_ref`` (dashed, same colours)
    on ``axes``.

    Lines are drawn structure by structure in the order of ``dvhs_pred`` then the reference's own
    structures; each structure's predicted line is labelled with its name, the reference line
    ``"<name> (<labels[1]>)"``. ``bin_width_gy`` is the dose step of the curves.
    """
    dvhs_ref = dvhs_ref or {}
    names = list(dvhs_pred) + [n for n in dvhs_ref if n not in dvhs_pred]
    if not names:
        raise InputError("no DVH to plot: no structure with a dose")
    if bin_width_gy <= 0:
        raise InputError(f"DVH bin width must be positive, got {bin_width_gy} Gy")
    colours = structure_colours(names)
    for name in names:
        if name in dvhs_pred:
            _draw_dvh(axes, dvhs_pred[name], colours[name], "-", name, bin_width_gy)
        if name in dvhs_ref:
            _draw_dvh(axes, dvhs_ref[name], colours[name], "--", f"{name} ({labels[1]})", bin_width_gy)
    max_gy = max(d.max_gy for d in [*dvhs_pred.values(), *dvhs_ref.values()])
    axes.set(xlabel="Dose (Gy)", ylabel="Volume (%)", title=title, xlim=(0, max(max_gy * 1.05, 1.0)), ylim=(0, 105))
    axes.grid(True, color="#dddddd", linewidth=0.6)
    _dvh_legend(axes, colours, labels if dvhs_ref else None)


def dvh_figure(
    dvhs_pred: Mapping[str, DVH],
    dvhs_ref: Mapping[str, DVH] | None = None,
    *,
    title: str = "Cumulative dose-volume histograms",
    labels: tuple[str, str] = ("predicted", "reference"),
    bin_width_gy: float = 0.1,
) -> Figure:
    """A figure with :func:`draw_dvhs` of the DVHs."""
    figure = new_figure(*DVH_SIZE_IN)
    draw_dvhs(figure.add_subplot(), dvhs_pred, dvhs_ref, title=title, labels=labels, bin_width_gy=bin_width_gy)
    return figure


def plot_dvhs(
    dvhs_pred: Mapping[str, DVH],
    dvhs_ref: Mapping[str, DVH] | None,
    path: str | PathLike,
    title: str = "Cumulative dose-volume histograms",
    *,
    labels: tuple[str, str] = ("predicted", "reference"),
    bin_width_gy: float = 0.1,
) -> Figure:
    """Write the :func:`dvh_figure` of the DVHs to ``path`` (PNG/SVG/PDF, atomically); return the figure."""
    _image_format(Path(path))
    figure = dvh_figure(dvhs_pred, dvhs_ref, title=title, labels=labels, bin_width_gy=bin_width_gy)
    save_figure(figure, path)
    return figure


# --- scorecard table ------------------------------------------------------------------------------------------------


def _value_text(entry: EntryResult) -> str:
    return "not evaluable" if entry.value is None else f"{entry.value:.2f} {entry.unit}"


def _score_text(entry: EntryResult) -> str:
    return f"– / {entry.max_score:g}" if entry.score is None else f"{entry.score:.2f} / {entry.max_score:g}"


def _difference_text(entry: EntryResult, reference: EntryResult) -> str:
    """Score difference (this − reference) of one entry; empty where either is not evaluable."""
    if entry.score is None or reference.score is None:
        return ""
    return f"{entry.score - reference.score:+.2f}"


def _check_pair(report: ScoreReport, reference: ScoreReport) -> None:
    """Both reports must come from the same template, entry by entry."""
    same = report.template == reference.template and len(report.entries) == len(reference.entries)
    if not same or any(a.metric != b.metric for a, b in zip(report.entries, reference.entries, strict=True)):
        raise InputError(f"scorecards {report.template!r} and {reference.template!r} do not have the same entries")


def scorecard_columns(labels: tuple[str, str] | None) -> list[str]:
    """Column headers of the scorecard table; with ``labels`` (this, reference) the comparison columns."""
    if labels is None:
        return ["Structure", "Metric", "Value", "Score / max", "Result"]
    this, ref = labels  # on two lines: the nine columns are narrow
    return ["Structure", "Metric", f"Value\n({this})", f"Score\n({this})", f"Result\n({this})",
            f"Value\n({ref})", f"Score\n({ref})", f"Result\n({ref})", "Δ score"]


def scorecard_rows(
    report: ScoreReport, reference: ScoreReport | None = None, template: dict | None = None
) -> list[list[str]]:
    """The table's body rows, one per entry, then the total row (score sums over evaluable entries)."""
    entries = template["entries"] if template and len(template["entries"]) == len(report.entries) else None
    rows = []
    for i, e in enumerate(report.entries):
        metric = e.measured if e.label or not entries else f"{metric_label(entries[i])} {goal_label(entries[i])}".strip()
        row = [e.structure, metric, _value_text(e), _score_text(e), e.verdict]
        if reference is not None:
            r = reference.entries[i]
            row += [_value_text(r), _score_text(r), r.verdict, _difference_text(e, r)]
        rows.append(row)
    total = ["Total", "", "", f"{report.total:.2f} / {report.max_total:g}", ""]
    if reference is not None:
        total += ["", f"{reference.total:.2f} / {reference.max_total:g}", "", f"{report.total - reference.total:+.2f}"]
    rows.append(total)
    return rows


def _style_table(table, rows: list[list[str]], columns: list[str]) -> None:
    """Header and total row shaded and bold, result cells coloured by pass/fail, not evaluable grey."""
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns))))  # each column as wide as its longest cell
    for (row, col), cell in table.get_celld().items():
        cell.set_edgecolor("#b0b0b0")
        if row == 0 or row == len(rows):
            cell.set_facecolor(HEADER_COLOUR)
            cell.get_text().set_fontweight("bold")
        elif columns[col].startswith("Result") or rows[row - 1][col] == "not evaluable":
            cell.set_facecolor(RESULT_COLOURS.get(rows[row - 1][col], "white"))


def draw_scorecard(
    axes,
    report: ScoreReport,
    reference_report: ScoreReport | None = None,
    *,
    template: dict | None = None,
    labels: tuple[str, str] = ("predicted", "reference"),
    title: str | None = None,
) -> None:
    """A table of ``report`` on ``axes``: structure, metric, value (its unit: Gy, %, %Rx or cc), score /
    max score, pass/fail (coloured) and the total; with ``reference_report`` (same template) its
    value, score and result beside, and the score difference (report − reference). The metric column
    says what was measured and its goal (``D95% ≥ 95 %Rx``); for an older report without them,
    ``template`` (the one scored) gives them.
    """
    if reference_report is not None:
        _check_pair(report, reference_report)
    columns = scorecard_columns(labels if reference_report is not None else None)
    rows = scorecard_rows(report, reference_report, template)
    axes.set_axis_off()
    table = axes.table(cellText=rows, colLabels=columns, cellLoc="center", bbox=(0.0, 0.0, 1.0, 1.0))
    _style_table(table, rows, columns)
    not_evaluable = len(report.not_evaluable)
    suffix = f"  ({not_evaluable} not evaluable: structure missing)" if not_evaluable else ""
    default_title = f"Scorecard {report.template}: {report.total:.2f} of {report.max_total:g}{suffix}"
    axes.set_title(title or default_title, fontsize=10)


def scorecard_figure(
    report: ScoreReport,
    reference_report: ScoreReport | None = None,
    *,
    template: dict | None = None,
    labels: tuple[str, str] = ("predicted", "reference"),
    title: str | None = None,
) -> Figure:
    """A figure with :func:`draw_scorecard` of ``report``, sized to its rows."""
    height = 0.9 + ROW_HEIGHT_IN * (len(report.entries) + 2)
    figure = new_figure(8.0 if reference_report is None else 13.0, height)
    draw_scorecard(figure.add_subplot(), report, reference_report, template=template, labels=labels, title=title)
    return figure


def plot_scorecard(
    report: ScoreReport,
    path: str | PathLike,
    reference_report: ScoreReport | None = None,
    *,
    template: dict | None = None,
    labels: tuple[str, str] = ("predicted", "reference"),
    title: str | None = None,
) -> Figure:
    """Write the :func:`scorecard_figure` of ``report`` to ``path`` (PNG/SVG/PDF, atomically); return the figure."""
    _image_format(Path(path))
    figure = scorecard_figure(report, reference_report, template=template, labels=labels, title=title)
    save_figure(figure, path)
    return figure
