"""Whether a case can be predicted, decided before the model or torch is touched.

A case without structures, without a target, with a target that has no prescription or no voxels,
without a body (when none can be derived from the CT), or with beams for a patient position the
plates cannot place (decubitus) is refused with an
:class:`~dosediffusion.errors.InputError` that says how to fix it: the model would return a
plausible-looking dose for it, which nobody should see.
"""

from __future__ import annotations

from os import PathLike

from dosediffusion.case import Case, Structure
from dosediffusion.conditioning.beam_geometry import PATIENT_POSITION_AXES
from dosediffusion.errors import InputError
from dosediffusion.prediction.body import BODY_THRESHOLD_HU, body_from_ct

#: The name of a body derived from the CT.
DERIVED_BODY = "Body (from CT)"


def _names(structures) -> str:
    return ", ".join(sorted(s.name for s in structures))


def _warn(case: Case, warning: str) -> None:
    if warning not in case.warnings:  # a case checked twice (the Slicer module, then its process) says it once
        case.warnings.append(warning)


def check_predictable(case: Case, source: str | PathLike | None = None) -> None:
    """Raise :class:`InputError` (naming ``source``, the file or folder the case was read from, else the
    case id) when ``case`` cannot be predicted. Otherwise add what the prediction needs and the user
    should know, in place: a body derived from the CT when the case has none (with a warning), and
    warnings for the structures the model does not use and for a case without beams."""
    source = source or case.case_id
    if not case.structures:
        raise InputError("no structures: a prediction needs the structure set (RTSTRUCT, or masks) with the "
                         "target; add the one the plan was made on", source)
    targets = case.with_role("ptv")
    if not targets:
        raise InputError(f"no target: none of the structures ({_names(case.structures.values())}) is a PTV; name "
                         "it with --role NAME=ptv:DOSE_GY (or in the Slicer roles table, or the alias table)", source)
    no_dose = [s for s in targets if not s.prescription_gy]
    if no_dose:
        raise InputError(f"target without a prescription: {_names(no_dose)}; give each its dose with "
                         "--role NAME=ptv:DOSE_GY", source)
    empty = [s for s in targets if not s.mask.any()]
    if empty:
        raise InputError(f"target with no voxel on the CT grid: {_names(empty)}; check its contours, or give it "
                         "--role NAME=ignore", source)
    if case.body is None:
        mask = body_from_ct(case.ct, case.grid.voxel_volume_cc)
        if mask is None:
            raise InputError(f"no body structure, and none can be derived from the CT (no region above "
                             f"{BODY_THRESHOLD_HU:g} HU): add the body outline, or name it with --role NAME=body",
                             source)
        case.structures[DERIVED_BODY] = Structure(DERIVED_BODY, mask, "body")
        _warn(case, f"no body structure: '{DERIVED_BODY}' derived from the CT (largest region above "
                    f"{BODY_THRESHOLD_HU:g} HU, holes filled)")
    elif not case.body.mask.any():
        raise InputError(f"the body structure {case.body.name!r} has no voxel on the CT grid", source)
    unused = [s for s in case.structures.values() if s.role == "other"]
    if unused:
        _warn(case, f"structures the model does not use (role 'other'): {_names(unused)}")
    if not case.beams:
        _warn(case, "no treatment beams (no RTPLAN): the dose is predicted from the anatomy alone")
    elif case.patient_position not in PATIENT_POSITION_AXES:
        raise InputError(f"patient position {case.patient_position!r}: the beams' angles can be placed for "
                         f"{', '.join(PATIENT_POSITION_AXES)} only (decubitus and sitting positions are not "
                         "supported)", source)
