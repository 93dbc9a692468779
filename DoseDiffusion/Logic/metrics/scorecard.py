"""Clinical scorecards: templates of per-structure dose metrics scored piecewise-linearly.

A template (JSON, schema ``Resources/Scorecards/scorecard.schema.json``) lists entries:
a structure (``{"name": "SpinalCord"}``, matched to the case through the alias table's canonical
names, or ``{"ptv_level": 1}``, the PTV with the highest prescription, as
:func:`~dosediffusion.roles.ptv_at_level` chooses it; a paired organ such as ``Lungs`` is the union
of the case's left and right ones when the case has no combined structure), a metric

- ``DoseAtVolume`` (``volume`` in ``volume_unit`` % or cc) → dose,
- ``VolumeAtDose`` (``dose`` in ``dose_unit`` Gy or %Rx) → volume in ``output_unit`` % or cc,
- ``MeanDose``, ``MaxDose`` (D0.03cc), ``MinDose`` → dose,

with doses reported in ``output_unit`` Gy or %Rx (% of that PTV's prescription, so PTV goals
scale with the case's prescription), ``points`` [[x, score], ...] interpolated linearly and
clamped at both ends, a ``weight`` (default 1), and an optional ``limit`` (``max``/``min``;
``hard`` marks a constraint the plan must not break: :func:`limit_excess` says by how much a value
breaks a limit, 0 when it meets it). Entries whose structure the case lacks are "not evaluable":
listed, never scored as zero. Total = Σ weight · score over evaluable entries.
Each result names what it measured: its ``label`` (``D95%``, ``D0.03cc``, ``V20Gy``, ``Dmean``: the
:mod:`~dosediffusion.metrics.dvh_metric` name of :func:`entry_metric`), its ``goal`` (``≥ 95 %Rx``,
``≤ 50 Gy``, from the entry's limit) and its :attr:`~EntryResult.verdict` (``pass``, ``fail``,
``FAIL (hard)``). A template's optional ``fractions`` and its ``prescription_gy`` are compared with the
case's by :func:`template_fit`; :func:`shipped_templates` names the templates shipped in
``Resources/Scorecards``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jsonschema import Draft202012Validator

from dosediffusion.aliases import normalise
from dosediffusion.case import Case, Structure
from dosediffusion.errors import InputError
from dosediffusion.metrics.dvh import DVH, compute_dvh
from dosediffusion.metrics.dvh_metric import DvhMetric
from dosediffusion.resources import resource_path
from dosediffusion.roles import ptv_at_level

SCORECARD_DIR = "Scorecards"
SCHEMA_FILE = "scorecard.schema.json"
_DOSE_METRICS = {"DoseAtVolume", "MeanDose", "MaxDose", "MinDose"}


@dataclass
class EntryResult:
    """One scored entry; ``value`` and ``score`` are None when the structure is missing."""

    structure: str
    metric: str
    value: float | None
    unit: str
    score: float | None
    max_score: float
    passed: bool | None
    hard: bool
    note: str = ""
    label: str = ""
    goal: str = ""

    @property
    def measured(self) -> str:
        """What was measured and against what: ``D95% ≥ 95 %Rx`` (the metric kind for older reports)."""
        return " ".join(part for part in (self.label or self.metric, self.goal) if part)

    @property
    def verdict(self) -> str:
        """``pass``, ``fail``, ``FAIL (hard)`` (a broken hard limit), ``not evaluable``, or ``""`` without a limit."""
        if self.score is None:
            return "not evaluable"
        if self.passed is None:
            return ""
        return "pass" if self.passed else ("FAIL (hard)" if self.hard else "fail")


@dataclass
class ScoreReport:
    template: str
    entries: list[EntryResult]

    @property
    def total(self) -> float:
        return float(sum(e.score for e in self.entries if e.score is not None))

    @property
    def max_total(self) -> float:
        return float(sum(e.max_score for e in self.entries if e.score is not None))

    @property
    def not_evaluable(self) -> list[str]:
        return [f"{e.structure} {e.label or e.metric}" for e in self.entries if e.score is None]

    @classmethod
    def from_dict(cls, document: dict) -> ScoreReport:
        """The report that :meth:`to_dict` wrote (``scorecard.json`` of a prediction folder)."""
        try:
            return cls(str(document["template"]), [EntryResult(**entry) for entry in document["entries"]])
        except (KeyError, TypeError) as error:
            raise InputError(f"not a scorecard report ({error!r})") from None

    def to_dict(self) -> dict:
        return {
            "template": self.template,
            "total": round(self.total, 4),
            "max_total": round(self.max_total, 4),
            "not_evaluable": self.not_evaluable,
            "entries": [e.__dict__ for e in self.entries],
        }


def _validator() -> Draft202012Validator:
    schema = json.loads(resource_path(SCORECARD_DIR, SCHEMA_FILE).read_text())
    return Draft202012Validator(schema)


def validate_template(template: dict, source: str) -> dict:
    """``template`` if it is valid; otherwise an :class:`InputError` naming the entry and field."""
    errors = sorted(_validator().iter_errors(template), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "template"
        raise InputError(f"invalid scorecard at {where}: {error.message}", source)
    for i, entry in enumerate(template["entries"]):
        metric = entry["metric"]
        needs = {"DoseAtVolume": ("volume", "volume_unit"), "VolumeAtDose": ("dose", "dose_unit")}.get(metric, ())
        for key in needs:
            if key not in entry:
                raise InputError(f"invalid scorecard at entries[{i}]: {metric} needs '{key}'", source)
        unit = output_unit(entry)
        if (metric in _DOSE_METRICS) != (unit in ("Gy", "%Rx")):
            raise InputError(f"invalid scorecard at entries[{i}].output_unit: {unit!r} does not fit {metric}", source)
        xs = [p[0] for p in entry["points"]]
        if xs != sorted(xs):
            raise InputError(f"invalid scorecard at entries[{i}].points: x values must increase", source)
    return template


def shipped_templates() -> list[str]:
    """The names (file stems) of the templates shipped in ``Resources/Scorecards``, sorted; the schema is none."""
    return sorted(p.stem for p in resource_path(SCORECARD_DIR).glob("*.json") if p.name != SCHEMA_FILE)


def load_template(name_or_path: str | Path) -> dict:
    """A shipped template by name (one of :func:`shipped_templates`) or a template file (ours or ESAPI's);
    a name without a file extension that is not shipped is refused, listing the shipped ones."""
    path = Path(name_or_path)
    if str(name_or_path) in shipped_templates():
        path = resource_path(SCORECARD_DIR, f"{name_or_path}.json")
    elif not path.suffix:
        raise InputError(f"no shipped scorecard {name_or_path!r}; shipped: {', '.join(shipped_templates())}")
    try:
        template = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read scorecard ({error})", path) from None
    if isinstance(template, dict) and "ScoreTemplates" in template:
        from dosediffusion.metrics.esapi_scorecard import from_esapi

        template = from_esapi(template, path.stem)
    return validate_template(template, str(path))


#: Combined organs (TG-263 names) made of their left and right parts when a case has only those.
PAIRED_ORGANS = {"Lungs": ("Lung_L", "Lung_R"), "Parotids": ("Parotid_L", "Parotid_R"),
                 "Kidneys": ("Kidney_L", "Kidney_R"), "Femur_Heads": ("Femur_Head_L", "Femur_Head_R")}


def find_structure(case: Case, spec: dict) -> Structure | None:
    """The case's structure for an entry's ``structure`` spec, or None."""
    if "ptv_level" in spec:
        return ptv_at_level(case, spec["ptv_level"])
    found = _named_structure(case, spec["name"])
    if found is None and spec["name"] in PAIRED_ORGANS:
        sides = [s for s in (_named_structure(case, side) for side in PAIRED_ORGANS[spec["name"]]) if s is not None]
        if sides:
            found = Structure(spec["name"], np.logical_or.reduce([s.mask for s in sides]), "oar",
                              canonical=spec["name"])
    return found


def _named_structure(case: Case, name: str) -> Structure | None:
    key = normalise(name)
    for s in case.structures.values():
        if s.mask.any() and key in (normalise(s.name), normalise(s.canonical or "")):
            return s
    return None


def entry_metric(entry: dict) -> DvhMetric:
    """The DVH metric a template entry measures: ``DoseAtVolume`` → ``D95%`` / ``D2cc``, ``VolumeAtDose`` →
    ``V20Gy`` / ``V95%Rx`` (``V20Gy[cc]`` with ``output_unit`` cc), ``MeanDose`` → ``Dmean``, ``MaxDose`` →
    ``D0.03cc`` (the near-maximum), ``MinDose`` → ``Dmin``."""
    metric = entry["metric"]
    if metric == "DoseAtVolume":
        return DvhMetric("D", float(entry["volume"]), "%" if entry["volume_unit"] == "%" else "cc")
    if metric == "VolumeAtDose":
        return DvhMetric("V", float(entry["dose"]), entry["dose_unit"], "cc" if entry.get("output_unit") == "cc" else "%")
    if metric == "MaxDose":
        return DvhMetric("D", 0.03, "cc")
    return DvhMetric({"MeanDose": "mean", "MinDose": "min"}[metric])


def output_unit(entry: dict) -> str:
    """The unit an entry reports: its ``output_unit``, by default Gy for a dose and % for a volume."""
    return entry.get("output_unit", "Gy" if entry["metric"] in _DOSE_METRICS else "%")


def metric_label(entry: dict) -> str:
    """A template entry's metric with its point (:attr:`DvhMetric.label` of :func:`entry_metric`)."""
    return entry_metric(entry).label


def limit_excess(limit: dict, value: float) -> float:
    """How far ``value`` lies beyond an entry's ``limit`` (``max`` and/or ``min``, the entry's unit): the
    amount above ``max`` plus the amount below ``min``; 0 when the value meets the limit. A limit is met
    exactly when this is 0; a hard limit's excess is what the plan must not have."""
    above = max(0.0, value - float(limit["max"])) if "max" in limit else 0.0
    below = max(0.0, float(limit["min"]) - value) if "min" in limit else 0.0
    return float(above + below)


def goal_label(entry: dict) -> str:
    """A template entry's goal from its limit: ``≥ 95 %Rx``, ``≤ 35 %``, ``≤ 50 Gy (hard)``; ``""`` without one."""
    limit = entry.get("limit") or {}
    unit = output_unit(entry)
    parts = [f"{sign} {limit[key]:g} {unit}" for key, sign in (("min", "≥"), ("max", "≤")) if key in limit]
    return " and ".join(parts) + (" (hard)" if parts and limit.get("hard") else "")


def template_fit(template: dict, case: Case) -> tuple[str, bool]:
    """How ``template``'s prescription (levels, and fractions when it names them) compares with the case's,
    in words, and whether it fits: the same number of levels, each within 2 %, and the same fractions
    where both are known."""
    rx = sorted(template.get("prescription_gy", []), reverse=True)
    levels = sorted({s.prescription_gy for s in case.with_role("ptv") if s.prescription_gy}
                    | set(case.prescription.levels_gy), reverse=True)
    fractions, case_fractions = template.get("fractions"), case.prescription.fractions

    def words(values: list[float], n: int | None) -> str:
        dose = "/".join(f"{v:g}" for v in values) + " Gy" if values else "no prescription"
        return dose + (f" in {n} fractions" if n else "")

    fits = (len(rx) == len(levels) and all(abs(a - b) <= 0.02 * b for a, b in zip(rx, levels, strict=True))
            and (fractions is None or case_fractions is None or fractions == case_fractions))
    text = f"template {words(rx, fractions)}, case {words(levels, case_fractions)}"
    return text, fits


def check_scorable(report: ScoreReport, case: Case) -> None:
    """Raise :class:`InputError` when no entry of ``report`` could be scored: a total of 0 of 0 says nothing."""
    if not any(e.score is not None for e in report.entries):
        names = ", ".join(sorted(case.structures)) or "no structures"
        raise InputError(f"nothing to score: none of the structures the scorecard {report.template!r} measures is "
                         f"in the case (it has {names}); name them with --role NAME=ptv:DOSE_GY / NAME=oar or "
                         f"--aliases", case.case_id)


def _missing_note(case: Case, spec: dict) -> str:
    """Why an entry's structure was not found, in words."""
    if "ptv_level" in spec:
        unprescribed = sorted(s.name for s in case.with_role("ptv") if s.mask.any() and not s.prescription_gy)
        if unprescribed:
            return (f"PTV without a prescription ({', '.join(unprescribed)}): give it with --role NAME=ptv:DOSE_GY; "
                    "not evaluable")
        return f"the case has fewer than {spec['ptv_level']} PTV dose levels: not evaluable"
    return "structure not in the case: not evaluable"


def _metric(dvh: DVH, entry: dict, rx_gy: float | None) -> tuple[float, str]:
    """(value, unit) of a template entry on ``dvh``, the structure's prescription ``rx_gy`` giving %Rx."""
    metric, unit = entry_metric(entry), output_unit(entry)
    return metric.value(dvh, rx_gy, unit if metric.is_dose else "Gy"), unit


def score_case(case: Case, template: dict, dose_gy: np.ndarray | None = None) -> ScoreReport:
    """Score ``dose_gy`` (default: the case's dose) on ``case`` with a validated ``template``."""
    dose = case.dose if dose_gy is None else dose_gy
    if dose is None:
        raise InputError("no dose to score: the case has none and none was given", case.case_id)
    dvhs: dict[str, DVH] = {}
    results = []
    for entry in template["entries"]:
        spec = entry["structure"]
        label = spec.get("name") or f"PTV level {spec['ptv_level']}"
        xs, ys = np.array([p[0] for p in entry["points"]]), np.array([p[1] for p in entry["points"]])
        weight = float(entry.get("weight", 1.0))
        limit = entry.get("limit", {})
        structure = find_structure(case, spec)
        if structure is None:
            results.append(EntryResult(label, entry["metric"], None, "", None, weight * ys.max(), None,
                                       bool(limit.get("hard")), _missing_note(case, spec), metric_label(entry),
                                       goal_label(entry)))
            continue
        if structure.name not in dvhs:
            dvhs[structure.name] = compute_dvh(dose, case.grid, structure)
        value, unit = _metric(dvhs[structure.name], entry, structure.prescription_gy)
        passed = limit_excess(limit, value) == 0.0 if limit else None
        results.append(EntryResult(structure.name, entry["metric"], round(float(value), 4), unit,
                                   round(weight * float(np.interp(value, xs, ys)), 4), weight * float(ys.max()),
                                   passed, bool(limit.get("hard")), label=metric_label(entry), goal=goal_label(entry)))
    return ScoreReport(template["name"], results)
