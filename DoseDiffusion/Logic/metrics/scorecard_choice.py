"""Which shipped scorecard fits a case: the one whose prescription levels match the case's."""

from __future__ import annotations

import json

from dosediffusion.case import Case
from dosediffusion.metrics.scorecard import SCORECARD_DIR
from dosediffusion.resources import resource_path


def suggest_template(case: Case) -> str | None:
    """The shipped template (file stem) with the case's number of PTV levels and the nearest highest
    prescription (within 15 %), or None when none fits."""
    levels = sorted({s.prescription_gy for s in case.with_role("ptv") if s.prescription_gy} |
                    set(case.prescription.levels_gy), reverse=True)
    if not levels:
        return None
    best, best_gap = None, 0.15
    for path in sorted(resource_path(SCORECARD_DIR).glob("*.json")):
        template = json.loads(path.read_text())
        rx = sorted(template.get("prescription_gy", []), reverse=True)
        if len(rx) != len(levels):
            continue
        gap = abs(rx[0] - levels[0]) / levels[0]
        if gap <= best_gap:
            best, best_gap = path.stem, gap
    return best
