"""How each structure gets its role: the user's choices first, then the alias table.

Every reader (DICOM, case sidecar, GDP-HMM) and the Slicer scene call :func:`assign_roles`, so one
rule gives the same :class:`~dosediffusion.case.Case` whether roles come from the command line
(``--role NAME=ptv:50``), the Slicer roles table or the alias table (the shipped one or an
institution's own, ``--aliases FILE``).

A user's role is one of :data:`USER_ROLES`: ``ptv`` (with its prescription in Gy, optional when the
name or a single plan level gives it), ``oar``, ``body``, or ``ignore`` (kept in the case as
``other``: it gets a DVH, the model does not use it). Nothing is dropped: a structure without a
role stays in the case as ``other`` and is reported.

The high PTV (:func:`high_ptv`) and the PTV of each prescription level (:func:`ptv_at_level`) are
chosen here for every caller: the evaluation's normalisation, the scorecards' ``ptv_level`` entries
and the report's views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dosediffusion.aliases import AliasTable, RoleMatch, default_table, dose_from_name, normalise
from dosediffusion.case import Case, Prescription, Structure
from dosediffusion.errors import InputError

USER_ROLES: tuple[str, ...] = ("ptv", "oar", "body", "ignore")


@dataclass(frozen=True)
class RoleChoice:
    """A role for one structure: ``role`` of :data:`USER_ROLES`; a PTV's ``prescription_gy`` (Gy, total)."""

    role: str
    prescription_gy: float | None = None

    def __post_init__(self):
        if self.role not in USER_ROLES:
            raise InputError(f"role must be one of {', '.join(USER_ROLES)}, got {self.role!r}")
        if self.prescription_gy is not None and (self.role != "ptv" or not 0 < self.prescription_gy <= 150):
            raise InputError(f"a prescription (0-150 Gy) goes with role ptv only, got {self.role}:{self.prescription_gy:g}")


def parse_role(text: str) -> tuple[str, RoleChoice]:
    """``NAME=ptv[:DOSE_GY]``, ``NAME=oar``, ``NAME=body`` or ``NAME=ignore`` → (name, choice)."""
    name, equals, spec = text.rpartition("=")
    if not equals or not name.strip():
        raise InputError(f"--role {text!r}: write NAME=ROLE, ROLE one of ptv[:DOSE_GY], oar, body, ignore")
    role, colon, dose = spec.strip().lower().partition(":")
    try:
        prescription = float(dose) if colon else None
    except ValueError:
        raise InputError(f"--role {text!r}: the dose after 'ptv:' must be a number of Gy, got {dose!r}") from None
    try:
        return name.strip(), RoleChoice(role, prescription)
    except InputError as error:
        raise InputError(f"--role {text!r}: {error.problem}") from None


def parse_roles(texts: list[str] | None) -> dict[str, RoleChoice]:
    """Repeated ``--role`` options → name → choice; a name given twice is an error."""
    choices: dict[str, RoleChoice] = {}
    for text in texts or []:
        name, choice = parse_role(text)
        if name in choices:
            raise InputError(f"--role gives structure {name!r} twice")
        choices[name] = choice
    return choices


def suggested_role(name: str, levels_gy: list[float], table: AliasTable | None = None) -> tuple[RoleChoice, bool]:
    """The alias table's role for ``name`` (``ignore`` when it has none) and whether the name was one
    it knows (a helper structure it ignores on purpose counts as known)."""
    return _suggestion((table or default_table()).match(name), name, levels_gy)


def _suggestion(found: RoleMatch, name: str, levels_gy: list[float]) -> tuple[RoleChoice, bool]:
    if found.role == "ptv":
        return RoleChoice("ptv", ptv_dose(name, levels_gy)), True
    if found.role in ("oar", "body"):
        return RoleChoice(found.role), True
    return RoleChoice("ignore"), found.ignored


def ptv_dose(name: str, levels_gy: list[float]) -> float | None:
    """A PTV's prescription when nothing else gives it: the dose in its name, else the single level."""
    dose = dose_from_name(name.strip().lower())
    return dose if dose is not None else (float(levels_gy[0]) if len(levels_gy) == 1 else None)


def _resolve(structures: Mapping, choices: Mapping[str, RoleChoice]) -> dict[str, RoleChoice]:
    """``choices`` by the structures' own names: exact, else the one name equal after :func:`normalise`."""
    resolved = {}
    for name, choice in choices.items():
        if name not in structures:
            same = [s for s in structures if normalise(s) == normalise(name)]
            if len(same) != 1:
                raise InputError(f"--role names structure {name!r}, which the case does not have; its structures: "
                                 f"{', '.join(sorted(structures)) or 'none'}")
            name = same[0]
        resolved[name] = choice
    return resolved


def assign_roles(structures: Mapping, levels_gy: list[float], table: AliasTable | None = None,
                 choices: Mapping[str, RoleChoice] | None = None) -> list[str]:
    """Give each :class:`~dosediffusion.case.Structure` its role, canonical name and, for PTVs, its
    prescription, in place: the user's ``choices`` first; then structures whose source gave a role
    (a sidecar, the GDP-HMM PTV list) keep it; the rest get the alias table's.

    A PTV's prescription is the dose chosen, else the one its source gave, else the dose in its
    name, else the plan's single prescription level. Returns warnings: names without a role (kept as
    ``other``), PTVs left without a prescription.
    """
    table = table or default_table()
    chosen = _resolve(structures, choices or {})
    unmatched, no_dose = [], []
    for structure in structures.values():
        found = table.match(structure.name)
        structure.canonical = found.canonical
        choice = chosen.get(structure.name)
        if choice is None and structure.role != "other":
            continue
        if choice is None:
            choice, known = _suggestion(found, structure.name, levels_gy)
            if not known:
                unmatched.append(structure.name)
        if choice.role == "ptv":
            structure.prescription_gy = (choice.prescription_gy or structure.prescription_gy
                                         or ptv_dose(structure.name, levels_gy))
            if structure.prescription_gy is None:
                no_dose.append(structure.name)
        else:
            structure.prescription_gy = None
        structure.role = "other" if choice.role == "ignore" else choice.role
    bodies = [n for n, c in chosen.items() if c.role == "body"]
    for structure in structures.values():  # a body the user names is the only one
        if bodies and structure.role == "body" and structure.name not in bodies:
            structure.role = "other"
    warnings = []
    if unmatched:
        warnings.append(f"structures with no role in the alias table (kept as 'other'; give one with --role "
                        f"NAME=ROLE): {', '.join(sorted(unmatched))}")
    if no_dose:
        warnings.append(f"PTVs without a prescription (none in the name or plan; give one with --role NAME=ptv:GY): "
                        f"{', '.join(sorted(no_dose))}")
    return warnings


def case_prescription(plan: Prescription, structures: Mapping) -> Prescription:
    """A case's prescription: the plan's (or the user's) when it gives dose levels, else the doses of the
    structures that are PTVs after :func:`assign_roles`; the plan's fractions either way. Every reader
    and the Slicer scene take it from here."""
    if plan.levels_gy:
        return plan
    return Prescription([s.prescription_gy for s in structures.values() if s.role == "ptv" and s.prescription_gy],
                        plan.fractions)


def ptv_at_level(case: Case, level: int) -> Structure | None:
    """The PTV of the case's ``level``-th highest distinct prescription (1: the high PTV) among its
    non-empty PTVs with a prescription; of several at that dose the largest (most voxels), the first
    in the case's order when they are as large. None when the case has fewer levels."""
    if level < 1:
        raise InputError(f"PTV levels count from 1 (the highest prescription), got {level}")
    ptvs = [s for s in case.with_role("ptv") if s.prescription_gy and s.mask.any()]
    levels = sorted({s.prescription_gy for s in ptvs}, reverse=True)
    if len(levels) < level:
        return None
    at_level = [s for s in ptvs if s.prescription_gy == levels[level - 1]]
    return max(at_level, key=lambda s: int(s.mask.sum()))


def high_ptv(case: Case) -> Structure | None:
    """The high PTV: the non-empty PTV with the highest prescription (:func:`ptv_at_level` 1), None when
    no non-empty PTV has a prescription."""
    return ptv_at_level(case, 1)
