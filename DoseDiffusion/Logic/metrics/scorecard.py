"""Clinical scorecards: templates of per-structure dose metrics scored piecewise-linearly.

A template (JSON, schema ``Resources/Scorecards/scorecard.schema.json``) lists entries:
a structure (``{"name": "SpinalCord"}``, matched to the case through the alias table's canonical
names, or ``{"ptv_level": 1}``, the PTV with the highest prescription; a paired organ such as
``Lungs`` is the union of the case's left and right ones when the case has no combined structure), a metric

- ``DoseAtVolume`` (``volume`` in ``volume_unit`` % or cc) → dose,
- ``VolumeAtDose`` (``dose`` in ``dose_unit`` Gy or %Rx) → volume in ``output_unit`` % or cc,
- ``MeanDose``, ``MaxDose`` (D0.03cc), ``MinDose`` → dose,

with doses reported in ``output_unit`` Gy or %Rx (% of that PTV's prescription, so PTV goals
scale with the case's prescription), ``points`` [[x, score], ...] interpolated linearly and
clamped at both ends, a ``weight`` (default 1), and an optional ``limit`` (``max``/``min``;
``hard`` marks a constraint the plan must not break). Entries whose structure the case lacks are
"not evaluable": listed, never scored as zero. Total = Σ weight · score over evaluable entries.
Each result names what it measured: its ``label`` (``D95%``, ``D0.03cc``, ``V20Gy``, ``Dmean``) and its
``goal`` (``≥ 95 %Rx``, ``≤ 50 Gy``, from the entry's limit). A template's optional ``fractions`` and its
``prescription_gy`` are compared with the case's by :func:`template_fit`.
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
from dosediffusion.resources import resource_path

SCORECARD_DIR = "Scorecards"
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
    schema = json.loads(resource_path(SCORECARD_DIR, "scorecard.schema.json").read_text())
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
        unit = entry.get("output_unit", "Gy" if metric in _DOSE_METRICS else "%")
        if (metric in _DOSE_METRICS) != (unit in ("Gy", "%Rx")):
            raise InputError(f"invalid scorecard at entries[{i}].output_unit: {unit!r} does not fit {metric}", source)
        xs = [p[0] for p in entry["points"]]
        if xs != sorted(xs):
            raise InputError(f"invalid scorecard at entries[{i}].points: x values must increase", source)
    return template


def load_template(name_or_path: str | Path) -> dict:
    """A shipped template by name (file stem in ``Resources/Scorecards``) or a template file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = resource_path(SCORECARD_DIR, f"{name_or_path}.json")
        if not path.is_file():
            shipped = sorted(p.stem for p in resource_path(SCORECARD_DIR).glob("*.json") if p.stem != "scorecard.schema")
            raise InputError(f"no shipped scorecard {name_or_path!r}; shipped: {', '.join(shipped)}")
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
        ptvs = [s for s in case.with_role("ptv") if s.prescription_gy and s.mask.any()]
        levels = sorted({s.prescription_gy for s in ptvs}, reverse=True)
        if len(levels) < spec["ptv_level"]:
            return None
        wanted = levels[spec["ptv_level"] - 1]
        return max((s for s in ptvs if s.prescription_gy == wanted), key=lambda s: s.mask.sum())
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


def metric_label(entry: dict) -> str:
    """A template entry's metric with its point: ``D95%``, ``D2cc``, ``V20Gy``, ``V95%Rx``, ``Dmean``,
    ``D0.03cc`` (MaxDose), ``Dmin``."""
    metric = entry["metric"]
    if metric == "DoseAtVolume":
        return f"D{entry['volume']:g}{'%' if entry['volume_unit'] == '%' else 'cc'}"
    if metric == "VolumeAtDose":
        return f"V{entry['dose']:g}{entry['dose_unit']}"
    return {"MeanDose": "Dmean", "MaxDose": "D0.03cc", "MinDose": "Dmin"}.get(metric, metric)


def goal_label(entry: dict) -> str:
    """A template entry's goal from its limit: ``≥ 95 %Rx``, ``≤ 35 %``, ``≤ 50 Gy (hard)``; ``""`` without one."""
    limit = entry.get("limit") or {}
    unit = entry.get("output_unit", "Gy" if entry["metric"] in _DOSE_METRICS else "%")
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
    metric = entry["metric"]
    unit = entry.get("output_unit", "Gy" if metric in _DOSE_METRICS else "%")
    if unit == "%Rx" or entry.get("dose_unit") == "%Rx":
        if not rx_gy:
            raise InputError(f"entry {metric} uses %Rx but the structure has no prescription")
    if metric == "DoseAtVolume":
        value = (dvh.dose_at_volume_percent(entry["volume"]) if entry["volume_unit"] == "%"
                 else dvh.dose_at_volume_cc(entry["volume"]))
    elif metric == "VolumeAtDose":
        dose = entry["dose"] * rx_gy / 100.0 if entry["dose_unit"] == "%Rx" else entry["dose"]
        return (dvh.volume_at_dose_percent(dose) if unit == "%" else dvh.volume_at_dose_cc(dose)), unit
    elif metric == "MeanDose":
        value = dvh.mean_gy
    elif metric == "MaxDose":
        value = dvh.dose_at_volume_cc(0.03)
    else:
        value = dvh.min_gy
    return (100.0 * value / rx_gy if unit == "%Rx" else value), unit


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
        passed = None
        if limit:
            passed = (value <= limit["max"] if "max" in limit else True) and (value >= limit["min"] if "min" in limit else True)
        results.append(EntryResult(structure.name, entry["metric"], round(float(value), 4), unit,
                                   round(weight * float(np.interp(value, xs, ys)), 4), weight * float(ys.max()),
                                   passed, bool(limit.get("hard")), label=metric_label(entry), goal=goal_label(entry)))
    return ScoreReport(template["name"], results)
