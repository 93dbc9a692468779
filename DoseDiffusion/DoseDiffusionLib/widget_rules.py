"""The module panel's decisions as plain functions (no Qt, no ``slicer``): what a prescription box,
a plan and the scorecard choice mean for the prediction. ``DoseDiffusion.py`` calls these; the tests
call them directly.
"""

from __future__ import annotations

from dosediffusion.case import Prescription

#: The value of the prescription and fractions boxes that means "automatic": the plan's prescription
#: (its RTPLAN file, else its RxDose), else the PTV doses of the structures' names, as the batch
#: script and ``dosediffusion predict`` take it.
AUTOMATIC = 0
SCORECARD_FILE = "file"


def prescription_arguments(entered_gy: float, entered_fractions: int) -> tuple[float | None, int | None]:
    """(prescription Gy, fractions) for ``case_from_scene`` from the boxes: :data:`AUTOMATIC` → None
    (the plan's, else the PTV names'); any other value is used as entered (a value that is not the
    plan's gets a warning in the case)."""
    gy = float(entered_gy) if entered_gy and float(entered_gy) > 0 else None
    fractions = int(entered_fractions) if entered_fractions and int(entered_fractions) > 0 else None
    return gy, fractions


def plan_prescription_note(prescription: Prescription | None) -> str:
    """The line under the prescription boxes for the selected plan's prescription (None: no plan)."""
    if prescription is None:
        return "No plan: automatic takes the PTV doses from the structure names (e.g. PTV_70)."
    if not prescription.levels_gy:
        return "The plan has no prescription: automatic takes the PTV doses from the structure names."
    levels = "/".join(f"{v:g}" for v in prescription.levels_gy)
    fractions = f" in {prescription.fractions} fractions" if prescription.fractions else ""
    return f"Plan: {levels} Gy{fractions} (used while the boxes are automatic)."


def suggestion_levels(entered_gy: float, plan: Prescription | None) -> list[float]:
    """The dose levels (Gy) the roles table suggests PTV doses from: the entered prescription, else the plan's."""
    gy, _ = prescription_arguments(entered_gy, 0)
    if gy is not None:
        return [gy]
    return list(plan.levels_gy) if plan is not None else []


def scorecard_option(choice: str, path: str) -> str:
    """The ``--scorecard`` value of the scorecard box: its choice, or for "from file..." the file.

    Raises:
        ValueError: "from file..." without a file (it never silently means ``auto``).
    """
    if choice != SCORECARD_FILE:
        return choice
    if not (path or "").strip():
        raise ValueError("the scorecard is 'from file...' but no file is chosen: choose a scorecard file "
                         "(.json) or another scorecard")
    return path.strip()
