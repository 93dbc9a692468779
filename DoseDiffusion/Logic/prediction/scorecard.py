"""Which scorecard a prediction is scored with, and why: the one rule for every caller."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dosediffusion.case import Case
from dosediffusion.metrics.scorecard import load_template, template_fit
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
    shipped template's name or a template file. The reason ends with the template's fit to the case's
    prescription and fractions, and a warning when it does not fit."""
    if option in (None, "", AUTO):
        name = suggest_template(case)
        if name is None:
            return ScorecardChoice(None, "none of the shipped scorecards fits the case's prescription (within 15 %); "
                                         "name one with --scorecard NAME|FILE")
        return _with_fit(_template(name), f"'{name}' is the closest to the case's organs and prescription", case)
    if option == NONE:
        return ScorecardChoice(None, "turned off (--scorecard none)")
    return _with_fit(_template(str(option)), f"'{option}' as asked", case)


def _with_fit(template: dict, reason: str, case: Case) -> ScorecardChoice:
    fit, fits = template_fit(template, case)
    verdict = "fits" if fits else "does not fit (warning: its Gy limits assume the template's prescription)"
    return ScorecardChoice(template, f"{reason}; {fit}: {verdict}")
