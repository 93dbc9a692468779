"""Which scorecard a prediction is scored with, and why: the one rule for every caller."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dosediffusion.case import Case
from dosediffusion.metrics.scorecard import load_template
from dosediffusion.metrics.scorecard_choice import suggest_template

AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class ScorecardChoice:
    """The template to score with (None: no scorecard) and the reason, in words."""

    template: dict | None
    reason: str

    @property
    def name(self) -> str | None:
        return None if self.template is None else self.template.get("name")


@lru_cache(maxsize=32)
def _template(name_or_path: str) -> dict:
    return load_template(name_or_path)


def check_scorecard_option(option: str | None) -> None:
    """Fail now, before any case is read, on a ``--scorecard`` name or file that cannot be loaded."""
    if option not in (None, "", AUTO, NONE):
        _template(str(option))


def choose_scorecard(option: str | None, case: Case) -> ScorecardChoice:
    """``option``: ``auto`` or None (the shipped template that fits the case's organs and
    prescription, :func:`~dosediffusion.metrics.scorecard_choice.suggest_template`), ``none``, a
    shipped template's name or a template file."""
    if option in (None, "", AUTO):
        name = suggest_template(case)
        if name is None:
            return ScorecardChoice(None, "none of the shipped scorecards fits the case's prescription (within 15 %); "
                                         "name one with --scorecard NAME|FILE")
        return ScorecardChoice(_template(name), f"'{name}' fits the case's organs and prescription best")
    if option == NONE:
        return ScorecardChoice(None, "turned off (--scorecard none)")
    return ScorecardChoice(_template(str(option)), f"'{option}' as asked")
