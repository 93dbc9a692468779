"""Best-of-N: choose one of N candidate doses (Gy, on the CT grid).

- ``"scorecard"``: the highest scorecard total (no reference dose needed);
- ``"mae"``: the lowest mean absolute error (Gy) against the case's own dose inside the body;
- or any callable ``(candidates, case) → (index, scores)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dosediffusion.case import Case
from dosediffusion.errors import InputError
from dosediffusion.metrics.evaluation import masked_mae
from dosediffusion.metrics.scorecard import load_template, score_case, validate_template

Selector = Callable[[Sequence[np.ndarray], Case], tuple[int, list[float]]]


def by_mae(candidates: Sequence[np.ndarray], case: Case) -> tuple[int, list[float]]:
    """Index of the candidate closest to ``case.dose`` (MAE in Gy over the body, or everywhere)."""
    if case.dose is None:
        raise InputError("selection by MAE needs a reference dose, and the case has none", case.case_id)
    mask = case.body.mask if case.body is not None else np.ones(case.grid.shape, bool)
    maes = [masked_mae(c, case.dose, mask) for c in candidates]
    return int(np.argmin(maes)), maes


def by_scorecard(template: dict) -> Selector:
    """A selector that keeps the candidate with the highest total of ``template``."""

    def select(candidates: Sequence[np.ndarray], case: Case) -> tuple[int, list[float]]:
        totals = [score_case(case, template, c).total for c in candidates]
        return int(np.argmax(totals)), totals

    return select


def resolve_selector(selection: str | Selector | None, case: Case, scorecard: str | dict | None) -> Selector:
    """The selector for ``selection``; ``None`` means the scorecard when one is given, else MAE
    against the case's dose when it has one."""
    if callable(selection):
        return selection
    if selection is None:
        selection = "scorecard" if scorecard is not None else "mae" if case.dose is not None else None
    if selection == "mae":
        return by_mae
    if selection == "scorecard":
        if scorecard is None:
            raise InputError("selection by scorecard needs a scorecard (a template name or file)")
        template = validate_template(scorecard, "scorecard") if isinstance(scorecard, dict) else load_template(scorecard)
        return by_scorecard(template)
    if selection is None:
        raise InputError("choosing among several candidates needs a scorecard or a reference dose")
    raise InputError(f"unknown selection {selection!r}: use 'scorecard', 'mae' or a function")
