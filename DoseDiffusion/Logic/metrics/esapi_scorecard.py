"""Scorecards in the ESAPI PlanScoreCard JSON layout (Eclipse users' existing templates).

That layout holds ``ScoreTemplates``, each with ``Structure.StructureId``, ``MetricType``
(DoseAtVolume, VolumeAtDose, MeanDose, MaxDose, MinDose), ``InputValue``/``InputUnit`` (%, cc, Gy,
cGy), ``OutputUnit`` (Gy, cGy, %, cc) and ``ScorePoints`` [{``PointX``, ``Score``}], scored by
clamped piecewise-linear interpolation. :func:`from_esapi` turns it into our template layout
(cGy become Gy), which the same scorer then uses unchanged.
"""

from __future__ import annotations

from dosediffusion.errors import InputError

_METRICS = {"DoseAtVolume", "VolumeAtDose", "MeanDose", "MaxDose", "MinDose"}


def _gy(value: float, unit: str) -> float:
    return value / 100.0 if unit.lower() == "cgy" else value


def from_esapi(document: dict, name: str) -> dict:
    """Our template dict from an ESAPI PlanScoreCard document."""
    entries = []
    for i, item in enumerate(document.get("ScoreTemplates") or []):
        where = f"ScoreTemplates[{i}]"
        try:
            metric = item["MetricType"]
            structure = item["Structure"]["StructureId"]
            points = sorted((float(p["PointX"]), float(p["Score"])) for p in item["ScorePoints"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"invalid ESAPI scorecard at {where}: missing or bad {error}") from None
        if metric not in _METRICS:
            raise InputError(f"invalid ESAPI scorecard at {where}: metric {metric!r} is not supported "
                             f"(supported: {', '.join(sorted(_METRICS))})")
        output = str(item.get("OutputUnit", "Gy"))
        entry = {"structure": {"name": structure}, "metric": metric, "source": f"ESAPI {where}"}
        if metric == "DoseAtVolume":
            entry["volume"] = float(item["InputValue"])
            entry["volume_unit"] = "cc" if str(item.get("InputUnit", "%")).lower() == "cc" else "%"
        if metric == "VolumeAtDose":
            entry["dose"] = _gy(float(item["InputValue"]), str(item.get("InputUnit", "Gy")))
            entry["dose_unit"] = "Gy"
            entry["output_unit"] = "cc" if output.lower() == "cc" else "%"
        else:
            entry["output_unit"] = "Gy"
            points = [(_gy(x, output), s) for x, s in points]
        entry["points"] = [list(p) for p in points]
        entries.append(entry)
    if not entries:
        raise InputError("ESAPI scorecard without ScoreTemplates")
    return {"name": str(document.get("Name") or name), "entries": entries}
