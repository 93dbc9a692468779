"""Which shipped scorecard fits a case: the anatomy its structures show, then its prescription."""

from __future__ import annotations

from dosediffusion.case import Case
from dosediffusion.metrics.scorecard import find_structure, load_template, shipped_templates

#: How much a template's matching number of PTV levels counts against the share of its organs the case has.
LEVEL_MATCH_WEIGHT = 0.25


def suggest_template(case: Case) -> str | None:
    """The shipped template (one of :func:`~dosediffusion.metrics.scorecard.shipped_templates`) whose highest prescription is within 15 % of the case's, ranked by
    the share of the template's organs the case has, plus :data:`LEVEL_MATCH_WEIGHT` when it has the
    case's number of PTV levels, minus the relative prescription gap; None when no prescription is
    within 15 %. A thoracic case with three PTV levels near 66 Gy gets the lung template, a phantom with
    only a cord and an oesophagus and levels of 70/63/56 Gy the head-and-neck one."""
    levels = sorted({s.prescription_gy for s in case.with_role("ptv") if s.prescription_gy} |
                    set(case.prescription.levels_gy), reverse=True)
    if not levels:
        return None
    best, best_rank = None, None
    for name in shipped_templates():
        template = load_template(name)
        rx = sorted(template.get("prescription_gy", []), reverse=True)
        gap = abs(rx[0] - levels[0]) / levels[0] if rx else 1.0
        if gap > 0.15:
            continue
        organs = {e["structure"]["name"] for e in template["entries"] if "name" in e["structure"]}
        share = sum(find_structure(case, {"name": n}) is not None for n in organs) / max(len(organs), 1)
        rank = share + LEVEL_MATCH_WEIGHT * (len(rx) == len(levels)) - gap
        if best_rank is None or rank > best_rank:
            best, best_rank = name, rank
    return best
