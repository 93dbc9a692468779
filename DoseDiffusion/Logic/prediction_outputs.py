"""The files of one prediction, written together into one folder.

``RTDOSE.dcm`` (on the CT's study and frame of reference, referencing its plan when it has one),
``dose.nrrd`` (Gy, CT grid), ``dvh.csv`` (cumulative DVHs: structure, source, dose_gy,
volume_percent at 0.1 Gy steps; source ``predicted`` and, when the case has its own dose,
``case``), ``scorecard.json`` (when a scorecard applies), ``summary.json`` (DVH metrics, MAE
against the case's own dose, timing) and ``report.png`` (needs matplotlib). Everything is written
into a staging folder first and moved into place only when complete.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dosediffusion.case import Case
from dosediffusion.io.rtdose_write import write_rtdose
from dosediffusion.io.volume_sidecar import write_volume
from dosediffusion.metrics.dose_metrics import case_dvhs, standard_metrics
from dosediffusion.metrics.dvh import DVH
from dosediffusion.metrics.scorecard import score_case
from dosediffusion.model.pipeline import DosePrediction

DVH_STEP_GY = 0.1


def write_dvh_csv(path: Path, curves: dict[str, dict[str, DVH]]) -> None:
    """Long-format cumulative DVHs: one row per (structure, source, dose step)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["structure", "source", "dose_gy", "volume_percent"])
        for source, dvhs in curves.items():
            for name, dvh in dvhs.items():
                dose, volume = dvh.cumulative(DVH_STEP_GY)
                writer.writerows([name, source, f"{d:.2f}", f"{v:.3f}"] for d, v in zip(dose, volume, strict=True))


def _summary(case: Case, prediction: DosePrediction, dvhs: dict[str, DVH], score) -> dict:
    summary = {"case_id": case.case_id, "steps": prediction.steps, "seed": prediction.seed,
               "candidates": len(prediction.candidates_gy), "selected": prediction.selected,
               "device": prediction.device, "dtype": prediction.dtype,
               "timing_s": {k: round(v, 3) for k, v in prediction.timing_s.items()},
               "peak_memory_mib": round(prediction.peak_memory_mib, 1), "warnings": case.warnings + prediction.warnings,
               "structures": {n: {k: round(v, 3) for k, v in standard_metrics(d).items()} for n, d in dvhs.items()}}
    if case.dose is not None and case.body is not None:
        body = case.body.mask
        summary["mae_body_gy"] = round(float(np.abs(prediction.dose_gy[body] - case.dose[body]).mean()), 4)
    if score is not None:
        summary["scorecard"] = {"template": score.template, "total": round(score.total, 3),
                                "max_total": score.max_total, "not_evaluable": score.not_evaluable}
    return summary


def write_prediction(case: Case, prediction: DosePrediction, out_dir: str | Path, template: dict | None = None,
                     report: bool = True) -> dict:
    """Write the prediction's files into ``out_dir`` (replaced whole); returns the summary."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        dose = prediction.dose_gy
        write_rtdose(dose, case.grid, staging / "RTDOSE.dcm", case.meta)
        write_volume(dose, case.grid, staging / "dose.nrrd")
        dvhs = case_dvhs(case, dose)
        dvhs_ref = case_dvhs(case) if case.dose is not None else None
        write_dvh_csv(staging / "dvh.csv", {"predicted": dvhs, **({"case": dvhs_ref} if dvhs_ref else {})})
        score = score_case(case, template, dose) if template else None
        score_ref = score_case(case, template) if template and case.dose is not None else None
        if score is not None:
            document = {"predicted": score.to_dict(), **({"case": score_ref.to_dict()} if score_ref else {})}
            (staging / "scorecard.json").write_text(json.dumps(document, indent=2))
        summary = _summary(case, prediction, dvhs, score)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
        if report:
            from dosediffusion.report.case_report import plot_case_report

            plot_case_report(staging / "report.png", case, dose, dvhs, dvhs_ref, score, score_ref, template)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
