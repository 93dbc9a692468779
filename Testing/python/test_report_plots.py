"""Report figures: the DVH plot and the scorecard table (files, Figure content), the CLI ``--plot`` options,
and the clear error when matplotlib is missing."""

import json
import struct
import sys

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from phantoms import make_phantom_case

from dosediffusion.cli.main import main
from dosediffusion.errors import InputError
from dosediffusion.io.load import load_case
from dosediffusion.io.volume_sidecar import write_volume
from dosediffusion.metrics.dose_metrics import case_dvhs
from dosediffusion.metrics.scorecard import load_template, score_case
from dosediffusion.report import plots
from dosediffusion.report.plots import DPI, RESULT_COLOURS, plot_dvhs, plot_scorecard

HEAD_NECK = "head_neck_sib_70_63_56"


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels of a PNG file; fails unless it starts with the PNG signature and IHDR."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def figure_pixels(figure) -> tuple[int, int]:
    return tuple(int(v) for v in figure.bbox.size)


def table_text(figure) -> list[list[str]]:
    """The scorecard table's cell texts, header row first."""
    cells = figure.axes[0].tables[0].get_celld()
    n_rows, n_cols = max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1
    return [[cells[r, c].get_text().get_text() for c in range(n_cols)] for r in range(n_rows)]


def cell_colour(figure, row: int, col: int) -> str:
    return to_hex(figure.axes[0].tables[0].get_celld()[row, col].get_facecolor())


@pytest.fixture(scope="module")
def phantom():
    case, _ = make_phantom_case()
    return case


@pytest.fixture(scope="module")
def dvhs(phantom):
    """(predicted, reference) DVHs of the phantom: its dose × 1.1 against its dose."""
    return case_dvhs(phantom, phantom.dose * 1.1), case_dvhs(phantom)


@pytest.fixture(scope="module")
def reports(phantom):
    """(report, reference report, template) of the phantom with the head-and-neck template (many entries missing)."""
    template = load_template(HEAD_NECK)
    return score_case(phantom, template, phantom.dose * 1.1), score_case(phantom, template), template


# --- DVH plot ---------------------------------------------------------------------------------------------------------


def test_dvh_plot_is_a_png_of_the_figure_size(dvhs, tmp_path):
    figure = plot_dvhs(*dvhs, tmp_path / "dvh.png")
    assert png_size(tmp_path / "dvh.png") == figure_pixels(figure) == (8 * DPI, 5 * DPI)
    assert [p.name for p in tmp_path.iterdir()] == ["dvh.png"]  # no temporary file left


def test_dvh_lines_colours_styles_and_data(dvhs, tmp_path):
    pred, ref = dvhs
    axes = plot_dvhs(pred, ref, tmp_path / "dvh.png", title="phantom").axes[0]
    assert len(axes.lines) == 2 * len(pred) == 8
    lines = {line.get_label(): line for line in axes.lines}
    colours = set()
    for name in pred:
        solid, dashed = lines[name], lines[f"{name} (reference)"]
        assert (solid.get_linestyle(), dashed.get_linestyle()) == ("-", "--")
        assert solid.get_color() == dashed.get_color()
        colours.add(solid.get_color())
        for line, dvh in ((solid, pred[name]), (dashed, ref[name])):
            dose_gy, volume_percent = dvh.cumulative(0.1)
            np.testing.assert_array_equal(line.get_xdata(), dose_gy)
            np.testing.assert_array_equal(line.get_ydata(), volume_percent)
            assert line.get_xdata()[0] == 0.0 and line.get_ydata()[0] == pytest.approx(100.0)
    assert len(colours) == len(pred)  # one colour per structure
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == ("Dose (Gy)", "Volume (%)", "phantom")
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == [*pred, "predicted", "reference"]


def test_dvh_plot_without_reference_and_in_other_formats(dvhs, tmp_path):
    pred, _ = dvhs
    figure = plot_dvhs(pred, None, tmp_path / "dvh.svg")
    axes = figure.axes[0]
    assert len(axes.lines) == len(pred) and {line.get_linestyle() for line in axes.lines} == {"-"}
    assert [t.get_text() for t in axes.get_legend().get_texts()] == list(pred)
    assert b"<svg" in (tmp_path / "dvh.svg").read_bytes()[:1000]
    plot_dvhs(pred, None, tmp_path / "dvh.pdf")
    assert (tmp_path / "dvh.pdf").read_bytes().startswith(b"%PDF")


def test_bad_plot_requests_are_input_errors(dvhs, tmp_path):
    with pytest.raises(InputError, match="unsupported plot file type '.jpg'"):
        plot_dvhs(dvhs[0], None, tmp_path / "dvh.jpg")
    with pytest.raises(InputError, match="no DVH to plot"):
        plot_dvhs({}, None, tmp_path / "dvh.png")
    assert not any(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_file(dvhs, tmp_path, monkeypatch):
    path = tmp_path / "dvh.png"
    path.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_dvhs(dvhs[0], None, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["dvh.png"]


# --- scorecard table --------------------------------------------------------------------------------------------------


def test_scorecard_table_holds_the_report(reports, tmp_path):
    report, _, template = reports
    figure = plot_scorecard(report, tmp_path / "score.png", template=template)
    assert png_size(tmp_path / "score.png") == figure_pixels(figure)
    rows = table_text(figure)
    assert rows[0] == ["Structure", "Metric", "Value", "Score / max", "Result"]
    body, total = rows[1:-1], rows[-1]
    assert len(body) == len(report.entries)
    for i, (row, entry) in enumerate(zip(body, report.entries, strict=True)):
        assert row[0] == entry.structure
        if entry.score is None:
            assert row[2] == row[4] == "not evaluable" and row[3] == f"– / {entry.max_score:g}"
            assert cell_colour(figure, i + 1, 4) == RESULT_COLOURS["not evaluable"]
        else:
            assert row[2] == f"{entry.value:.2f} {entry.unit}" and row[3] == f"{entry.score:.2f} / {entry.max_score:g}"
            assert row[4] == entry.verdict
    assert body[0][1] == "D95% ≥ 95 %Rx" and body[0][2].endswith("%Rx")  # what was measured, with its goal
    assert total == ["Total", "", "", f"{report.total:.2f} / {report.max_total:g}", ""]
    assert "not evaluable" in figure.axes[0].get_title()


def test_scorecard_pass_and_fail_cells_are_coloured(reports, tmp_path):
    report, _, _ = reports
    figure = plot_scorecard(report, tmp_path / "score.png")
    results = [row[4] for row in table_text(figure)[1:-1]]
    assert {"pass", "fail", "FAIL (hard)", "not evaluable"} <= set(results)  # the phantom at 110 % has them all
    assert len({RESULT_COLOURS[k] for k in ("pass", "fail", "FAIL (hard)", "not evaluable")}) == 4
    for i, text in enumerate(results):
        if text:
            assert cell_colour(figure, i + 1, 4) == RESULT_COLOURS[text]
    assert table_text(figure)[1][1] == "D95% ≥ 95 %Rx"  # the report itself says what it measured


def test_scorecard_with_reference_shows_both_and_the_difference(reports, tmp_path):
    report, reference, template = reports
    figure = plot_scorecard(report, tmp_path / "score.png", reference, template=template, labels=("AI", "clinical"))
    rows = table_text(figure)
    assert rows[0] == ["Structure", "Metric", "Value\n(AI)", "Score\n(AI)", "Result\n(AI)", "Value\n(clinical)",
                       "Score\n(clinical)", "Result\n(clinical)", "Δ score"]
    for row, mine, theirs in zip(rows[1:-1], report.entries, reference.entries, strict=True):
        if mine.score is None:
            assert row[5] == "not evaluable" and row[8] == ""
        else:
            assert row[5] == f"{theirs.value:.2f} {theirs.unit}"
            assert row[8] == f"{mine.score - theirs.score:+.2f}"
    assert rows[-1][3] == f"{report.total:.2f} / {report.max_total:g}"
    assert rows[-1][6] == f"{reference.total:.2f} / {reference.max_total:g}"
    assert rows[-1][8] == f"{report.total - reference.total:+.2f}"


def test_scorecards_of_different_templates_are_refused(phantom, reports, tmp_path):
    other = score_case(phantom, load_template("lung_60"))
    with pytest.raises(InputError, match="do not have the same entries"):
        plot_scorecard(reports[0], tmp_path / "score.png", other)


# --- without matplotlib -----------------------------------------------------------------------------------------------


def test_missing_matplotlib_names_the_extra(dvhs, reports, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InputError, match=r"pip install dosediffusion\[report\]"):
        plot_dvhs(dvhs[0], None, tmp_path / "dvh.png")
    with pytest.raises(InputError, match=r"pip install dosediffusion\[report\]"):
        plot_scorecard(reports[0], tmp_path / "score.png")
    assert main(["dvh", str(tmp_path / "no-case-needed"), "--plot", str(tmp_path / "dvh.png")]) == 2
    assert "pip install dosediffusion[report]" in capsys.readouterr().err  # before the case is even read
    assert not any(tmp_path.iterdir())


# --- command line -----------------------------------------------------------------------------------------------------


@pytest.fixture()
def captured(monkeypatch):
    """The figures the CLI modules draw, by function name."""
    import dosediffusion.cli.dvh
    import dosediffusion.cli.evaluate
    import dosediffusion.cli.score

    figures: dict[str, list] = {"plot_dvhs": [], "plot_scorecard": []}
    for module in (dosediffusion.cli.dvh, dosediffusion.cli.score, dosediffusion.cli.evaluate):
        for name in figures:
            if hasattr(module, name):
                original = getattr(plots, name)

                def wrapper(*args, _original=original, _name=name, **kwargs):
                    figures[_name].append(_original(*args, **kwargs))
                    return figures[_name][-1]

                monkeypatch.setattr(module, name, wrapper)
    return figures


def test_cli_dvh_plot_on_the_phantom_dicom(phantom_dicom, tmp_path, captured, capsys):
    folder = phantom_dicom[0]
    assert main(["dvh", str(folder), "--plot", str(tmp_path / "dvh.png"), "--json"]) == 0
    out, err = capsys.readouterr()
    structures = json.loads(out)["structures"]  # stdout stays pure JSON
    assert f"wrote {tmp_path / 'dvh.png'}" in err
    assert png_size(tmp_path / "dvh.png") == (8 * DPI, 5 * DPI)
    (figure,) = captured["plot_dvhs"]
    assert len(figure.axes[0].lines) == len(structures) == 4


def test_cli_dvh_plot_with_another_dose_draws_the_case_dose_as_reference(phantom_dicom, tmp_path, captured):
    folder = phantom_dicom[0]
    case = load_case(folder)
    write_volume(case.dose * 0.9, case.grid, tmp_path / "scaled.nrrd")
    assert main(["dvh", str(folder), "--dose", str(tmp_path / "scaled.nrrd"), "--plot", str(tmp_path / "dvh.png")]) == 0
    axes = captured["plot_dvhs"][0].axes[0]
    assert len(axes.lines) == 2 * 4
    assert [line.get_linestyle() for line in axes.lines] == ["-", "--"] * 4
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend[-2:] == ["scaled.nrrd", "case dose"]
    ptv, ptv_ref = axes.lines[0], axes.lines[1]
    assert ptv.get_xdata()[-1] == pytest.approx(0.9 * ptv_ref.get_xdata()[-1], abs=0.2)


def test_cli_score_plot_on_the_phantom_dicom(phantom_dicom, tmp_path, captured, capsys):
    folder = phantom_dicom[0]
    assert main(["score", str(folder), "--scorecard", HEAD_NECK, "--plot", str(tmp_path / "score.png")]) == 0
    assert "wrote" in capsys.readouterr().err
    (figure,) = captured["plot_scorecard"]
    assert png_size(tmp_path / "score.png") == figure_pixels(figure)
    rows = table_text(figure)
    assert len(rows[0]) == 5 and any(row[2] == "not evaluable" for row in rows)


def test_cli_evaluate_plots(phantom_dicom, tmp_path, captured, capsys):
    folder, _, _, paths = phantom_dicom
    case = load_case(folder)
    write_volume(case.dose, case.grid, tmp_path / "pred.nrrd")  # identical: a fast gamma
    assert main(["evaluate", "--pred", str(tmp_path / "pred.nrrd"), "--ref", str(paths["rtdose"]),
                 "--case", str(folder),
                 "--scorecard", "lung_60", "--json", "--plot", str(tmp_path / "dvh.png"),
                 "--scorecard-plot", str(tmp_path / "score.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert png_size(tmp_path / "dvh.png") == (8 * DPI, 5 * DPI)
    assert len(captured["plot_dvhs"][0].axes[0].lines) == 2 * 4
    rows = table_text(captured["plot_scorecard"][0])
    assert len(rows[0]) == 9 and rows[-1][8] == f"{result['scorecard']['diff']:+.2f}"
    png_size(tmp_path / "score.png")


def test_cli_evaluate_scorecard_plot_needs_a_scorecard(tmp_path, capsys):
    assert main(["evaluate", "--pred", "p.nrrd", "--ref", "r.nrrd", "--case", "c",
                 "--scorecard-plot", str(tmp_path / "s.png")]) == 2
    assert "--scorecard-plot needs --scorecard" in capsys.readouterr().err


def test_plots_leave_pyplot_and_the_backend_alone(tmp_path):
    """3D Slicer has its own matplotlib state: drawing must neither import pyplot nor switch the backend."""
    import subprocess

    script = (
        "import sys, numpy as np, matplotlib\n"
        "backend = dict.__getitem__(matplotlib.rcParams, 'backend')  # get_backend() would import pyplot\n"
        "from dosediffusion.metrics.dvh import DVH\n"
        "from dosediffusion.report.plots import plot_dvhs\n"
        f"plot_dvhs({{'A': DVH(np.array([2.0, 1.0]), np.array([1.0, 1.0]))}}, None, {str(tmp_path / 'a.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') is backend\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "a.png") == (8 * DPI, 5 * DPI)
