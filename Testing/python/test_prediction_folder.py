"""A prediction folder read back (``dosediffusion.prediction.outputs.read_prediction``) is what
``write_prediction`` wrote: the dose and its uncertainty on the CT grid, the DVH table, the summary and
the scorecards; a folder missing a file, or holding an unreadable one, is refused naming that file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from phantoms import make_phantom_case

from dosediffusion.errors import InputError
from dosediffusion.geometry import Grid
from dosediffusion.io.volume_sidecar import write_volume
from dosediffusion.metrics.dose_metrics import case_dvhs
from dosediffusion.metrics.scorecard import score_case
from dosediffusion.model.case_prediction import DosePrediction
from dosediffusion.prediction.outputs import (
    DOSE_FILE,
    DOSE_STD_FILE,
    DVH_FILE,
    DVH_STEP_GY,
    SCORECARD_FILE,
    SUMMARY_FILE,
    read_prediction,
    write_prediction,
)
from dosediffusion.prediction.scorecard import choose_scorecard


def prediction_of(dose: np.ndarray, factors: tuple[float, ...]) -> DosePrediction:
    """A prediction whose candidates are ``dose`` scaled by ``factors`` (the first is the one chosen)."""
    candidates = [np.float32(f) * dose for f in factors]
    return DosePrediction(candidates[0], candidates, 0, None, {"model": 0.5}, 10.0, "rss", "cpu", "float32", 2, 0)


@pytest.fixture(scope="module")
def phantom():
    case, _ = make_phantom_case(spacing=(5.0, 5.0, 5.0))
    return case


def test_a_folder_reads_back_as_it_was_written(phantom, tmp_path):
    case = phantom
    prediction = prediction_of(0.9 * case.dose.astype(np.float32), (1.0, 1.1, 0.85))
    choice = choose_scorecard("lung_60", case)
    summary = write_prediction(case, prediction, tmp_path / "out", choice, report=False)
    read = read_prediction(tmp_path / "out")

    assert read.grid.same_as(case.grid)
    np.testing.assert_array_equal(read.dose_gy, prediction.dose_gy)
    np.testing.assert_allclose(read.dose_std_gy, prediction.dose_std_gy, rtol=1e-6)
    assert read.summary == json.loads(json.dumps(summary))  # as written (tuples become lists in JSON)
    assert read.summary["candidates"] == 3 and "uncertainty" in read.summary
    for source, dose in (("predicted", prediction.dose_gy), ("case", None)):
        expected = case_dvhs(case, dose)
        assert set(read.dvhs[source]) == set(expected)
        for name, dvh in expected.items():
            dose_steps, volume = dvh.cumulative(DVH_STEP_GY)
            np.testing.assert_allclose(read.dvhs[source][name][0], dose_steps, atol=5e-3)
            np.testing.assert_allclose(read.dvhs[source][name][1], volume, atol=5e-4)
    assert read.score.to_dict() == score_case(case, choice.template, prediction.dose_gy).to_dict()
    assert read.score_case.to_dict() == score_case(case, choice.template).to_dict()


def test_a_folder_without_a_scorecard_or_uncertainty(phantom, tmp_path):
    case = phantom
    prediction = prediction_of(case.dose.astype(np.float32), (1.0,))
    write_prediction(case, prediction, tmp_path / "out", choose_scorecard("none", case), report=False)
    read = read_prediction(tmp_path / "out")
    assert read.dose_std_gy is None and read.score is None and read.score_case is None
    assert not (tmp_path / "out" / DOSE_STD_FILE).exists() and not (tmp_path / "out" / SCORECARD_FILE).exists()
    assert read.summary["candidates"] == 1


@pytest.mark.parametrize("name", [SUMMARY_FILE, DOSE_FILE, DVH_FILE])
def test_a_missing_file_is_named(phantom, tmp_path, name):
    case = phantom
    write_prediction(case, prediction_of(case.dose.astype(np.float32), (1.0,)), tmp_path / "out", report=False)
    (tmp_path / "out" / name).unlink()
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        read_prediction(tmp_path / "out")


@pytest.mark.parametrize("name, text", [(SUMMARY_FILE, "{not json"), (SCORECARD_FILE, '{"case": {}}'),
                                        (DVH_FILE, "structure,source\nBODY,predicted\n"), (DOSE_FILE, "NRRD0004\n")])
def test_an_unreadable_file_is_named(phantom, tmp_path, name, text):
    case = phantom
    choice = choose_scorecard("lung_60", case)
    write_prediction(case, prediction_of(case.dose.astype(np.float32), (1.0, 1.1)), tmp_path / "out", choice,
                     report=False)
    (tmp_path / "out" / name).write_text(text)
    with pytest.raises(InputError) as error:
        read_prediction(tmp_path / "out")
    assert name in str(error.value)


def test_an_uncertainty_on_another_grid_is_refused(phantom, tmp_path):
    case = phantom
    write_prediction(case, prediction_of(case.dose.astype(np.float32), (1.0, 1.1)), tmp_path / "out", report=False)
    other = Grid(tuple(s // 2 for s in case.grid.shape), tuple(2 * v for v in case.grid.spacing), case.grid.origin,
                 case.grid.direction)
    write_volume(np.zeros(other.shape, np.float32), other, tmp_path / "out" / DOSE_STD_FILE, units="Gy")
    with pytest.raises(InputError, match="not on the dose's grid"):
        read_prediction(tmp_path / "out")


def test_no_folder():
    with pytest.raises(InputError, match="no such prediction folder"):
        read_prediction("/surely/not/here")
