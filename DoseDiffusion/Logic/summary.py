"""A plain-data summary of a Case: the stable ``inspect --json`` document.

Layout (all lengths in mm, volumes in cc, doses in Gy, angles in degrees)::

    {
      "case_id": str,
      "grid": {"shape": [nz, ny, nx], "spacing_mm": [sx, sy, sz], "origin_mm": [x, y, z],
               "direction": [9 numbers, row-major]},
      "structures": {NAME: {"role": "ptv"|"oar"|"body"|"other", "volume_cc": float,
                            "canonical": str|null, "prescription_gy": float|null}},
      "beams": [{"name", "gantry_deg", "collimator_deg", "couch_deg", "isocenter_mm": [x, y, z],
                 "arc": null | {"start_deg", "stop_deg", "direction": "CW"|"CC", "control_points"},
                 "meterset_weight": float|null}],
      "prescription": {"levels_gy": [highest first], "fractions": int|null},
      "dose": null | {"max_gy": float},
      "warnings": [str]
    }

``shape`` is in array order (z, y, x); ``spacing_mm`` and ``origin_mm`` in (x, y, z) order.
"""

from __future__ import annotations

import numpy as np

from dosediffusion.case import Case


def _r(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def case_summary(case: Case) -> dict:
    """The JSON-ready summary of ``case`` (see the module docstring for the layout)."""
    grid = case.grid
    return {
        "case_id": case.case_id,
        "grid": {
            "shape": list(grid.shape),
            "spacing_mm": [_r(v, 4) for v in grid.spacing],
            "origin_mm": [_r(v) for v in grid.origin],
            "direction": [_r(v, 6) for v in grid.direction],
        },
        "structures": {
            name: {
                "role": s.role,
                "volume_cc": _r(s.volume_cc(grid)),
                "canonical": s.canonical,
                "prescription_gy": None if s.prescription_gy is None else _r(s.prescription_gy),
            }
            for name, s in case.structures.items()
        },
        "beams": [
            {
                "name": b.name,
                "gantry_deg": _r(b.gantry_deg),
                "collimator_deg": _r(b.collimator_deg),
                "couch_deg": _r(b.couch_deg),
                "isocenter_mm": [_r(v) for v in b.isocenter_mm],
                "arc": None
                if not b.is_arc
                else {
                    "start_deg": _r(b.gantry_deg),
                    "stop_deg": _r(b.arc_stop_deg),
                    "direction": b.arc_direction,
                    "control_points": len(b.control_point_gantry_deg),
                },
                "meterset_weight": None if b.meterset_weight is None else _r(b.meterset_weight, 4),
            }
            for b in case.beams
        ],
        "prescription": {
            "levels_gy": [_r(v) for v in case.prescription.levels_gy],
            "fractions": case.prescription.fractions,
        },
        "dose": None if case.dose is None else {"max_gy": _r(np.max(case.dose))},
        "warnings": list(case.warnings),
    }


def format_summary(summary: dict) -> str:
    """Human-readable text of a :func:`case_summary`."""
    g = summary["grid"]
    lines = [
        f"Case {summary['case_id']}",
        f"  grid   {' x '.join(map(str, g['shape']))} voxels (z, y, x), spacing "
        f"{' x '.join(f'{v:g}' for v in g['spacing_mm'])} mm (x, y, z), origin "
        f"({', '.join(f'{v:g}' for v in g['origin_mm'])}) mm",
        f"  structures ({len(summary['structures'])}):",
    ]
    for name, s in sorted(summary["structures"].items(), key=lambda kv: (kv[1]["role"], kv[0])):
        extra = f"  Rx {s['prescription_gy']:g} Gy" if s["prescription_gy"] is not None else ""
        lines.append(f"    {name:<24} {s['role']:<6} {s['volume_cc']:>10.2f} cc{extra}")
    lines.append(f"  beams ({len(summary['beams'])}):")
    for b in summary["beams"]:
        arc = b["arc"]
        kind = f"arc {arc['start_deg']:g}->{arc['stop_deg']:g} {arc['direction']} ({arc['control_points']} cp)" if arc else "static"
        lines.append(
            f"    {b['name']:<12} gantry {b['gantry_deg']:>6g}  coll {b['collimator_deg']:>5g}  couch {b['couch_deg']:>5g}  "
            f"iso ({', '.join(f'{v:g}' for v in b['isocenter_mm'])}) mm  {kind}"
        )
    rx = summary["prescription"]
    levels = ", ".join(f"{v:g}" for v in rx["levels_gy"])
    fractions = f"in {rx['fractions']} fractions" if rx["fractions"] else "(fractions unknown)"
    lines.append(f"  prescription {levels} Gy {fractions}" if levels else "  prescription none")
    if summary["dose"]:
        lines.append(f"  dose   max {summary['dose']['max_gy']:g} Gy")
    for warning in summary["warnings"]:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
