"""A case that has been read, through the whole prediction journey into its output folder: what
``dosediffusion predict``, the Slicer module (its logic and its background process) and the Slicer
batch script do for each case."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dosediffusion.case import Case
from dosediffusion.prediction.checks import check_predictable
from dosediffusion.prediction.outputs import check_output_folder, write_prediction
from dosediffusion.prediction.scorecard import AUTO, choose_scorecard

if TYPE_CHECKING:
    from dosediffusion.model.case_prediction import Progress


def predict_to_folder(case: Case, predictor, out_dir: str | Path, scorecard: str | None = AUTO, *, steps: int = 10,
                      seed: int = 0, candidates: int = 1, report: bool = True, overwrite: bool = False,
                      progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                      status: Callable[[str], None] | None = None, source: str | Path | None = None) -> dict:
    """Check ``case`` (:func:`~dosediffusion.prediction.checks.check_predictable`: what cannot be
    predicted is refused here, before the model is loaded) and its output folder, choose its scorecard
    (``scorecard``: ``auto``, ``none``, a name or a file), predict with ``predictor``
    (:mod:`.predictors`; best of ``candidates`` by that scorecard, refused at once when its pipeline cannot) and write the files into
    ``out_dir``. ``status`` hears what happens in words (warnings, the scorecard and why, the model
    loading); errors name ``source`` (where the case was read from) when given. Returns the summary."""
    tell = status or (lambda message: None)
    predictor.check_options(candidates)
    check_predictable(case, source)
    check_output_folder(out_dir, overwrite)
    choice = choose_scorecard(scorecard, case)
    for warning in case.warnings:
        tell(f"warning: {warning}")
    tell(f"scorecard: {choice.name or 'none'} ({choice.reason})")
    if not predictor.loaded:
        tell(f"loading the model: {predictor}")
        predictor.load()
    prediction = predictor(case, steps=steps, seed=seed, num_candidates=candidates, scorecard=choice.template,
                           progress=progress, cancel=cancel)
    return write_prediction(case, prediction, out_dir, choice, report=report, overwrite=overwrite,
                            model=predictor.description)
