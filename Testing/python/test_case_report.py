"""The prediction report figure and the choice of a shipped scorecard."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import make_phantom_case

from dosediffusion.case import Prescription, Structure
from dosediffusion.metrics.dose_metrics import case_dvhs
from dosediffusion.metrics.scorecard import load_template, score_case
from dosediffusion.metrics.scorecard_choice import suggest_template
from dosediffusion.report.case_report import case_report_figure


def test_report_shows_three_views_dvhs_and_scorecard():
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    predicted = case.dose * np.float32(0.9)
    template = load_template("lung_60")
    figure = case_report_figure(case, predicted, case_dvhs(case, predicted), case_dvhs(case),
                                score_case(case, template, predicted), score_case(case, template), template)
    views = [a for a in figure.axes if a.get_images()]
    assert [a.get_title().split(" ")[0] for a in views] == ["axial", "coronal", "sagittal"]
    centre = tuple(int(round(v)) for v in np.argwhere(case.structures["PTV_60"].mask).mean(axis=0))
    axial_dose = views[0].get_images()[1].get_array()
    assert np.allclose(axial_dose.filled(0), np.where(predicted[centre[0]] >= 0.05 * predicted.max(), predicted[centre[0]], 0))
    dvh_axes = next(a for a in figure.axes if a.get_xlabel() == "Dose (Gy)")
    assert len(dvh_axes.get_lines()) == 2 * len(case_dvhs(case))
    assert any(a.tables for a in figure.axes)
    assert not any("uncertainty" in a.get_title() for a in figure.axes)


def test_report_adds_a_row_of_uncertainty_planes_when_given_the_std():
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    predicted = case.dose * np.float32(0.9)
    std = (case.dose * np.float32(0.05) + np.linspace(0, 1, case.dose.size, dtype=np.float32).reshape(case.dose.shape)
           * case.body.mask)
    figure = case_report_figure(case, predicted, case_dvhs(case, predicted), std_gy=std)
    views = [a for a in figure.axes if a.get_images()]
    assert [a.get_title().split(" ")[:2] for a in views[3:]] == [["axial", "uncertainty"], ["coronal", "uncertainty"],
                                                                 ["sagittal", "uncertainty"]]
    assert all(a.get_position().y0 < d.get_position().y0 for a, d in zip(views[3:], views[:3], strict=True))
    centre = tuple(int(round(v)) for v in np.argwhere(case.structures["PTV_60"].mask).mean(axis=0))
    wash = views[3].get_images()[1]
    top = float(np.percentile(std[case.body.mask], 99))  # the scale ends at the body's 99th percentile
    assert wash.get_cmap().name == "magma" and wash.get_clim() == (0, pytest.approx(top))
    assert np.allclose(wash.get_array().filled(0), np.where(std[centre[0]] >= 0.02 * top, std[centre[0]], 0))
    assert [a.get_ylabel() for a in figure.axes if a.get_ylabel().startswith("Std")] == ["Std over candidates (Gy)"]
    dvh_axes = next(a for a in figure.axes if a.get_xlabel() == "Dose (Gy)")
    assert dvh_axes.get_position().y1 < min(a.get_position().y0 for a in views)  # the DVHs under both rows


def test_suggested_scorecard_follows_the_prescription():
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    assert suggest_template(case) == "lung_60"
    mask = case.structures["PTV_60"].mask
    sib = dict(case.structures)
    sib.pop("PTV_60")
    for rx in (70.0, 63.0, 56.0):
        sib[f"PTV_{rx:g}"] = Structure(f"PTV_{rx:g}", mask, "ptv", rx)
    hn = type(case)(**{**case.__dict__, "structures": sib, "prescription": Prescription([70.0, 63.0, 56.0], 35)})
    assert suggest_template(hn) == "head_neck_sib_70_63_56"
    low = type(case)(**{**case.__dict__, "structures": {**case.structures, "PTV_60": Structure("PTV_60", mask, "ptv", 40.0)},
                        "prescription": Prescription([40.0], 15)})
    assert suggest_template(low) is None


def test_suggested_scorecard_follows_the_anatomy():
    """The bundled demo case: a thorax (lungs, heart, cord, oesophagus) with PTVs of 66/59/53 Gy gets the
    lung template, though its three levels are as many as the head-and-neck template's."""
    from dosediffusion.io.load import load_case
    from dosediffusion.resources import resource_path

    case = load_case(resource_path("DemoCase"))
    assert case.prescription.levels_gy == [66.0, 59.0, 53.0] and "Heart" in case.structures
    assert suggest_template(case) == "lung_60"


def test_report_places_each_plane_outlines_every_structure_and_names_the_model(tmp_path):
    from dosediffusion.prediction.model_folder import demo_model_folder, describe_model_folder

    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    template = load_template("lung_60")
    figure = case_report_figure(case, case.dose, case_dvhs(case), score=score_case(case, template), template=template,
                                model=describe_model_folder(demo_model_folder()))
    views = [a for a in figure.axes if a.get_images()]
    letters = [{t.get_text() for t in a.texts if len(t.get_text()) == 1} for a in views]
    assert letters == [{"R", "L", "A", "P"}, {"R", "L", "S", "I"}, {"A", "P", "S", "I"}]  # HFS
    assert all(any(t.get_text() == "5 cm" for t in a.texts) for a in views)
    centre = tuple(int(round(v)) for v in np.argwhere(case.structures["PTV_60"].mask).mean(axis=0))
    z_mm = case.grid.index_to_physical(np.array(centre, float))[2]
    assert views[0].get_title() == f"axial at z = {z_mm:.1f} mm"
    assert views[1].get_title().startswith("coronal at y = ") and views[2].get_title().startswith("sagittal at x = ")
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == [n for n, s in case.structures.items() if s.role in ("ptv", "oar")]
    assert len(views[0].collections) >= 2  # contours of the PTV and the cord on the axial plane
    assert "demo model" in figure.get_suptitle() and "not for clinical use" in figure._supxlabel.get_text()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    table = next(a for a in figure.axes if a.tables).tables[0]
    for (row, _), cell in table.get_celld().items():
        assert cell.get_text().get_window_extent(renderer).width <= cell.get_window_extent(renderer).width, row
    assert any("≥ 95 %Rx" in cell.get_text().get_text() for cell in table.get_celld().values())


def test_the_uncertainty_scale_shows_a_small_std_beside_a_large_one():
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    std = np.where(case.body.mask, 1.8, 0.0).astype(np.float32)
    std[case.structures["PTV_60"].mask] = 10.0  # the edge of the field: a large std in a small region
    figure = case_report_figure(case, case.dose, case_dvhs(case), std_gy=std)
    wash = [a for a in figure.axes if a.get_images()][3].get_images()[1]
    assert wash.norm(1.8) > 0.3  # a visible colour, not the bottom of the scale
