"""RTPLAN → beams, number of fractions and prescription."""

from __future__ import annotations

from pathlib import Path

from dosediffusion.case import Beam, Prescription
from dosediffusion.errors import DicomError
from dosediffusion.io.dicom_scan import read_dataset


def _first(control_points, keyword: str, default=None):
    """The value of ``keyword`` in the first control point that has it (DICOM carries angles
    forward from earlier control points when they do not change)."""
    for cp in control_points:
        if keyword in cp and cp[keyword].value is not None and cp[keyword].value != "":
            return cp[keyword].value
    return default


def read_rtplan(path: Path) -> tuple[list[Beam], Prescription, list[str]]:
    """Treatment beams (setup beams excluded), prescription and warnings of the RTPLAN at ``path``."""
    ds = read_dataset(path)
    warnings: list[str] = []
    beam_items = ds.get("BeamSequence") or ds.get("IonBeamSequence") or []
    if not beam_items:
        raise DicomError("RTPLAN without beams (no BeamSequence): cut short, or not a treatment plan", path)
    fraction_group = (ds.get("FractionGroupSequence") or [None])[0]
    meterset = {}
    fractions = None
    if fraction_group is not None:
        fractions = fraction_group.get("NumberOfFractionsPlanned")
        for ref in fraction_group.get("ReferencedBeamSequence", []):
            if "BeamMeterset" in ref and ref.BeamMeterset is not None:
                meterset[int(ref.ReferencedBeamNumber)] = float(ref.BeamMeterset)
    beams = []
    for item in beam_items:
        if str(item.get("TreatmentDeliveryType", "TREATMENT")).upper() == "SETUP":
            continue
        name = str(item.get("BeamName") or item.get("BeamNumber", len(beams) + 1))
        cps = item.get("ControlPointSequence") or item.get("IonControlPointSequence") or []
        if not cps:
            raise DicomError(f"beam {name!r} has no control points", path)
        iso = _first(cps, "IsocenterPosition")
        gantry = _first(cps, "GantryAngle")
        if iso is None or gantry is None:
            raise DicomError(f"beam {name!r} lacks IsocenterPosition or GantryAngle", path)
        direction = str(_first(cps, "GantryRotationDirection", "NONE")).upper()
        angles, current = [], float(gantry)
        for cp in cps:
            if "GantryAngle" in cp and cp.GantryAngle is not None:
                current = float(cp.GantryAngle)
            angles.append(current)
        arc = direction in ("CW", "CC") and len(set(angles)) > 1
        beams.append(Beam(
            name=name,
            gantry_deg=float(gantry),
            collimator_deg=float(_first(cps, "BeamLimitingDeviceAngle", 0.0)),
            couch_deg=float(_first(cps, "PatientSupportAngle", 0.0)),
            isocenter_mm=tuple(float(v) for v in iso),
            control_point_gantry_deg=tuple(angles) if arc else (float(gantry),),
            arc_direction=direction if arc else None,
            meterset_weight=meterset.get(int(item.get("BeamNumber", -1))),
            sad_mm=float(item.get("SourceAxisDistance", 1000.0) or 1000.0),
            radiation_type=str(item.get("RadiationType", "PHOTON")),
        ))
    isocenters = {b.isocenter_mm for b in beams}
    if len(isocenters) > 1:
        warnings.append(f"{path.name}: beams use {len(isocenters)} isocenters")
    levels = sorted({float(ref.TargetPrescriptionDose) for ref in ds.get("DoseReferenceSequence", [])
                     if "TargetPrescriptionDose" in ref and ref.TargetPrescriptionDose is not None}, reverse=True)
    return beams, Prescription(levels, int(fractions) if fractions else None), warnings
