"""A checked case through a predictor into its output folder: what ``dosediffusion predict``, the
Slicer batch script and the Slicer background process do for each case."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dosediffusion.case import Case
from dosediffusion.prediction.case_prediction import Progress
from dosediffusion.prediction.outputs import write_prediction
from dosediffusion.prediction.scorecard import ScorecardChoice


def predict_to_folder(case: Case, predictor, out_dir: str | Path, scorecard: ScorecardChoice, *, steps: int = 10,
                      seed: int = 0, candidates: int = 1, report: bool = True, overwrite: bool = False,
                      progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> dict:
    """Predict ``case`` (already through :func:`~dosediffusion.prediction.checks.check_predictable`) with
    ``predictor`` (:mod:`.predictors`), best of ``candidates`` by ``scorecard``'s template, and write its
    files into ``out_dir``; returns the summary."""
    prediction = predictor(case, steps=steps, seed=seed, num_candidates=candidates, scorecard=scorecard.template,
                           progress=progress, cancel=cancel)
    return write_prediction(case, prediction, out_dir, scorecard, report=report, overwrite=overwrite,
                            model=predictor.description)
